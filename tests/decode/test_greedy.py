"""Greedy SPEED / adaptive output equals greedy autoregressive M_L output, token for token
(float32), for Tandem, partially wired Tandem and independent drafters, ragged batches."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from decode_fixtures import (
    copy_large_into_small,
    decode_ir,
    generator,
    noisy_copy_into_small,
    params_for,
    program,
    prompts,
    rows,
)

from compiler.ir import AdaptiveIR

KEY = jax.random.key(0)
BATCH4 = ([3, 7, 1, 5], 8)  # per-row prompt lengths, padded length
BATCH1 = ([6], 6)


def _run(prog, params, decode, lens_p, seed=0):
    lens, p_max = lens_p
    toks, lens = prompts(len(lens), lens, p_max, seed)
    return generator(prog, decode)(params, toks, lens, KEY)


SLOW = pytest.mark.slow  # run with: pytest -m slow tests/decode (or -m "" for everything)


@pytest.mark.parametrize(
    "kind,gamma",
    [("tandem", 1), ("tandem", 3), ("tandem", 8), ("fused", 3), ("predicted", 4),
     ("independent", 3),
     pytest.param("independent", 1, marks=SLOW), pytest.param("independent", 8, marks=SLOW)],
)  # fmt: skip
def test_greedy_speed_equals_autoregressive(kind, gamma):
    prog = program(kind)
    params = params_for(prog)
    ar = _run(prog, params, decode_ir("autoregressive"), BATCH4)
    sp = _run(prog, params, decode_ir("speed", gamma=gamma), BATCH4)
    assert rows(sp) == rows(ar)
    assert (np.asarray(sp.lengths) == 12).all()
    # every round verifies at least one token; calls = prefill + rounds
    st = sp.stats
    np.testing.assert_array_equal(st.large_calls, np.asarray(st.rounds) + 1)
    assert (np.asarray(st.round_tokens) >= np.asarray(st.rounds)).all()


@pytest.mark.parametrize(
    "kind,batches",
    [
        ("tandem", (BATCH1,)),
        pytest.param("independent", (BATCH1,), marks=SLOW),
        pytest.param("partial", (BATCH1, BATCH4), marks=SLOW),
    ],  # fmt: skip
)
def test_greedy_speed_batch1_and_partial_wiring(kind, batches):
    prog = program(kind)
    params = params_for(prog, seed=3)
    for lens_p in batches:
        ar = _run(prog, params, decode_ir("autoregressive"), lens_p, seed=1)
        sp = _run(prog, params, decode_ir("speed", gamma=3), lens_p, seed=1)
        assert rows(sp) == rows(ar)


@pytest.mark.parametrize("gamma", [3, pytest.param(8, marks=SLOW)])
def test_agreeing_drafter_long_acceptance_runs(gamma):
    """An oracle drafter (a copy of M_L): every draft accepted, tau = gamma + 1."""
    prog = program("copy")
    params = copy_large_into_small(params_for(prog))
    ar = _run(prog, params, decode_ir("autoregressive", max_new=12), BATCH4)
    sp = _run(prog, params, decode_ir("speed", gamma=gamma, max_new=12), BATCH4)
    assert rows(sp) == rows(ar)
    st = sp.stats
    np.testing.assert_array_equal(st.accepted_by_pos, st.drafted_by_pos)
    np.testing.assert_array_equal(st.round_tokens, np.asarray(st.rounds) * (gamma + 1))
    calls_per_token = np.asarray(st.large_calls) / np.asarray(sp.lengths)
    assert (calls_per_token < 0.5).all()
    # the independent drafter's prompt pass + first 2-token step + gamma - 1 single steps
    np.testing.assert_array_equal(st.small_calls, 1 + np.asarray(st.rounds) * gamma)


def test_ragged_acceptance_noisy_drafter():
    """A drafter that mostly agrees: rows accept different counts in different rounds."""
    prog = program("copy")
    params = noisy_copy_into_small(params_for(prog), noise=0.05)
    ar = _run(prog, params, decode_ir("autoregressive", max_new=12), BATCH4)
    sp = _run(prog, params, decode_ir("speed", gamma=3, max_new=12), BATCH4)
    assert rows(sp) == rows(ar)
    st = sp.stats
    acc = np.asarray(st.accepted_by_pos)
    assert acc.sum() > 0 and (acc < np.asarray(st.drafted_by_pos)).any()
    assert len(set(np.asarray(st.rounds).tolist())) > 1  # rows progressed at their own pace
    # acceptance counts are monotone in the draft position (a prefix is accepted)
    assert (np.diff(acc, axis=1) <= 0).all()
    tau = np.asarray(st.tau)
    assert (tau > 1).all() and (tau <= 5).all()


@pytest.mark.parametrize("rule", ["confidence", pytest.param("fixed", marks=SLOW)])
def test_greedy_adaptive_equals_autoregressive(rule):
    prog = program("copy")
    # sharper heads: the drafter's top probability spans ~0.3..0.95 around the threshold
    params = noisy_copy_into_small(params_for(prog, head_scale=4.0), noise=0.05)
    adaptive = AdaptiveIR(rule=rule, threshold=0.5, max_gamma=6)
    ad = _run(prog, params, decode_ir("adaptive", gamma=3, adaptive=adaptive, max_new=12), BATCH4)
    ar = _run(prog, params, decode_ir("autoregressive", max_new=12), BATCH4)
    assert rows(ad) == rows(ar)
    drafted = np.asarray(ad.stats.drafted_by_pos)
    rounds = np.asarray(ad.stats.rounds)
    if rule == "fixed":  # exactly gamma = 3 drafts every round
        np.testing.assert_array_equal(drafted[:, :3], np.repeat(rounds[:, None], 3, 1))
        assert drafted[:, 3:].sum() == 0
    else:  # the draft length varies with the drafter's confidence
        assert (drafted[:, 0] == rounds).all()
        assert 0 < drafted[:, 1:].sum() < (rounds[:, None] * 5).sum()


def test_eos_stops_rows_early():
    prog = program("copy")
    params = noisy_copy_into_small(params_for(prog), noise=0.05)
    ar = _run(prog, params, decode_ir("autoregressive", max_new=12), BATCH4)
    ref = rows(ar)
    eos = ref[1][5]  # a token row 1 emits at step 5
    ar_e = _run(prog, params, decode_ir("autoregressive", max_new=12, eos_id=eos), BATCH4)
    sp_e = _run(prog, params, decode_ir("speed", gamma=3, max_new=12, eos_id=eos), BATCH4)
    assert rows(sp_e) == rows(ar_e)
    for full, cut in zip(ref, rows(ar_e), strict=True):
        n = full.index(eos) + 1 if eos in full else len(full)
        assert cut == full[:n]
    assert np.asarray(sp_e.lengths)[1] <= 6
    toks = np.asarray(sp_e.tokens)
    assert (toks[1, np.asarray(sp_e.lengths)[1] :] == 0).all()  # padded after the EOS
