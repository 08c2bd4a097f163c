"""Prompt-lookup drafting (n-gram drafts copied from earlier context, no model).

At frontier f (the row's last token x_f), find an earlier occurrence of the last m tokens
x_{f-m+1..f}, for m = n, n-1, ..., 1 (the longest suffix that matches anywhere wins; among its
matches the most recent one), and propose the tokens that followed it. A match starting at j
covers x_j..x_{j+m-1} with j + m <= f, so its continuation x_{j+m}.. is already known; when it
runs into the present (period p = f + 1 - j - m < G), the copy continues with the drafts
themselves: d_i = x_{j+m+(i mod p)} (a repeating tail keeps repeating). No match: no drafts,
the round verifies one token (M_L's next token).

Everything is fixed-shape over the context buffer [B, S] (prompt then generated tokens at their
positions, see `LoopState.context`); slots past a row's frontier hold junk and are never read.
The drafts are deterministic, so sampled verification uses the one-hot rule (q = one-hot).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from compiler.decode.drafting import Drafts


def lookup(context: jax.Array, frontier: jax.Array, n: int, gamma: int):
    """context [B, S] int32, frontier [B] -> (drafts [B, G] int32, n_draft [B] in {0, G},
    match length [B] in 0..n)."""
    b, s = context.shape
    j = jnp.arange(s, dtype=jnp.int32)[None, :]  # [1, S] candidate match starts
    f = frontier[:, None]  # [B, 1]
    best_start = jnp.full((b,), -1, jnp.int32)
    best_len = jnp.zeros((b,), jnp.int32)
    for m in range(1, n + 1):  # longer matches override shorter ones
        ok = (j + m <= f) & (f - m + 1 >= 0)  # [B, S] continuation known, suffix exists
        for k in range(m):
            want = jnp.take_along_axis(context, jnp.maximum(f - m + 1 + k, 0), axis=1)  # [B, 1]
            have = jnp.roll(context, -k, axis=1)  # have[:, j] = context[:, j + k]
            ok = ok & (have == want)
        start = jnp.max(jnp.where(ok, j, -1), axis=1)  # most recent match, -1 if none
        found = start >= 0
        best_start = jnp.where(found, start, best_start)
        best_len = jnp.where(found, m, best_len)
    found = best_len > 0
    src = best_start + best_len  # first continuation position
    period = jnp.maximum(frontier + 1 - src, 1)  # [B]
    i = jnp.arange(gamma, dtype=jnp.int32)[None, :]  # [1, G]
    pos = src[:, None] + i % period[:, None]  # [B, G], all <= f
    drafts = jnp.take_along_axis(context, jnp.clip(pos, 0, s - 1), axis=1)
    n_draft = jnp.where(found, gamma, 0).astype(jnp.int32)
    return drafts.astype(jnp.int32), n_draft, best_len


def shortest_match(n: int, lookup_min: int) -> int:
    """The shortest match that drafts a hybrid round by lookup: `lookup_min`, at most n
    (0: all n tokens)."""
    return min(lookup_min, n) or n


def ngram_draft(context: jax.Array, frontier: jax.Array, n: int, gamma: int) -> Drafts:
    toks, n_draft, _ = lookup(context, frontier, n, gamma)
    zero = jnp.zeros_like(n_draft)
    return Drafts(tokens=toks, q=None, logits=None, n_draft=n_draft, calls=zero, cache=None)
