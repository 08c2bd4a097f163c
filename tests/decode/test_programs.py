"""The exported pieces (prefill, small_step, large_block, verify), pluggable stop rules, and
config validation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decode_fixtures import (
    FAST_COMPILE,
    MAX_LEN,
    decode_ir,
    generator,
    noisy_copy_into_small,
    params_for,
    program,
    prompts,
    rows,
)

from compiler.decode import DraftSignal, loop_config, make_programs
from compiler.decode.rules import Rule
from compiler.errors import IRInvariantError
from compiler.ir import AdaptiveIR

KEY = jax.random.key(0)


def test_pieces_compose_into_a_greedy_round():
    prog = program("tandem")
    params = params_for(prog)
    pr = make_programs(prog, decode_ir("speed", gamma=1), compiler_options=FAST_COMPILE)
    toks, lens = prompts(2, [3, 5], 6)
    state = pr.prefill(params, toks, lens, KEY)
    np.testing.assert_array_equal(state.frontier, np.asarray(lens) - 1)
    np.testing.assert_array_equal(state.last, np.asarray(toks)[[0, 1], [2, 4]])
    f = state.frontier
    logits, small_cache = pr.small_step(params, state.small_cache, state.last[:, None], f)
    d1 = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)  # [B] one greedy draft
    block = jnp.stack([state.last, d1], axis=1)  # [B, 2]
    p, large_cache, small_cache = pr.large_block(
        params, state.large_cache, small_cache, block, f, jnp.ones_like(f)
    )
    res = pr.verify(None, d1[:, None], None, p, None)
    first = np.where(np.asarray(res.n_accepted) > 0, np.asarray(d1), np.asarray(res.next_token))
    ar = generator(prog, decode_ir("autoregressive"))(params, toks, lens, KEY)
    np.testing.assert_array_equal(first, np.asarray(ar.tokens)[:, 0])
    assert large_cache[0]["k"].shape == (2, 6 + 12 + 1 + 1, 2, 12)  # [B, S, K, E]
    assert state.large_cache[0]["k"].is_deleted()  # donated to large_block


def test_large_block_logits_at_one_position_per_row():
    """The prefill's head over one position per row equals that row of the full logits."""
    from compiler.decode import loops

    prog = program("tandem")
    params = params_for(prog)
    cfg = loop_config(prog, decode_ir("autoregressive"))
    toks, lens = prompts(2, [3, 5], 6)
    state = make_programs(prog, decode_ir("autoregressive")).prefill(params, toks, lens, KEY)
    args = (cfg, params, state.large_cache, None, jnp.asarray(toks), jnp.zeros((2,), jnp.int32))
    full = loops.large_block(*args, lens)[0]
    one = loops.large_block(*args, lens, jnp.asarray(lens) - 1)[0]
    assert one.shape == (2, 1, full.shape[-1])
    np.testing.assert_allclose(one[:, 0], full[[0, 1], np.asarray(lens) - 1], rtol=1e-5, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class RouterLikeRule(Rule):
    """Reads its decision input from params, like a trained router would."""

    reads_router = True

    def __call__(self, signal: DraftSignal, params: dict) -> jax.Array:
        return jnp.broadcast_to(signal.step < params["router"]["steps"], signal.token.shape)


def test_stop_rule_reads_params_without_recompiling():
    prog = program("copy")
    params = noisy_copy_into_small(params_for(prog), noise=0.05)
    decode = decode_ir("adaptive", adaptive=AdaptiveIR(rule="threshold", max_gamma=5))
    gen = generator(prog, decode, stop_rule=RouterLikeRule())
    toks, lens = prompts(4, [3, 7, 1, 5], 8)
    ar = generator(prog, decode_ir("autoregressive"))(params, toks, lens, KEY)
    for steps in (1, 4):
        res = gen({**params, "router": {"steps": jnp.int32(steps)}}, toks, lens, KEY)
        assert rows(res) == rows(ar)
        drafted = np.asarray(res.stats.drafted_by_pos)
        rounds = np.asarray(res.stats.rounds)
        np.testing.assert_array_equal(drafted[:, :steps], np.repeat(rounds[:, None], steps, 1))
        assert drafted[:, steps:].sum() == 0
    assert gen._cache_size() == 1


def test_config_validation():
    tandem, indep = program("tandem"), program("independent")
    with pytest.raises(IRInvariantError, match="standalone decoding needs a tandem-wired"):
        loop_config(indep, decode_ir("standalone"))
    with pytest.raises(ValueError, match="needs a trained router"):
        loop_config(tandem, decode_ir("adaptive", adaptive=AdaptiveIR(rule="threshold")))
    with pytest.raises(IRInvariantError, match="needs an `adaptive:` section"):
        loop_config(tandem, decode_ir("adaptive"))
    with pytest.raises(ValueError, match="top_p"):
        loop_config(tandem, decode_ir("speed", temperature=1.0, top_p=0.0))
    small32 = dataclasses.replace(tandem.models[1], vocab=32)
    with pytest.raises(IRInvariantError, match="must share a vocabulary"):
        loop_config(dataclasses.replace(tandem, models=(tandem.models[0], small32)),
                    decode_ir("speed"))  # fmt: skip
    cfg = loop_config(tandem, decode_ir("adaptive", adaptive=AdaptiveIR(rule="confidence")))
    assert cfg.gamma == 16 and cfg.stop_rule.threshold == 0.8
    assert loop_config(indep, decode_ir("speed")).independent
    assert loop_config(program("partial"), decode_ir("speed")).partial


def test_learned_positions_too_long_prompt():
    prog = program("tandem")
    large = dataclasses.replace(prog.models[0], pos="learned")
    prog = dataclasses.replace(prog, models=(large, prog.models[1]))
    params = params_for(prog)
    toks, lens = prompts(1, [MAX_LEN], MAX_LEN)
    with pytest.raises(ValueError, match="exceeds max_len"):
        generator(prog, decode_ir("speed")).trace(params, toks, lens, KEY)
