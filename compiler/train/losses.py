"""Token-level losses and metrics. logits [B, T, V] (float32), targets [B, T] int (clean ids).

A teacher's (reference) logits are either full [B, T, V] or a `TopK` of them, as a teacher
cache stores them.

`weights` [B, T] (1.0: the loss counts the position, 0.0: it does not; `compiler.loss_mask`
says which) makes every loss and metric a mean over the counted positions only (none counted:
0). Without weights (None, a stage whose data carries no flags) each is the plain mean, the
same computation as before masks existed, so plain-text training is unchanged bit for bit."""

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


def masked_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """The mean of `values` over the positions whose weight is 1 (`weights`: the shape of
    `values` or of its leading axes), 0 when none is; None: `jnp.mean(values)`, the very
    computation the losses made before masks existed."""
    if weights is None:
        return jnp.mean(values)
    weights = weights.astype(jnp.float32)
    weights = weights.reshape(weights.shape + (1,) * (values.ndim - weights.ndim))
    total = jnp.sum(values.astype(jnp.float32) * weights)
    count = jnp.sum(jnp.broadcast_to(weights, values.shape))
    return total / jnp.maximum(count, 1.0)


def cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean next-token CE to the ground truth (over the counted positions)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -masked_mean(jnp.take_along_axis(logp, targets[..., None], axis=-1), weights)


def soft_cross_entropy(
    logits: jax.Array,
    teacher_logits: jax.Array | TopK,
    temperature: float = 1.0,
    weights: jax.Array | None = None,
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
    return -masked_mean(jnp.sum(target * logp, axis=-1), weights)


def distil_loss(
    logits: jax.Array,
    targets: jax.Array,
    teacher_logits: jax.Array | TopK,
    weight: float,
    temperature: float,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """(1 - w) * CE(targets) + w * CE(softmax(z_teacher / τ), p_student) (Tandem-Distil)."""
    ce = cross_entropy(logits, targets, weights)
    soft = soft_cross_entropy(logits, teacher_logits, temperature, weights)
    return (1.0 - weight) * ce + weight * soft, {"ce": ce, "distil": soft}


def within_vocab(
    n: int, targets: jax.Array, weights: jax.Array | None, reference: jax.Array | TopK | None
) -> tuple[jax.Array, jax.Array, jax.Array | TopK | None]:
    """The loss's view of a student whose output layer covers ids < n only: (targets, weights,
    reference). Targets >= n are not counted (and clipped into range); the reference is
    renormalized over ids < n (a TopK keeps its entries below n, and a position with none of
    them is not counted)."""
    counted = targets < n
    if isinstance(reference, TopK):
        inside = reference.indices < n
        counted &= jnp.any(inside, axis=-1)
        values = jnp.where(inside, reference.values, -1e9)  # softmax weight exactly 0
        reference = TopK(values, jnp.minimum(reference.indices, n - 1))
    elif reference is not None:
        reference = reference[..., :n]
    counted = counted.astype(jnp.float32)
    weights = counted if weights is None else weights * counted
    return jnp.minimum(targets, n - 1), weights, reference


def accuracy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    return masked_mean(jnp.argmax(logits, axis=-1) == targets, weights)


def agreement(
    logits: jax.Array, reference_logits: jax.Array | TopK, weights: jax.Array | None = None
) -> jax.Array:
    """How often the argmax equals the reference (teacher / large model) argmax."""
    if isinstance(reference_logits, TopK):
        reference = reference_logits.indices[..., 0]
    else:
        reference = jnp.argmax(reference_logits, axis=-1)
    return masked_mean(jnp.argmax(logits, axis=-1) == reference, weights)
