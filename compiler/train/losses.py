"""Token-level losses and metrics. logits [B, T, V] (float32), targets [B, T] int."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token CE to the ground truth."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def soft_cross_entropy(
    logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """Mean CE(softmax(z_teacher / τ), p_student); the student's own logits are not
    tempered. The teacher side is a target: no gradient flows into it."""
    target = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(target * logp, axis=-1))


def distil_loss(
    logits: jax.Array,
    targets: jax.Array,
    teacher_logits: jax.Array,
    weight: float,
    temperature: float,
) -> tuple[jax.Array, dict]:
    """(1 - w) * CE(targets) + w * CE(softmax(z_teacher / τ), p_student) (Tandem-Distil)."""
    ce = cross_entropy(logits, targets)
    soft = soft_cross_entropy(logits, teacher_logits, temperature)
    return (1.0 - weight) * ce + weight * soft, {"ce": ce, "distil": soft}


def accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == targets)


def agreement(logits: jax.Array, reference_logits: jax.Array) -> jax.Array:
    """How often the argmax equals the reference (teacher / large model) argmax."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == jnp.argmax(reference_logits, axis=-1))
