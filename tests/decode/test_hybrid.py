"""Hybrid drafting (`decode.lookup`): prompt lookup for the rows whose context matches, the draft
model for the others, in one loop. Greedy output equals autoregressive M_L for every drafter
kind (ragged batch, rows mixing both kinds of round), M_S does not run in a round where every
row matched, the catch-up gives an independent drafter exactly the K/V it would have computed
itself (and keeps a partially wired M_S's memory), sampling stays lossless, and the bad
combinations are refused."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decode_fixtures import (
    cyclic_large,
    decode_ir,
    forward,
    generator,
    params_for,
    program,
    rows,
)

from compiler.build import build_ir
from compiler.decode import probs
from compiler.decode.lookup import lookup
from compiler.decode.loops import hybrid_drafts, prefill, speculative_step
from compiler.decode.programs import loop_config
from compiler.decode.rules import FixedRule
from compiler.errors import IRInvariantError
from compiler.ir import AdaptiveIR, SamplingIR
from compiler.nn import init_cache, write_memory
from compiler.nn.decoder import decoder_block
from tandem_dsl import api
from tandem_dsl.diagnostics import SpecError

KEY = jax.random.key(0)
# row 0 repeats itself (a match from the start), rows 1 and 2 start with fresh tokens (M_S
# drafts until the output repeats), row 3 matches a 2-token suffix; ragged lengths
PROMPTS = jnp.asarray(
    [[1, 2, 3, 4, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 0, 0], [11, 12, 13, 0, 0, 0, 0, 0],
     [20, 21, 22, 20, 21, 0, 0, 0]], jnp.int32,
)  # fmt: skip
LENS = jnp.asarray([8, 6, 3, 5], jnp.int32)


def hybrid_ir(policy="speed", n=2, **kw):
    return dataclasses.replace(decode_ir(policy, **kw), lookup=n)


@pytest.mark.parametrize("kind", ["tandem", "fused", "predicted", "independent", "partial"])
def test_greedy_hybrid_equals_autoregressive(kind):
    prog = program(kind)
    params = params_for(prog, head_scale=4.0)  # peaked: the large model repeats itself
    ar = generator(prog, decode_ir("autoregressive", max_new=24))(params, PROMPTS, LENS, KEY)
    hy = generator(prog, hybrid_ir(gamma=3, max_new=24))(params, PROMPTS, LENS, KEY)
    assert rows(hy) == rows(ar)
    st = jax.device_get(hy.stats)
    np.testing.assert_array_equal(st.large_calls, st.rounds + 1)
    model_rounds = st.rounds - st.lookup_rounds
    # both kinds of round, and rows that had both
    assert st.lookup_rounds.sum() > 0 and model_rounds.sum() > 0
    assert ((st.lookup_rounds > 0) & (model_rounds > 0)).sum() >= 2
    if kind in ("tandem", "fused", "predicted"):  # no prompt pass, no catch-up: G steps a round
        np.testing.assert_array_equal(st.small_calls, 3 * model_rounds)
    else:  # + the prompt pass (+ a tail step per round), + catch-up blocks after lookup rounds
        per_round = 4 if kind == "partial" else 3
        assert (st.small_calls >= 1 + per_round * model_rounds).all()
        assert (st.small_calls > 1 + per_round * model_rounds).any()
    # each round drafts gamma tokens (lookup: all or nothing, M_S: fixed gamma)
    assert (st.drafted_by_pos == st.rounds[:, None]).all()


@pytest.mark.parametrize("kind", ["tandem", "independent", "partial"])
def test_greedy_hybrid_with_short_matches_and_longer_lookup_rounds(kind):
    """lookup_min 1: a 1-token match drafts by lookup too; lookup_gamma 5 > gamma 3: lookup
    rounds draft 5, model rounds 3, in one loop (the verify pass compiled for both)."""
    prog = program(kind)
    params = params_for(prog, head_scale=4.0)
    dec = dataclasses.replace(hybrid_ir(n=3, gamma=3, max_new=24), lookup_min=1, lookup_gamma=5)
    cfg = loop_config(prog, dec)
    assert (cfg.gamma, cfg.buckets, cfg.stop_rule) == (5, (3, 5), FixedRule(3))
    ar = generator(prog, decode_ir("autoregressive", max_new=24))(params, PROMPTS, LENS, KEY)
    hy = generator(prog, dec)(params, PROMPTS, LENS, KEY)
    assert rows(hy) == rows(ar)
    st = jax.device_get(hy.stats)
    model_rounds = st.rounds - st.lookup_rounds
    assert st.lookup_rounds.sum() > 0 and model_rounds.sum() > 0
    # positions 1-3 are drafted every round, 4-5 only in the rounds drafted by lookup
    assert (st.drafted_by_pos[:, :3] == st.rounds[:, None]).all()
    assert (st.drafted_by_pos[:, 3:] == st.lookup_rounds[:, None]).all()
    plain = generator(prog, hybrid_ir(n=3, gamma=3, max_new=24))(params, PROMPTS, LENS, KEY)
    assert st.lookup_rounds.sum() > jax.device_get(plain.stats).lookup_rounds.sum()


def test_lookup_min_sets_the_shortest_match_that_drafts():
    prog = program("tandem")
    params = params_for(prog)
    ctx = jnp.asarray([[7, 1, 2, 9, 3, 4, 1, 2]], jnp.int32)  # "1 2" occurred before, "4 1 2" not
    lens = jnp.asarray([8], jnp.int32)
    hits = []
    for least in (0, 2, 3):
        dec = dataclasses.replace(hybrid_ir(n=3, gamma=3, max_new=8), lookup_min=least)
        cfg = loop_config(prog, dec)
        state = jax.jit(lambda p, n, cfg=cfg: prefill(cfg, params, p, n, KEY))(ctx, lens)
        d, hit, _ = hybrid_drafts(cfg, params, state, KEY, FixedRule(3))
        hits.append(bool(hit[0]))
        if hit[0]:
            np.testing.assert_array_equal(d.tokens[0], [9, 3, 4])
    assert hits == [False, True, False]


def test_greedy_hybrid_adaptive_equals_autoregressive():
    prog = program("independent")
    params = params_for(prog, head_scale=4.0)
    adaptive = AdaptiveIR(rule="heuristic", max_gamma=4)
    dec = hybrid_ir("adaptive", gamma=2, adaptive=adaptive, max_new=24)
    ar = generator(prog, decode_ir("autoregressive", max_new=24))(params, PROMPTS, LENS, KEY)
    hy = generator(prog, dec)(params, PROMPTS, LENS, KEY)
    assert rows(hy) == rows(ar)
    st = jax.device_get(hy.stats)
    assert st.lookup_rounds.sum() > 0 and (st.rounds - st.lookup_rounds).sum() > 0


def test_model_does_not_run_when_every_row_matches():
    prog = program("tandem")
    params = cyclic_large(params_for(prog))
    cfg = loop_config(prog, hybrid_ir(gamma=3, n=1, max_new=20))

    @jax.jit
    def drafts(prompt, lens):
        state = prefill(cfg, params, prompt, lens, KEY)
        return state.small_cache, hybrid_drafts(cfg, params, state, KEY, FixedRule(3))

    both = jnp.asarray([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2], [3, 4, 5, 6, 0, 1, 2, 3, 0, 0]], jnp.int32)
    lens = jnp.asarray([10, 8], jnp.int32)
    before, (d, hit, _) = drafts(both, lens)
    assert np.asarray(hit).all()
    np.testing.assert_array_equal(d.calls, 0)
    np.testing.assert_array_equal(d.tokens, [[3, 4, 5], [4, 5, 6]])
    for old, new in zip(before, d.cache, strict=True):  # M_S wrote nothing
        np.testing.assert_array_equal(old["k"], new["k"])
    # with n = 3 only row 0's last 3 tokens occurred before; row 1's last one alone is no match
    cfg3 = loop_config(prog, hybrid_ir(gamma=3, n=3, max_new=20))
    state3 = jax.jit(lambda p, n: prefill(cfg3, params, p, n, KEY))(both, lens)
    _, hit3, _ = hybrid_drafts(cfg3, params, state3, KEY, FixedRule(3))
    assert np.asarray(hit3).tolist() == [True, False]
    # row 1 ends in a token seen nowhere before: M_S drafts it (and only it)
    one = both.at[1, 7].set(40)
    before, (d, hit, _) = drafts(one, lens)
    assert np.asarray(hit).tolist() == [True, False]
    np.testing.assert_array_equal(d.calls, [0, 3])
    assert not np.array_equal(before[0]["k"], d.cache[0]["k"])
    np.testing.assert_array_equal(d.tokens[0], [3, 4, 5])
    # a whole generation on the cycle: every round drafted by lookup, M_S never called
    out = generator(prog, hybrid_ir(gamma=4, n=1, max_new=20))(params, both, lens, KEY)
    ar = generator(prog, decode_ir("autoregressive", max_new=20))(params, both, lens, KEY)
    assert rows(out) == rows(ar)
    st = jax.device_get(out.stats)
    np.testing.assert_array_equal(st.small_calls, 0)
    np.testing.assert_array_equal(st.lookup_rounds, st.rounds)
    np.testing.assert_array_equal(st.round_tokens, 5 * st.rounds)  # all accepted


@partial(jax.jit, static_argnums=(0, 2))
def _rounds(cfg, params, n):
    """Prefill PROMPTS and run n rounds -> (final state, lookup hit [n, B], active [n, B])."""
    state = prefill(cfg, params, PROMPTS, LENS, KEY)

    def one(state, _):
        _, n_look, _ = lookup(state.context, state.frontier, cfg.lookup, cfg.gamma)
        return speculative_step(cfg, params, state)[0], (n_look > 0, ~state.done)

    state, (hit, active) = jax.lax.scan(one, state, None, length=n)
    return state, hit, active


def _caught_up(hit, active) -> bool:
    """Some row drafted with M_S after a round drafted by lookup (so the catch-up ran)."""
    hit, active = np.asarray(hit), np.asarray(active)
    model = active & ~hit
    return any(
        model[j, b] and (hit[:j, b] & active[:j, b]).any()
        for b in range(hit.shape[1])
        for j in range(hit.shape[0])
    )


def test_catch_up_gives_the_independent_drafter_its_own_kv():
    """After rounds drafted by lookup, M_S's cache below `synced` equals what the drafter
    computes over the same tokens in one pass (holes would be zeros)."""
    prog = program("independent")
    params = params_for(prog, head_scale=4.0)
    cfg = loop_config(prog, hybrid_ir(gamma=3, max_new=30))
    state, hit, active = _rounds(cfg, params, 9)
    assert _caught_up(hit, active)
    small = prog.models[1]
    ctx, synced, f = state.context, np.asarray(state.synced), np.asarray(state.frontier)
    assert (synced >= np.asarray(LENS)).all()  # every row drafted with M_S after its prompt
    ref_cache = init_cache(small, ctx.shape[0], ctx.shape[1])
    _, _, ref_cache = decoder_block(params["small"], small, ref_cache, ctx, jnp.zeros(4, jnp.int32))
    for layer, ref in zip(state.small_cache, ref_cache, strict=True):
        for b in range(4):
            np.testing.assert_allclose(
                layer["k"][b, : synced[b]], ref["k"][b, : synced[b]], rtol=2e-4, atol=2e-5
            )
            np.testing.assert_allclose(
                layer["v"][b, : synced[b]], ref["v"][b, : synced[b]], rtol=2e-4, atol=2e-5
            )
    assert (synced <= f).all()


def test_catch_up_keeps_the_memory_of_a_partial_tandem():
    """Partially wired M_S: the catch-up fills the unwired layer's holes and leaves the wired
    layer holding M_L's projected memory below the frontier."""
    prog = program("partial")  # small layer 0 reads large layer 2, layer 1 is unwired
    params = params_for(prog, head_scale=4.0)
    cfg = loop_config(prog, hybrid_ir(gamma=3, max_new=30))
    state, hit, active = _rounds(cfg, params, 9)
    assert _caught_up(hit, active)
    large, small = prog.models
    ctx, synced, f = state.context, np.asarray(state.synced), np.asarray(state.frontier)
    _, hiddens = forward(params["large"], large, ctx)
    empty = init_cache(small, 4, ctx.shape[1])
    zero = jnp.zeros(4, jnp.int32)
    mem = write_memory(params["small"], params["l2s"], small, prog.wirings[0], empty, hiddens, zero)
    for b in range(4):
        np.testing.assert_allclose(
            state.small_cache[0]["k"][b, : f[b]], mem[0]["k"][b, : f[b]], rtol=2e-4, atol=2e-5
        )
        unwired = np.asarray(state.small_cache[1]["k"][b, : synced[b]])
        assert (np.abs(unwired).sum(axis=(-1, -2)) > 0).all()  # no hole (zeros) left


# --- sampling ----------------------------------------------------------------------------------

V = 8
N = 8_000
# the last token occurred before: round 1 is drafted by lookup for every row; round 2 by lookup
# for rows whose first token occurred before, by M_S for the others
PROMPT = [3, 1, 4, 1]


def _tv_bound(n: int, cells: int, delta: float = 1e-6) -> float:  # tests/decode/test_sampled.py
    return (math.sqrt(cells) + math.sqrt(2 * math.log(1 / delta))) / (2 * math.sqrt(n))


def _tv(a, b) -> float:
    return 0.5 * float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum())


@pytest.mark.parametrize(
    "kind,policy,lookup_gamma",
    [("tandem", "speed", 0), ("independent", "adaptive", 0), ("tandem", "speed", 4)],
)
def test_sampled_hybrid_follows_large_model(kind, policy, lookup_gamma):
    prog = program(kind, vocab=V, d_large=16, d_small=16)
    large = prog.models[0]
    params = params_for(prog, seed=7, head_scale=2.0)
    adaptive = AdaptiveIR(rule="confidence", threshold=0.5, max_gamma=3)
    adaptive = adaptive if policy == "adaptive" else None
    dec = hybrid_ir(policy, n=1, gamma=3, max_new=2, temperature=1.0, adaptive=adaptive)
    dec = dataclasses.replace(dec, lookup_gamma=lookup_gamma)
    prompt = jnp.tile(jnp.asarray(PROMPT, jnp.int32), (N, 1))
    lens = jnp.full((N,), len(PROMPT), jnp.int32)
    res = generator(prog, dec)(params, prompt, lens, jax.random.key(11))
    toks = np.asarray(res.tokens)
    assert (np.asarray(res.lengths) == 2).all()
    s = SamplingIR(temperature=1.0)
    seqs = jnp.asarray([PROMPT + [x] for x in range(V)], jnp.int32)
    logits, _ = forward(params["large"], large, seqs)
    p1 = np.asarray(probs(logits[0, len(PROMPT) - 1], s))
    joint = p1[:, None] * np.asarray(probs(logits[:, len(PROMPT)], s))
    emp = np.bincount(toks[:, 0] * V + toks[:, 1], minlength=V * V) / N
    assert _tv(emp, joint.ravel()) < _tv_bound(N, V * V)
    # power: rows whose second round was drafted by lookup and rows whose was drafted by M_S
    st = jax.device_get(res.stats)
    two = st.rounds == 2
    assert (two & (st.lookup_rounds == 2)).sum() > 200
    assert (two & (st.lookup_rounds == 1)).sum() > 200
    assert (st.accepted_by_pos[:, 0] > 0).sum() > 200  # lookup drafts accepted in round 1


# --- configuration -----------------------------------------------------------------------------

SPEC = """tandem: 1
name: hybrid
models:
  large: {d_model: 64, n_layers: 4, n_heads: 4}
  small: {d_model: 32, n_layers: 2, n_heads: 2}
projections:
  l2s: {from: large, to: small}
wiring:
  - {query: small, memory: large, via: l2s}
decode: {policy: speed, target: large, draft: small, gamma: 4, max_new_tokens: 32}
data: {seq_len: 64}
shapes: {max_len: 128}
"""


def test_lookup_is_an_override_carried_to_the_loop():
    spec = api.loads(SPEC, overrides=["decode.lookup=3"])
    prog = build_ir(spec)
    assert spec.decode.lookup == 3 and prog.decode.lookup == 3
    cfg = loop_config(prog)
    assert cfg.lookup == 3 and not cfg.catch_up
    assert loop_config(prog, dataclasses.replace(prog.decode, policy="autoregressive")).lookup == 0


@pytest.mark.parametrize(
    "overrides",
    [["decode.lookup=3", "decode.policy=standalone"],
     ["decode.lookup=3", "decode.draft={kind: ngram, n: 3}"],
     ["decode.lookup=2", "decode.policy=autoregressive"]],
)  # fmt: skip
def test_lookup_needs_speed_or_adaptive_with_a_model_draft(overrides):
    with pytest.raises(SpecError) as info:
        api.loads(SPEC, overrides=overrides)
    first = info.value.diagnostics[0]
    assert first.code == "E-CHECK-LOOKUP" and first.path == "decode.lookup", first.render()
    assert first.hint


@pytest.mark.parametrize(
    "overrides,field",
    [(["decode.lookup_min=2"], "lookup_min"),
     (["decode.lookup=2", "decode.lookup_min=3"], "lookup_min"),
     (["decode.lookup_gamma=8"], "lookup_gamma"),
     (["decode.lookup=3", "decode.lookup_gamma=8", "decode.policy=adaptive",
       "+decode.adaptive={rule: heuristic, max_gamma: 6}"], "lookup_gamma")],
)  # fmt: skip
def test_lookup_refinements_are_checked(overrides, field):
    with pytest.raises(SpecError) as info:
        api.loads(SPEC, overrides=overrides)
    first = info.value.diagnostics[0]
    assert first.code == "E-CHECK-LOOKUP" and first.path == f"decode.{field}", first.render()
    assert first.hint
    good = api.loads(
        SPEC, overrides=["decode.lookup=3", "decode.lookup_min=2", "decode.lookup_gamma=8"]
    )
    d = build_ir(good).decode
    assert (d.lookup_min, d.lookup_gamma, d.draft_len) == (2, 8, 8)


def test_loop_config_refuses_lookup_without_a_model_draft():
    prog = program("tandem")
    with pytest.raises(IRInvariantError, match="lookup adds prompt-lookup"):
        loop_config(prog, hybrid_ir("standalone"))
    ngram = dataclasses.replace(hybrid_ir(), draft=None, draft_ngram=3)
    with pytest.raises(IRInvariantError, match="lookup adds prompt-lookup"):
        loop_config(prog, ngram)
    assert loop_config(program("partial"), hybrid_ir()).catch_up
