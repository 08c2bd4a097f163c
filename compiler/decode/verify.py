"""Lossless verification of a batch of drafts (Leviathan et al. 2023, Chen et al. 2023).

Per row b, drafts x~_1..x~_n (n = n_draft[b] <= G) were drawn from q_1..q_n; one target pass gave
p_1..p_{G+1} (p_i conditioned on the prefix and x~_<i). Accept left to right with probability
min(1, p_i(x~_i) / q_i(x~_i)); at the first rejection j emit a token from norm(max(0, p_j - q_j));
if all n are accepted emit the bonus token from p_{n+1}. The emitted tokens follow p exactly.

- Deterministic drafts (argmax drafting, n-grams): pass q = one-hot of the draft ("one-hot rule").
  Acceptance is then p(x~) and the residual is p with x~ zeroed.
- Greedy (`greedy=True`): accept while x~_i == argmax p_i; correction/bonus = argmax p.

Everything is vectorized with fixed shapes: the candidate correction for *every* position is drawn
in parallel (Gumbel-max over the residual, the bonus distribution at position n) and the first
rejection index picks one, as vLLM and tpu-inference do.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from compiler.decode.sampling import sample_probs


class VerifyResult(NamedTuple):
    n_accepted: jax.Array  # [B] int32, accepted drafts (0..n_draft)
    next_token: jax.Array  # [B] int32, correction or bonus token
    accepted: jax.Array  # [B, G] bool, draft i accepted (prefix mask, False past n_draft)


def _accepted_prefix(ok: jax.Array, n_draft: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ok [B, G] per-draft test -> (prefix mask [B, G], count [B]) limited to n_draft [B]."""
    g = ok.shape[-1]
    valid = jnp.arange(g)[None, :] < n_draft[:, None]  # [B, G]
    prefix = jnp.cumprod((ok & valid).astype(jnp.int32), axis=-1).astype(bool)  # [B, G]
    return prefix, prefix.sum(axis=-1).astype(jnp.int32)


def verify_greedy(draft: jax.Array, p: jax.Array, n_draft: jax.Array | None = None) -> VerifyResult:
    """Greedy rule. draft [B, G] int; p [B, G+1, V] target logits or probs (argmax only)."""
    b, g = draft.shape
    n_draft = jnp.full((b,), g, jnp.int32) if n_draft is None else n_draft.astype(jnp.int32)
    target = jnp.argmax(p, axis=-1).astype(jnp.int32)  # [B, G+1]
    prefix, n_acc = _accepted_prefix(draft == target[:, :g], n_draft)
    nxt = jnp.take_along_axis(target, n_acc[:, None], axis=1)[:, 0]  # [B]
    return VerifyResult(n_acc, nxt, prefix)


def verify_sampled(
    key: jax.Array,
    draft: jax.Array,
    q: jax.Array,
    p: jax.Array,
    n_draft: jax.Array | None = None,
) -> VerifyResult:
    """Rejection sampling. draft [B, G]; q [B, G, V] draft probs; p [B, G+1, V] target probs.

    Both distributions must already be processed (temperature, top-k, top-p) identically.
    """
    b, g = draft.shape
    n_draft = jnp.full((b,), g, jnp.int32) if n_draft is None else n_draft.astype(jnp.int32)
    k_u, k_tok = jax.random.split(key)
    p = p.astype(jnp.float32)
    q = q.astype(jnp.float32)
    p_tok = jnp.take_along_axis(p[:, :g], draft[..., None], axis=-1)[..., 0]  # [B, G]
    q_tok = jnp.take_along_axis(q, draft[..., None], axis=-1)[..., 0]  # [B, G]
    u = jax.random.uniform(k_u, (b, g))  # [B, G] in [0, 1)
    # u < p/q, written without the division; P(accept) = min(1, p/q) and p == 0 never accepts.
    prefix, n_acc = _accepted_prefix(u * q_tok < p_tok, n_draft)

    # Candidate emitted token for every position i in 0..G: the residual for i < n_draft (a
    # rejection there), p_i itself for i >= n_draft (the bonus position, or unused).
    resid = jnp.maximum(p[:, :g] - q, 0.0)  # [B, G, V]
    mass = resid.sum(axis=-1, keepdims=True)
    # mass == 0 means p_i == q_i and a rejection cannot happen there; fall back to p to stay finite.
    resid = jnp.where(mass > 0, resid / jnp.where(mass > 0, mass, 1.0), p[:, :g])
    pos = jnp.arange(g + 1)[None, :, None]  # [1, G+1, 1]
    resid = jnp.concatenate([resid, p[:, g:]], axis=1)  # [B, G+1, V]
    dist = jnp.where(pos < n_draft[:, None, None], resid, p)  # [B, G+1, V]
    cand = sample_probs(k_tok, dist)  # [B, G+1]
    nxt = jnp.take_along_axis(cand, n_acc[:, None], axis=1)[:, 0]  # [B]
    return VerifyResult(n_acc, nxt, prefix)


def verify(
    key: jax.Array,
    draft: jax.Array,
    q: jax.Array | None,
    p: jax.Array,
    n_draft: jax.Array | None = None,
    *,
    greedy: bool,
) -> VerifyResult:
    """Verify drafts [B, G] against p [B, G+1, V]; q [B, G, V] is unused when greedy."""
    if greedy:
        return verify_greedy(draft, p, n_draft)
    if q is None:  # deterministic drafts without a distribution: the one-hot rule
        q = jax.nn.one_hot(draft, p.shape[-1], dtype=jnp.float32)
    return verify_sampled(key, draft, q, p, n_draft)
