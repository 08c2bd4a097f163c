"""Prefill and the whole-generation loops: one `lax.while_loop` per generation, fixed shapes,
per-row ragged progress (every row advances by its own count; done rows are frozen).

A round of each policy, for a row at frontier f (position of its last token x_f = `last`):
- autoregressive: the target reads x_f and samples x_{f+1}.
- standalone (Tandem): M_S generates x_{f+1}..x_{f+G} from x_f; M_L processes the tokens M_S
  consumed, x_f..x_{f+G-1}, in one block (with the free token: x_f..x_{f+G} and M_L samples
  x_{f+G+1}); `write_memory` puts projected M_L K/V at those positions.
- speed / adaptive: M_S drafts d_1..d_n (n = G, or chosen per row by the stop rule); M_L
  verifies x_f, d_1..d_G in one block pass, which doubles as the memory pass for the accepted
  positions; the new frontier is the position of the correction/bonus token. M_L's cache is
  rolled back by position alone (slots past a query's position are never read).
- hybrid (speed / adaptive with `lookup`): a row whose context matches its last tokens takes
  the prompt-lookup drafts, the others M_S's (`hybrid_drafts`); M_S does not run in a round
  where every active row matched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from compiler.decode.drafting import Drafts, catch_up, draft, draft_head, own_kv_from, small_step
from compiler.decode.lookup import lookup, ngram_draft, shortest_match
from compiler.decode.rules import FixedRule
from compiler.decode.sampling import probs, sample
from compiler.decode.state import (
    DecodeStats,
    GenerateResult,
    LoopConfig,
    LoopState,
    emit,
    finalize,
    gather_rows,
)
from compiler.decode.verify import verify
from compiler.nn import decoder_block, init_cache, init_small_cache, write_memory
from compiler.nn.decoder import logits_of


def _memory(cfg: LoopConfig, params: dict, small_cache, hiddens, start, count):
    return write_memory(
        params[cfg.draft.name],
        params.get(cfg.projection) if cfg.projection else None,
        cfg.draft,
        cfg.wiring,
        small_cache,
        hiddens,
        start,
        count,
    )


def large_block(
    cfg: LoopConfig, params: dict, large_cache, small_cache, tokens, start, count, logits_at=None
):
    """M_L over tokens [B, K] at start [B] -> (logits [B, K, V], large_cache, small_cache).

    With a Tandem M_S the pass also refreshes M_S's memory for the first count[b] positions.
    logits_at [B]: the logits of token logits_at[b] only, [B, 1, V] (the prefill needs one
    prediction per row; the output layer over a whole prompt cost ~0.1 s a 256-token prompt).
    """
    target = params[cfg.target.name]
    logits, hiddens, large_cache = decoder_block(target, cfg.target, large_cache, tokens, start)
    if logits_at is not None:  # the full logits above are then dead code, left out by XLA
        logits = logits_of(target, cfg.target, gather_rows(hiddens[-1], logits_at)[:, None])
    if small_cache is not None:
        small_cache = _memory(cfg, params, small_cache, hiddens, start, count)
    return logits, large_cache, small_cache


def _emits_first(cfg: LoopConfig) -> bool:
    """Does the prefill pass emit the first token (the target's own prediction)?"""
    return cfg.policy == "autoregressive" or (cfg.policy == "standalone" and cfg.free_token)


def prefill(cfg: LoopConfig, params: dict, prompt, prompt_lens, key) -> LoopState:
    """prompt [B, P] left-aligned, prompt_lens [B] in 1..P -> the initial loop state.

    M_L reads every row's prompt in one block from position 0 (slots past a row's own prompt
    get junk that is overwritten before it is read). M_S's memory gets the positions M_L
    has processed: all but the last prompt token (which is x_f), or all of them when the
    prefill emits the first token (autoregressive, standalone with the free token).
    """
    b, p = prompt.shape
    s = cfg.cache_len(p)
    for m in (cfg.target, cfg.draft):
        if m is not None and m.pos == "learned" and s > m.max_len:
            raise ValueError(
                f"prompt length {p} + max_new_tokens {cfg.max_new} + block {cfg.gamma} + 1 = {s} "
                f"exceeds max_len {m.max_len} of model {m.name!r} (learned positions)"
            )
    prompt = prompt.astype(jnp.int32)
    lens = jnp.clip(prompt_lens.astype(jnp.int32), 1, p)
    zero = jnp.zeros((b,), jnp.int32)
    large_cache = init_cache(cfg.target, b, s)
    small_cache = None
    stats = DecodeStats.zeros(b, cfg.gamma).replace(large_calls=jnp.ones((b,), jnp.int32))
    first = _emits_first(cfg)
    if cfg.draft is not None:
        small_cache = init_small_cache(cfg.draft, cfg.wiring, b, s)
        if cfg.prompt_pass:  # M_S's own K/V for the prompt (before the memory overwrites it)
            _, small_cache = small_step(cfg, params, small_cache, prompt, zero)
            stats = stats.replace(small_calls=jnp.ones((b,), jnp.int32))
    count = lens if first else lens - 1
    logits, large_cache, small_cache = large_block(
        cfg, params, large_cache, small_cache, prompt, zero, count, lens - 1 if first else None
    )
    v = cfg.target.vocab
    state = LoopState(
        out=jnp.full((b, cfg.buf_len), cfg.pad_id, jnp.int32),
        n=zero,
        last=gather_rows(prompt, lens - 1),
        prev=gather_rows(prompt, jnp.maximum(lens - 2, 0)),
        done=jnp.full((b,), cfg.max_new <= 0),
        prompt_lens=lens,
        large_cache=large_cache,
        small_cache=small_cache,
        key=key,
        stats=stats,
        logits=jnp.zeros((b, cfg.buf_len, v), jnp.float32) if cfg.return_logits else None,
        context=(
            jnp.zeros((b, s), jnp.int32).at[:, :p].set(prompt) if cfg.ngram or cfg.lookup else None
        ),
        synced=own_kv_from(cfg, lens - 1) if cfg.catch_up else None,  # after the prompt pass
        budget=cfg.stop_rule.budget(b) if cfg.stop_rule is not None else None,
    )
    if not first:
        return state
    key, k = jax.random.split(key)
    lg = logits[:, 0]  # [B, V] prediction after the last prompt token
    tok = sample(k, lg, cfg.sampling)
    state = emit(cfg, state.replace(key=key), tok[:, None], jnp.ones((b,), jnp.int32), lg[:, None])
    return state.replace(prev=state.last, last=tok)


def _advance(state: LoopState, seq, count, **kw) -> LoopState:
    """After emitting count tokens of the round's sequence seq = [x_f, t_1, ...] [B, W+1]."""
    active = ~state.done
    last = jnp.where(active, gather_rows(seq, count), state.last)
    prev = jnp.where(active, gather_rows(seq, count - 1), state.prev)
    return state.replace(last=last, prev=prev, **kw)


def autoregressive_round(cfg: LoopConfig, params: dict, state: LoopState) -> LoopState:
    b = state.n.shape[0]
    key, k = jax.random.split(state.key)
    logits, large_cache, _ = large_block(
        cfg, params, state.large_cache, None, state.last[:, None], state.frontier, None
    )
    lg = logits[:, 0]  # [B, V]
    tok = sample(k, lg, cfg.sampling)
    active = (~state.done).astype(jnp.int32)
    stats = state.stats.replace(large_calls=state.stats.large_calls + active)
    one = jnp.ones((b,), jnp.int32)
    seq = jnp.stack([state.last, tok], axis=1)
    new = _advance(state, seq, one, key=key, large_cache=large_cache, stats=stats)
    return emit(cfg, new, tok[:, None], one, lg[:, None])


def standalone_round(cfg: LoopConfig, params: dict, state: LoopState) -> LoopState:
    g, b = cfg.gamma, state.n.shape[0]
    f, active = state.frontier, ~state.done
    key, k_draft, k_free = jax.random.split(state.key, 3)
    tail = cfg.partial and cfg.free_token  # the free token's predecessor is M_L-only
    d = draft(cfg, params, state.small_cache, state.last, state.prev, f, active, k_draft,
              FixedRule(g), tail)  # fmt: skip
    seq = jnp.concatenate([state.last[:, None], d.tokens], axis=1)  # [B, G+1] x_f, x_f+1..
    block = seq if cfg.free_token else seq[:, :g]  # the tokens M_L processes
    logits, large_cache, small_cache = large_block(
        cfg, params, state.large_cache, d.cache, block, f, None
    )
    toks, rec = d.tokens, d.logits  # [B, G], [B, G, V]
    if cfg.free_token:
        lg = logits[:, -1]  # M_L's prediction after x_f+G
        free = sample(k_free, lg, cfg.sampling)
        toks = jnp.concatenate([toks, free[:, None]], axis=1)
        seq = jnp.concatenate([seq, free[:, None]], axis=1)
        rec = None if rec is None else jnp.concatenate([rec, lg[:, None]], axis=1)
    count = jnp.full((b,), toks.shape[1], jnp.int32)
    a = active.astype(jnp.int32)
    st = state.stats
    stats = st.replace(
        large_calls=st.large_calls + a,
        small_calls=st.small_calls + d.calls,
        rounds=st.rounds + a,
        round_tokens=st.round_tokens + a * count,
    )
    new = _advance(state, seq, count, key=key, large_cache=large_cache,
                   small_cache=small_cache, stats=stats)  # fmt: skip
    return emit(cfg, new, toks, count, rec)


def verify_block(cfg: LoopConfig, params: dict, large_cache, block, start, n_need):
    """M_L over block [B, G+1] at start [B] -> (logits [B, G+1, V], hiddens, large_cache).

    With buckets, the pass runs on the smallest bucket of b + 1 tokens with b >= n_need (the
    most drafts any active row holds): `lax.switch` inside the loop, one compiled branch per
    bucket; outputs past the bucket are zero padding that verification never reads (it looks
    at positions <= n_draft only)."""
    tp = params[cfg.target.name]
    if not cfg.buckets:
        return decoder_block(tp, cfg.target, large_cache, block, start)
    g = block.shape[1] - 1

    def branch(nb):
        def run(cache, block):
            logits, hiddens, cache = decoder_block(tp, cfg.target, cache, block[:, : nb + 1], start)
            pad = [(0, 0), (0, g - nb), (0, 0)]
            return jnp.pad(logits, pad), [jnp.pad(h, pad) for h in hiddens], cache

        return run

    sizes = jnp.asarray(cfg.buckets, jnp.int32)
    idx = jnp.minimum(jnp.sum(sizes < n_need), len(cfg.buckets) - 1)
    return jax.lax.switch(idx, [branch(nb) for nb in cfg.buckets], large_cache, block)


def hybrid_drafts(cfg: LoopConfig, params: dict, state: LoopState, key, rule):
    """Hybrid drafting -> (Drafts, lookup hit [B] bool, synced [B] or None).

    Each row looks up its last n = cfg.lookup tokens in its context first; a row whose longest
    match covers at least cfg.lookup_min of them (all n when 0) drafts the lookup_gamma (else G)
    tokens that followed it (q = one-hot: the drafts are deterministic), the other active rows
    draft with M_S (its q and stop rule). M_S runs only when some active row has no match
    (`lax.cond`): on repetitive text the round costs what prompt lookup costs. Its calls
    count for the rows it drafted (and, with `catch_up`, for the rows whose holes it
    filled)."""
    g, b = cfg.gamma, state.n.shape[0]
    f, active = state.frontier, ~state.done
    look, n_look, length = lookup(state.context, f, cfg.lookup, g)
    if cfg.lookup_gamma:
        n_look = jnp.minimum(n_look, cfg.lookup_gamma)
    hit = length >= shortest_match(cfg.lookup, cfg.lookup_min)
    need = active & ~hit  # the rows M_S drafts for

    def model(cache, synced):
        calls = jnp.zeros((b,), jnp.int32)
        if synced is not None:
            cache, synced, calls = catch_up(cfg, params, cache, state.context, synced, f,
                                            need, active)  # fmt: skip
        d = draft(cfg, params, cache, state.last, state.prev, f, need, key, rule, cfg.partial,
                  limit=state.budget)  # fmt: skip
        return d._replace(calls=d.calls + calls), synced

    def skip(cache, synced):
        v, zero = cfg.draft.vocab, jnp.zeros((b,), jnp.int32)
        q = None if cfg.sampling.greedy else jnp.zeros((b, g, v), jnp.float32)
        lg = jnp.zeros((b, g, v), jnp.float32) if cfg.return_logits else None
        return Drafts(jnp.zeros((b, g), jnp.int32), q, lg, zero, zero, cache), synced

    d, synced = jax.lax.cond(jnp.any(need), model, skip, state.small_cache, state.synced)
    q = d.q
    if q is not None:  # per row: one-hot for lookup drafts, M_S's distribution otherwise
        q = jnp.where(hit[:, None, None], jax.nn.one_hot(look, q.shape[-1], dtype=q.dtype), q)
    d = d._replace(
        tokens=jnp.where(hit[:, None], look, d.tokens),
        q=q,
        n_draft=jnp.where(hit, n_look, d.n_draft),
    )
    return d, hit, synced


def speculative_step(cfg: LoopConfig, params: dict, state: LoopState):
    """One draft + verify round -> (new state, drafts, target logits [B, G+1, V])."""
    g, b = cfg.gamma, state.n.shape[0]
    f, active = state.frontier, ~state.done
    key, k_draft, k_verify = jax.random.split(state.key, 3)
    rule = cfg.stop_rule if cfg.stop_rule is not None else FixedRule(g)
    hit, synced = None, state.synced
    if cfg.ngram:
        d = ngram_draft(state.context, f, cfg.ngram, g)
    elif cfg.lookup:
        d, hit, synced = hybrid_drafts(cfg, params, state, k_draft, rule)
    else:
        d = draft(cfg, params, state.small_cache, state.last, state.prev, f, active, k_draft,
                  rule, cfg.partial, limit=state.budget)  # fmt: skip
    block = jnp.concatenate([state.last[:, None], d.tokens], axis=1)  # [B, G+1] x_f, d_1..d_G
    n_need = jnp.max(jnp.where(active, d.n_draft, 0))
    logits, hiddens, large_cache = verify_block(cfg, params, state.large_cache, block, f, n_need)
    # logits[:, i] is p_{f+i+1}
    greedy = cfg.sampling.greedy
    p = logits if greedy else probs(logits, cfg.sampling)
    res = verify(k_verify, d.tokens, d.q, p, d.n_draft, greedy=greedy)
    k = res.n_accepted  # [B]
    small_cache = None
    if d.cache is not None:  # x_f and accepted drafts
        small_cache = _memory(cfg, params, d.cache, hiddens, f, k + 1)
    i = jnp.arange(g + 1)[None, :]
    seq = jnp.concatenate([block, jnp.zeros((b, 1), jnp.int32)], axis=1)  # [B, G+2]
    seq = jnp.where(jnp.arange(g + 2)[None, :] == k[:, None] + 1, res.next_token[:, None], seq)
    toks = seq[:, 1:]  # [B, G+1]: accepted drafts, then the correction/bonus at index k
    a = active.astype(jnp.int32)
    drafted = active if hit is None else active & ~hit  # the rows M_S drafted
    st = state.stats
    stats = st.replace(
        large_calls=st.large_calls + a,
        small_calls=st.small_calls + d.calls,
        rounds=st.rounds + a,
        round_tokens=st.round_tokens + a * (k + 1),
        accepted_by_pos=st.accepted_by_pos + a[:, None] * res.accepted,
        drafted_by_pos=st.drafted_by_pos + a[:, None] * (i[:, :g] < d.n_draft[:, None]),
        lookup_rounds=st.lookup_rounds if hit is None else st.lookup_rounds + a * hit,
    )
    budget = state.budget
    if budget is not None:  # M_S's budget follows M_S's rounds only
        budget = jnp.where(drafted, rule.update(budget, k, d.n_draft), budget)
    if synced is not None:  # M_S's own K/V after its round (the draft's invariant)
        synced = jnp.where(drafted, own_kv_from(cfg, f + k + 1), synced)
    new = _advance(state, seq, k + 1, key=key, large_cache=large_cache,
                   small_cache=small_cache, stats=stats, budget=budget,
                   synced=synced)  # fmt: skip
    return emit(cfg, new, toks, k + 1, logits), d, logits


def speculative_round(cfg: LoopConfig, params: dict, state: LoopState) -> LoopState:
    return speculative_step(cfg, params, state)[0]


ROUNDS = {
    "autoregressive": autoregressive_round,
    "standalone": standalone_round,
    "speed": speculative_round,
    "adaptive": speculative_round,
}


def generate(
    cfg: LoopConfig, params: dict, prompt, prompt_lens, key, pin=lambda s: s
) -> GenerateResult:
    """The whole generation: prefill, then rounds until every row is done. `pin(state)` is
    applied after prefill and every round (the sharded program pins the KV caches there)."""
    params = draft_head(cfg, params)  # once, not per M_S step
    state = pin(prefill(cfg, params, prompt, prompt_lens, key))
    round_fn = ROUNDS[cfg.policy]
    state = jax.lax.while_loop(
        lambda s: jnp.any(~s.done), lambda s: pin(round_fn(cfg, params, s)), state
    )
    return finalize(cfg, state)
