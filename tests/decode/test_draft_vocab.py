"""decode.draft_vocab: M_S proposes only ids < N through a cut output layer; greedy output
still equals autoregressive M_L (the sampled case is in test_sampled.py)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decode_fixtures import copy_large_into_small, decode_ir, generator, params_for, program, rows
from decode_fixtures import prompts as make_prompts

from compiler.decode.drafting import small_step
from compiler.decode.programs import loop_config
from compiler.errors import IRInvariantError
from compiler.nn import init_cache

N = 24  # of VOCAB 61


def _tied(prog):
    """The same program with a tied small model (its head is its embedding table)."""
    models = tuple(dataclasses.replace(m, tie_embeddings=m.name == "small") for m in prog.models)
    return dataclasses.replace(prog, models=models)


@pytest.mark.parametrize("tied", [False, True])
def test_small_step_logits_are_the_first_n_of_the_full_head(tied):
    prog = program("independent")
    prog = _tied(prog) if tied else prog
    params = params_for(prog)
    full = loop_config(prog, decode_ir("speed"))
    cut = loop_config(prog, dataclasses.replace(decode_ir("speed"), draft_vocab=N))
    tokens = jnp.asarray([[5, 60, 7]], jnp.int32)  # ids past N are still valid inputs
    start = jnp.zeros((1,), jnp.int32)
    cache = init_cache(full.draft, 1, 16)
    lf, _ = small_step(full, params, cache, tokens, start)
    lc, _ = small_step(cut, params, cache, tokens, start)
    assert lc.shape == (1, 3, N)
    np.testing.assert_allclose(lc, lf[..., :N], rtol=1e-5, atol=1e-5)


def test_greedy_output_unchanged_and_drafts_restricted():
    """An oracle drafter (a copy of M_L) accepts everything with the full vocabulary; cut to
    N ids, it still gives M_L's exact output but its drafts fail where M_L picks an id >= N."""
    prog = program("copy")
    params = copy_large_into_small(params_for(prog))
    toks, lens = make_prompts(4, [3, 7, 1, 5], 8)
    key = jax.random.key(0)
    ar = generator(prog, decode_ir("autoregressive", max_new=16))(params, toks, lens, key)
    full = generator(prog, decode_ir("speed", gamma=3, max_new=16))(params, toks, lens, key)
    cut_ir = dataclasses.replace(decode_ir("speed", gamma=3, max_new=16), draft_vocab=N)
    cut = generator(prog, cut_ir)(params, toks, lens, key)
    assert rows(cut) == rows(ar) == rows(full)
    out = np.concatenate([np.asarray(r) for r in rows(ar)])
    assert (out >= N).any() and (out < N).any()  # the case is not vacuous
    st_full, st_cut = full.stats, cut.stats
    np.testing.assert_array_equal(st_full.accepted_by_pos, st_full.drafted_by_pos)
    assert np.asarray(st_cut.accepted_by_pos).sum() < np.asarray(st_cut.drafted_by_pos).sum()


def test_draft_vocab_needs_speed_and_fits_the_vocab():
    prog = program("tandem")
    with pytest.raises(IRInvariantError, match="draft_vocab"):
        loop_config(prog, dataclasses.replace(decode_ir("standalone"), draft_vocab=N))
    with pytest.raises(IRInvariantError, match="draft_vocab"):
        loop_config(prog, dataclasses.replace(decode_ir("speed"), draft_vocab=1000))
