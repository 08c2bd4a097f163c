"""The training mask equals the inference cache rule, through the real decode loop:
teacher-forced `tandem_forward` logits (with the frontiers the standalone loop used) equal the
decode-time M_S logits at every position the loop generated, with and without the free token,
for an all-wired and a partially wired small model, batch 2 with different prompt lengths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decode_fixtures import (
    decode_ir,
    forward,
    generator,
    params_for,
    program,
    prompts,
    teacher_forced,
)

KEY = jax.random.key(0)
GAMMA, MAX_NEW, P = 3, 10, 6
ATOL = 1e-4


def _frontiers(lens, t_total: int, free: bool) -> np.ndarray:
    """The frontier the standalone loop used for each position, per row [B, T].

    Rounds start at f0 = L - 1 (M_L read all but the last prompt token) or f0 = L (free
    token) and advance by gamma (gamma + 1 with the free token); M_S read positions
    f..f+gamma-1 (and f+gamma, the free token's predecessor, for a partially wired M_S) with
    frontier f. Prompt positions before f0 were read by M_S's prompt pass with no memory
    (frontier 0); they matter only to unwired layers.
    """
    step = GAMMA + 1 if free else GAMMA
    out = np.zeros((len(lens), t_total), np.int32)
    for b, n in enumerate(lens):
        f0 = n if free else n - 1
        t = np.arange(t_total)
        out[b] = np.where(t >= f0, f0 + (t - f0) // step * step, 0)
    return out


@pytest.mark.parametrize(
    "kind,free",
    [("tandem", True), ("tandem", False), ("fused", False), ("predicted", True),
     ("predicted", False), ("partial", True),
     pytest.param("partial", False, marks=pytest.mark.slow)],
)  # fmt: skip
def test_standalone_logits_equal_teacher_forced(kind, free):
    prog = program(kind)
    large, small = prog.models
    wiring = prog.wirings[0]
    params = params_for(prog, seed=4)
    lens = [3, 6]
    toks, lens_a = prompts(2, lens, P, seed=2)
    decode = decode_ir("standalone", gamma=GAMMA, free_token=free, max_new=MAX_NEW)
    res = generator(prog, decode, return_logits=True)(params, toks, lens_a, KEY)
    gen = np.asarray(res.tokens)
    assert (np.asarray(res.lengths) == MAX_NEW).all()

    t_total = P + MAX_NEW
    seq = np.zeros((2, t_total), np.int32)
    for b, n in enumerate(lens):
        seq[b, :n] = np.asarray(toks)[b, :n]
        seq[b, n : n + MAX_NEW] = gen[b]
    seq = jnp.asarray(seq)
    frontier = jnp.asarray(_frontiers(lens, t_total, free))
    large_logits, hiddens = forward(params["large"], large, seq)
    want = np.asarray(
        teacher_forced(params["small"], params["l2s"], small, wiring, hiddens, seq, frontier)
    )
    got = np.asarray(res.logits)  # [B, MAX_NEW, V]: logits behind generated token j
    compared = 0
    for b, n in enumerate(lens):
        for j in range(MAX_NEW):
            pos = n - 1 + j  # query position that predicts generated token j
            if free and j % (GAMMA + 1) == 0:  # M_L's free token: its own greedy prediction
                assert gen[b, j] == int(np.argmax(np.asarray(large_logits)[b, pos]))
                continue
            np.testing.assert_allclose(got[b, j], want[b, pos], atol=ATOL, rtol=0)
            assert gen[b, j] == int(np.argmax(got[b, j]))
            compared += 1
    assert compared >= 12
    st = res.stats
    np.testing.assert_array_equal(st.large_calls, np.asarray(st.rounds) + 1)
    # sanity: a wrong frontier (one block later) gives different logits, so the check can fail
    shifted = jnp.minimum(frontier + GAMMA, jnp.arange(t_total)[None])
    other = np.asarray(
        teacher_forced(params["small"], params["l2s"], small, wiring, hiddens, seq, shifted)
    )
    assert np.abs(other[0, lens[0] + 1 :] - want[0, lens[0] + 1 :]).max() > 1e-3
