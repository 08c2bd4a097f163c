"""Sampled SPEED follows the large model's sampling distribution.

N rows share one prompt; each row is an independent sample (one generate call, batched).
The empirical joint distribution of the first two generated tokens is compared with the exact
one, P(x1) P(x2 | x1), computed from M_L's processed logits with V + 1 forward passes.
TV bound: see tests/decode/test_sampling.py (McDiarmid, delta = 1e-6).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decode_fixtures import decode_ir, forward, generator, params_for, program, teacher_forced

from compiler.decode import probs
from compiler.ir import AdaptiveIR, SamplingIR

V = 8
N = 8_000
PROMPT = [3, 1, 4, 1, 5]


def tv_bound(n: int, cells: int, delta: float = 1e-6) -> float:
    return (math.sqrt(cells) + math.sqrt(2 * math.log(1 / delta))) / (2 * math.sqrt(n))


def tv(a, b) -> float:
    return 0.5 * float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum())


def _exact_joint(params, large, s: SamplingIR) -> np.ndarray:
    """[V, V] P(x1, x2) under M_L's processed distribution."""
    seqs = jnp.asarray([PROMPT + [x] for x in range(V)], jnp.int32)  # [V, L+1]
    logits, _ = forward(params["large"], large, seqs)
    p1 = np.asarray(probs(logits[0, len(PROMPT) - 1], s))  # [V]
    p2 = np.asarray(probs(logits[:, len(PROMPT)], s))  # [V(x1), V]
    return p1[:, None] * p2


# name -> (policy, sampling, adaptive, draft_vocab)
CASES = {
    "speed-T1": ("speed", SamplingIR(temperature=1.0), None, 0),
    "speed-T0.7-topk3": ("speed", SamplingIR(temperature=0.7, top_k=3), None, 0),
    # M_S proposes ids < 5 only: q = 0 for the other 3, the residual must supply them
    "speed-T1-draft_vocab5": ("speed", SamplingIR(temperature=1.0), None, 5),
    "adaptive-T1-topp0.9": (
        "adaptive",
        SamplingIR(temperature=1.0, top_p=0.9),
        AdaptiveIR(rule="confidence", threshold=0.5, max_gamma=4),
        0,
    ),
    "autoregressive-T0.7-topk3": ("autoregressive", SamplingIR(temperature=0.7, top_k=3), None, 0),
}


SLOW_CASES = {"adaptive-T1-topp0.9", "autoregressive-T0.7-topk3"}  # run with -m slow


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES]
)
def test_first_two_tokens_follow_large_model(case):
    policy, s, adaptive, draft_vocab = CASES[case]
    prog = program("tandem", vocab=V, d_large=16, d_small=16)  # cheap rows
    large, small = prog.models
    params = params_for(prog, seed=7, head_scale=2.0)
    decode = decode_ir(policy, gamma=3, max_new=2, adaptive=adaptive,
                       temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)  # fmt: skip
    decode = dataclasses.replace(decode, draft_vocab=draft_vocab)
    prompt = jnp.tile(jnp.asarray(PROMPT, jnp.int32), (N, 1))
    lens = jnp.full((N,), len(PROMPT), jnp.int32)
    res = generator(prog, decode)(params, prompt, lens, jax.random.key(11))
    toks = np.asarray(res.tokens)
    assert (np.asarray(res.lengths) == 2).all()

    joint = _exact_joint(params, large, s)
    emp = np.bincount(toks[:, 0] * V + toks[:, 1], minlength=V * V) / N
    assert tv(emp, joint.ravel()) < tv_bound(N, V * V)
    emp1 = np.bincount(toks[:, 0], minlength=V) / N
    assert tv(emp1, joint.sum(1)) < tv_bound(N, V)
    if policy == "autoregressive":
        return
    # power: M_S's own first-token distribution is far from M_L's, and both the accept and
    # the reject paths (residual sampling) were taken often
    seq = jnp.asarray([PROMPT], jnp.int32)
    _, hiddens = forward(params["large"], large, seq)
    f = jnp.full((1, len(PROMPT)), len(PROMPT) - 1, jnp.int32)
    q_logits = teacher_forced(params["small"], params["l2s"], small, prog.wirings[0], hiddens,
                              seq, jnp.minimum(f, jnp.arange(len(PROMPT))))  # fmt: skip
    q1 = np.asarray(probs(q_logits[0, -1], s))
    assert tv(q1, joint.sum(1)) > 5 * tv_bound(N, V)
    acc = np.asarray(res.stats.accepted_by_pos)[:, 0].sum() / np.asarray(res.stats.rounds).sum()
    assert 0.1 < acc < 0.9
