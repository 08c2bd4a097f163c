"""Logit processing and seeded sampling, shared by targets and drafters.

One `SamplingIR` (frozen, hashable: a static argument under jit) describes the processing, and the
same processing is applied to the target (M_L) and the draft (M_S) distributions, as lossless
verification requires (compare *processed* distributions, never raw ones).

Order: temperature -> top-k -> top-p (nucleus), the order of HF transformers and vLLM.
Greedy is temperature 0: the processed distribution is the one-hot of the argmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from compiler.ir import SamplingIR

NEG_INF = -jnp.inf


def _top_k_mask(logits: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits (ties with the k-th are kept too). logits: [..., V]."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]  # [..., 1]
    return jnp.where(logits >= kth, logits, NEG_INF)


def _top_p_mask(logits: jax.Array, top_p: float) -> jax.Array:
    """Keep the smallest set of most likely tokens whose mass reaches top_p. logits: [..., V]."""
    if top_p >= 1.0:
        return logits
    probs = jax.nn.softmax(logits, axis=-1)
    sorted_p = -jnp.sort(-probs, axis=-1)  # [..., V] descending
    mass_before = jnp.cumsum(sorted_p, axis=-1) - sorted_p  # mass of strictly more likely tokens
    keep_sorted = mass_before < top_p  # the first token is always kept
    # The smallest kept probability is the threshold; ties with it are kept too.
    threshold = jnp.min(jnp.where(keep_sorted, sorted_p, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs >= threshold, logits, NEG_INF)


def process_logits(logits: jax.Array, s: SamplingIR) -> jax.Array:
    """Temperature, top-k and top-p applied to logits [..., V] (float32; masked entries -inf).

    For greedy sampling (temperature 0) the logits are returned unscaled: only their argmax matters.
    """
    x = logits.astype(jnp.float32)
    if s.greedy:
        return x
    # Shifted so the largest logit is 0 first: a tiny temperature (even one that is 0 in
    # float32) then sends the others to -inf, never to NaN (softmax, top-k and top-p do not
    # change under a shift).
    x = x - jnp.max(x, axis=-1, keepdims=True)
    x = jnp.where(x == 0, 0.0, x / jnp.float32(s.temperature))
    x = _top_k_mask(x, s.top_k)
    return _top_p_mask(x, s.top_p)


def probs(logits: jax.Array, s: SamplingIR) -> jax.Array:
    """The processed distribution [..., V]; the one-hot of the argmax for greedy."""
    if s.greedy:
        v = logits.shape[-1]
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), v, dtype=jnp.float32)
    return jax.nn.softmax(process_logits(logits, s), axis=-1)


def sample(key: jax.Array, logits: jax.Array, s: SamplingIR) -> jax.Array:
    """Draw tokens [...] from the processed distribution of logits [..., V] (argmax if greedy)."""
    if s.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, process_logits(logits, s), axis=-1).astype(jnp.int32)


def sample_probs(key: jax.Array, p: jax.Array) -> jax.Array:
    """Draw tokens [...] from (possibly unnormalized) probabilities p [..., V] by Gumbel-max."""
    logp = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), NEG_INF)
    return jax.random.categorical(key, logp, axis=-1).astype(jnp.int32)
