"""Prompt-lookup drafting: the matcher on hand-made contexts, greedy equality with
autoregressive M_L (ragged batches, several gammas), acceptance on repetitive prompts, stats,
and lossless sampling with the one-hot rule."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decode_fixtures import (
    cyclic_large,
    decode_ir,
    generator,
    params_for,
    program,
    prompts,
    rows,
)

from compiler.decode.lookup import lookup
from compiler.decode.programs import loop_config
from compiler.errors import IRInvariantError

KEY = jax.random.key(0)
SLOW = pytest.mark.slow


def ngram_ir(gamma=3, n=3, **kw):
    return dataclasses.replace(decode_ir("speed", gamma=gamma, **kw), draft=None, draft_ngram=n)


def _lookup(ctx, f, n, g):
    c = jnp.asarray([ctx + [0] * 4], jnp.int32)  # junk slots past the frontier
    t, nd, m = lookup(c, jnp.asarray([f], jnp.int32), n, g)
    return np.asarray(t)[0].tolist(), int(nd[0]), int(m[0])


def test_lookup_longest_then_most_recent_match():
    # suffix [1, 2, 3] occurs at 0 and 5; the most recent earlier one (5) wins -> 9, 1, 2 ...
    ctx = [1, 2, 3, 7, 8, 1, 2, 3, 9, 4, 1, 2, 3]
    toks, nd, m = _lookup(ctx, len(ctx) - 1, 3, 3)
    assert (toks, nd, m) == ([9, 4, 1], 3, 3)


def test_lookup_falls_back_to_shorter_match_and_to_nothing():
    ctx = [5, 6, 4, 8, 9, 6]  # no [8, 9, 6] or [9, 6] earlier; [6] at 1 -> continue with 4, 8
    toks, nd, m = _lookup(ctx, 5, 3, 2)
    assert (toks, nd, m) == ([4, 8], 2, 1)
    toks, nd, m = _lookup([1, 2, 3, 4], 3, 3, 2)  # 4 never occurred before
    assert (nd, m) == (0, 0)


def test_lookup_periodic_continuation_runs_past_the_frontier():
    # the match [1, 2] at 2 is followed by x_4 = 1, x_5 = 2 = the present: period 2 repeats
    toks, nd, m = _lookup([9, 9, 1, 2, 1, 2], 5, 2, 5)
    assert (toks, nd, m) == ([1, 2, 1, 2, 1], 5, 2)


def test_lookup_ignores_slots_past_the_frontier():
    # positions > f hold junk that would match; the frontier is 2
    c = jnp.asarray([[3, 4, 5, 4, 5, 6, 7]], jnp.int32)
    _, nd, _ = lookup(c, jnp.asarray([2], jnp.int32), 2, 3)
    assert int(nd[0]) == 0


@pytest.mark.parametrize(
    "gamma,lens_p",
    [(3, ([6], 6)), (1, ([3, 7, 1, 5], 8)), (8, ([3, 7, 1, 5], 8)),
     pytest.param(3, ([3, 7, 1, 5], 8), marks=SLOW)],
)  # fmt: skip
def test_greedy_lookup_equals_autoregressive(gamma, lens_p):
    prog = program("tandem")
    params = params_for(prog, head_scale=4.0)  # peaked: the large model repeats itself
    lens, p_max = lens_p
    toks, lens = prompts(len(lens), lens, p_max)
    ar = generator(prog, decode_ir("autoregressive", max_new=24))(params, toks, lens, KEY)
    ng = generator(prog, ngram_ir(gamma, max_new=24))(params, toks, lens, KEY)
    assert rows(ng) == rows(ar)
    st = ng.stats
    np.testing.assert_array_equal(st.small_calls, 0)  # no draft model
    np.testing.assert_array_equal(st.large_calls, np.asarray(st.rounds) + 1)
    # drafts are all-or-nothing per round: each round proposes 0 or gamma tokens
    drafted = np.asarray(st.drafted_by_pos)
    assert (drafted == drafted[:, :1]).all()
    assert (np.asarray(st.accepted_by_pos) <= drafted).all()


def test_repetitive_prompt_is_accepted():
    """A large model that copies a cycle: the drafts from the prompt are nearly all accepted."""
    prog = program("tandem")
    params = cyclic_large(params_for(prog))
    prompt = jnp.asarray([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2]], jnp.int32)
    lens = jnp.asarray([10], jnp.int32)
    ar = generator(prog, decode_ir("autoregressive", max_new=32))(params, prompt, lens, KEY)
    assert rows(ar)[0][:8] == [3, 4, 5, 6, 0, 1, 2, 3]
    ng = generator(prog, ngram_ir(4, max_new=32))(params, prompt, lens, KEY)
    assert rows(ng) == rows(ar)
    st = ng.stats
    acc = np.asarray(st.accepted_by_pos).sum() / np.asarray(st.drafted_by_pos).sum()
    assert acc == 1.0
    assert float(st.tau[0]) == 5.0  # every round: 4 drafts + the bonus
    assert int(st.large_calls[0]) == 1 + 32 // 5 + 1


def test_sampled_lookup_is_lossless_in_distribution():
    """The first two sampled tokens follow M_L's processed distribution (one-hot rule)."""
    prog = program("tandem", vocab=8)
    params = params_for(prog, head_scale=2.0)
    prompt = jnp.asarray([[1, 2, 3, 1, 2, 3, 1, 2]] * 1, jnp.int32)
    lens = jnp.asarray([8], jnp.int32)
    dec = ngram_ir(3, max_new=2, temperature=1.0)
    ar_dec = decode_ir("autoregressive", max_new=2, temperature=1.0)
    n = 3000
    keys = jax.random.split(jax.random.key(7), n)
    prompt_b, lens_b = jnp.repeat(prompt, n, 0), jnp.repeat(lens, n, 0)
    # one batch of n rows, each with its own randomness: rows differ by their keys' folding
    ng = jax.vmap(lambda k: generator(prog, dec)(params, prompt, lens, k).tokens[0])(keys)
    ar = jax.vmap(lambda k: generator(prog, ar_dec)(params, prompt, lens, k).tokens[0])(keys)
    del prompt_b, lens_b
    pair = lambda t: np.asarray(t[:, 0] * 8 + t[:, 1])  # noqa: E731
    h_ng = np.bincount(pair(ng), minlength=64) / n
    h_ar = np.bincount(pair(ar), minlength=64) / n
    assert 0.5 * np.abs(h_ng - h_ar).sum() < 0.08


def test_ngram_config_validation():
    prog = program("tandem")
    with pytest.raises(IRInvariantError, match="need policy speed"):
        loop_config(prog, dataclasses.replace(ngram_ir(), policy="adaptive"))
    cfg = loop_config(prog, ngram_ir(gamma=5))
    assert cfg.ngram == 3 and cfg.draft is None and cfg.buckets == (0, 5)
