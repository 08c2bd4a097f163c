"""Token-level losses and metrics. logits [B, T, V] (float32), targets [B, T] int.

A teacher's (reference) logits are either full [B, T, V] or a `TopK` of them, as a teacher
cache stores them."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TopK(NamedTuple):
    """A teacher's k largest logits per token, in descending order: values [B, T, k] float32,
    indices [B, T, k] int32."""

    values: jax.Array
    indices: jax.Array


def top_k(logits: jax.Array, k: int) -> TopK:
    values, indices = jax.lax.top_k(logits.astype(jnp.float32), k)
    return TopK(values, indices.astype(jnp.int32))


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token CE to the ground truth."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def soft_cross_entropy(
    logits: jax.Array, teacher_logits: jax.Array | TopK, temperature: float = 1.0
) -> jax.Array:
    """Mean CE(softmax(z_teacher / τ), p_student); the student's own logits are not
    tempered. The teacher side is a target: no gradient flows into it. A `TopK` teacher's
    softmax is taken over its k logits (the rest of its mass is dropped)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if isinstance(teacher_logits, TopK):
        values, indices = jax.lax.stop_gradient(teacher_logits)
        target = jax.nn.softmax(values / temperature, axis=-1)
        logp = jnp.take_along_axis(logp, indices, axis=-1)
    else:
        target = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
    return -jnp.mean(jnp.sum(target * logp, axis=-1))


def distil_loss(
    logits: jax.Array,
    targets: jax.Array,
    teacher_logits: jax.Array | TopK,
    weight: float,
    temperature: float,
) -> tuple[jax.Array, dict]:
    """(1 - w) * CE(targets) + w * CE(softmax(z_teacher / τ), p_student) (Tandem-Distil)."""
    ce = cross_entropy(logits, targets)
    soft = soft_cross_entropy(logits, teacher_logits, temperature)
    return (1.0 - weight) * ce + weight * soft, {"ce": ce, "distil": soft}


def accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == targets)


def agreement(logits: jax.Array, reference_logits: jax.Array | TopK) -> jax.Array:
    """How often the argmax equals the reference (teacher / large model) argmax."""
    if isinstance(reference_logits, TopK):
        reference = reference_logits.indices[..., 0]
    else:
        reference = jnp.argmax(reference_logits, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == reference)
