"""M_S drafting one round: up to G tokens from frontier f, one token per step, in one
`lax.while_loop` that stops when no row wants another token (or at G).

Which positions M_S itself must process (its own K/V) depends on the wiring:
- Tandem, every layer wired: inputs x_f, d_1..d_{G-1} at f..f+G-1. Positions M_S skips (the
  last draft when all are accepted; the free token) get projected M_L K/V from `write_memory`.
- Independent drafter: it never gets memory, so the first step re-reads the previous token:
  a 2-token block [x_{f-1}, x_f] at f-1 (idempotent when x_{f-1} was already processed).
- Tandem with unwired layers: those layers need M_S's own K/V everywhere, and rewriting slot
  f-1 would clobber wired memory, so a trailing step processes the round's last draft
  d_{n_draft} at f + n_draft instead (`tail`).

Hybrid drafting (`LoopConfig.lookup`) skips M_S in the rounds a prompt-lookup match drafts. A
Tandem M_S with every layer wired loses nothing (the verify pass writes memory for every
position either way); the other two keep their own K/V at every position, so before M_S drafts
again `catch_up` processes the tokens it skipped (`own_kv_from`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from compiler.decode.rules import DraftSignal
from compiler.decode.sampling import probs, sample_probs
from compiler.decode.state import LoopConfig, gather_rows
from compiler.nn import cut_head, small_block


class Drafts(NamedTuple):
    tokens: jax.Array  # [B, G] int32 (entries >= n_draft are junk)
    q: jax.Array | None  # [B, G, V] processed draft probs (None when greedy)
    logits: jax.Array | None  # [B, G, V] raw draft logits (return_logits only)
    n_draft: jax.Array  # [B] int32, 1..G
    calls: jax.Array  # [B] int32 M_S passes per row
    cache: list


def _draw(cfg: LoopConfig, key, logits: jax.Array):
    """logits [B, V] -> (token [B], q [B, V] processed or None, confidence probs [B, V])."""
    if cfg.sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), None, jax.nn.softmax(logits)
    q = probs(logits, cfg.sampling)
    return sample_probs(key, q), q, q


def draft_head(cfg: LoopConfig, params: dict) -> dict:
    """params with M_S's output layer cut to its first `draft_vocab` rows (`cut_head`). Cutting
    a cut head is a no-op, so `generate` cuts once, outside its loops, and every M_S step
    inside reads the small head instead of slicing per step."""
    n = cfg.draft_vocab
    if not n:
        return params
    return {**params, cfg.draft.name: cut_head(params[cfg.draft.name], n)}


def small_step(cfg: LoopConfig, params: dict, cache, tokens, start):
    """M_S over tokens [B, K] at positions start[b] + i -> (logits [B, K, V], cache); with
    draft_vocab N the logits cover ids < N only ([B, K, N])."""
    model = cfg.draft
    if cfg.draft_vocab:
        params = draft_head(cfg, params)
        model = dataclasses.replace(model, vocab=cfg.draft_vocab, tie_embeddings=False)
    proj = params.get(cfg.projection) if cfg.projection else None
    return small_block(params[model.name], model, cfg.wiring, cache, tokens, start, proj)


def draft(
    cfg: LoopConfig,
    params: dict,
    cache,
    last: jax.Array,
    prev: jax.Array,
    frontier: jax.Array,
    active: jax.Array,
    key,
    rule,
    tail: bool,
    limit: jax.Array | None = None,
) -> Drafts:
    """Draft from x_f = last [B] at position frontier [B]; active [B] rows count calls.

    rule: a `rules.Rule` (its `init` carry, its `step` decision after each draft). limit [B]:
    per-row most drafts.
    With tail, process the last draft at f + n_draft.
    """
    g = cfg.gamma
    b = last.shape[0]
    keys = jax.random.split(key, g)
    act = active.astype(jnp.int32)

    v = cfg.draft.vocab
    toks = jnp.zeros((b, g), jnp.int32)
    qbuf = None if cfg.sampling.greedy else jnp.zeros((b, g, v), jnp.float32)
    lbuf = jnp.zeros((b, g, v), jnp.float32) if cfg.return_logits else None

    def record(i, logits, toks, qbuf, lbuf):
        """Draw draft i+1 from M_S's logits [B, V] (or [B, draft_vocab]) at position f + i and
        store it; ids past draft_vocab get q = 0 (the residual covers them: still lossless)."""
        tok, q, conf = _draw(cfg, keys[i], logits)
        toks = toks.at[:, i].set(tok)
        n = logits.shape[-1]
        if qbuf is not None:
            qbuf = qbuf.at[:, i, :n].set(q)
        if lbuf is not None:
            lbuf = lbuf.at[:, i].set(
                jnp.pad(logits, ((0, 0), (0, v - n)), constant_values=-jnp.inf)
            )
        return toks, qbuf, lbuf, DraftSignal(logits, conf, tok, i + 1)

    def decide(signal, rc):
        cont, rc = rule.step(signal, params, rc)
        if limit is not None:
            cont = cont & (signal.step < limit)
        return cont, rc

    def body(c):
        i, cache, toks, qbuf, lbuf, n_draft, calls, cont, rc = c
        # input x_f (i = 0) or d_i = toks[:, i - 1], at position f + i
        inp = jnp.where(i == 0, last, toks[:, jnp.maximum(i - 1, 0)])
        logits, cache = small_step(cfg, params, cache, inp[:, None], frontier + i)
        toks, qbuf, lbuf, signal = record(i, logits[:, 0], toks, qbuf, lbuf)
        n_draft = n_draft + cont.astype(jnp.int32)
        calls = calls + (cont & active).astype(jnp.int32)
        more, rc = decide(signal, rc)
        cont = cont & more
        return i + 1, cache, toks, qbuf, lbuf, n_draft, calls, cont, rc

    def cond(c):
        i, cont = c[0], c[-2]
        return (i < g) & jnp.any(cont & active)

    zero = jnp.zeros((b,), jnp.int32)
    rc = rule.init(b)
    carry = (jnp.int32(0), cache, toks, qbuf, lbuf, zero, zero, jnp.ones((b,), bool), rc)
    if cfg.independent:  # peeled first step: [x_{f-1}, x_f] at f - 1 (see the module doc)
        start0 = jnp.maximum(frontier - 1, 0)  # [B]
        logits2, cache = small_step(cfg, params, cache, jnp.stack([prev, last], 1), start0)
        logits0 = gather_rows(logits2, frontier - start0)  # [B, V] at position f
        toks, qbuf, lbuf, signal = record(0, logits0, toks, qbuf, lbuf)
        one = jnp.ones((b,), jnp.int32)
        cont, rc = decide(signal, rc)
        carry = (jnp.int32(1), cache, toks, qbuf, lbuf, one, act, cont, rc)
    _, cache, toks, qbuf, lbuf, n_draft, calls, _, _ = jax.lax.while_loop(cond, body, carry)
    if tail:  # own K/V for the last draft, needed if every draft is accepted
        last_draft = gather_rows(toks, n_draft - 1)  # [B]
        _, cache = small_step(cfg, params, cache, last_draft[:, None], frontier + n_draft)
        calls = calls + act
    return Drafts(toks, qbuf, lbuf, n_draft, calls, cache)


def own_kv_from(cfg: LoopConfig, frontier: jax.Array) -> jax.Array:
    """[B]: positions below this need M_S's own K/V in its cache before it drafts at frontier
    (an independent drafter re-reads x_{f-1} in its first step, see the module doc)."""
    return jnp.maximum(frontier - 1, 0) if cfg.independent else frontier


def catch_up(cfg: LoopConfig, params: dict, cache, context, synced, frontier, need, active):
    """Fill the holes that rounds drafted by prompt lookup left in M_S's own K/V (an
    independent drafter, or the unwired layers of a partially wired Tandem M_S).

    synced [B]: the cache holds M_S's own K/V below this position. Blocks of G + 1 tokens read
    from the context [B, S] at synced[b] run until every `need` row reaches
    own_kv_from(frontier); the other active rows catch up as far as they get meanwhile (the
    pass runs on every row). A row that is already there rewrites slots from synced on with
    the same tokens or with junk past its frontier, which the draft overwrites before it reads
    them. A partially wired M_S keeps its wired layers' cache as it was (M_L's memory below the
    frontier): those layers attend to the memory below synced and to the block's own K/V, as
    in a round that started at synced. -> (cache, synced, calls [B]: blocks per active row
    that had a hole)."""
    w = cfg.gamma + 1
    goal = own_kv_from(cfg, frontier)
    s = context.shape[1]
    keep = set(cfg.wiring.wired_layers) if cfg.partial else set()
    step = jnp.arange(w, dtype=jnp.int32)[None, :]

    def cond(c):
        return jnp.any(need & (c[1] < goal))

    def body(c):
        cache, synced, calls = c
        lag = active & (synced < goal)
        toks = jnp.take_along_axis(context, jnp.minimum(synced[:, None] + step, s - 1), axis=1)
        _, new = small_step(cfg, params, cache, toks, synced)
        new = [cache[i] if i in keep else layer for i, layer in enumerate(new)]
        synced = jnp.where(lag, jnp.minimum(synced + w, goal), synced)
        return new, synced, calls + lag.astype(jnp.int32)

    zero = jnp.zeros_like(synced)
    return jax.lax.while_loop(cond, body, (cache, synced, zero))
