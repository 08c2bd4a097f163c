"""Logit processing and lossless verification, checked exactly and statistically.

Statistical bound used below (`tv_bound`): for N i.i.d. samples over K cells with empirical
frequencies p_hat, E||p_hat - p||_1 <= sum_i sqrt(p_i (1 - p_i) / N) <= sqrt(K / N)
(Cauchy-Schwarz), and ||p_hat - p||_1 is a function of the samples with bounded differences 2/N,
so by McDiarmid P(||p_hat - p||_1 > E + t) <= exp(-N t^2 / 2). With t = sqrt(2 ln(1/delta) / N):
TV = ||.||_1 / 2 <= (sqrt(K) + sqrt(2 ln(1/delta))) / (2 sqrt(N)) with probability >= 1 - delta.
We use delta = 1e-6 (and fixed seeds, so the tests are deterministic). Each test also checks that
the bound is far below the error a wrong rule would make (emitting the draft distribution q, or
verifying against unprocessed logits), so the test has the power to fail.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler.decode.sampling import probs, process_logits, sample
from compiler.decode.verify import verify, verify_greedy
from compiler.ir import SamplingIR

V = 6
N = 50_000


def tv_bound(n_samples: int, n_cells: int, delta: float = 1e-6) -> float:
    return (math.sqrt(n_cells) + math.sqrt(2 * math.log(1 / delta))) / (2 * math.sqrt(n_samples))


def tv(a, b) -> float:
    return 0.5 * float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum())


def freqs(tokens, n_cells: int) -> np.ndarray:
    return np.bincount(np.asarray(tokens).ravel(), minlength=n_cells) / np.asarray(tokens).size


# ---------------------------------------------------------------- processing


def test_processing_exact():
    logits = jnp.log(jnp.array([0.05, 0.4, 0.1, 0.3, 0.15, 0.0 + 1e-9]))
    p = probs(logits, SamplingIR(temperature=1.0, top_k=2))
    np.testing.assert_allclose(p, [0, 0.4 / 0.7, 0, 0.3 / 0.7, 0, 0], atol=1e-6)
    # nucleus: 0.4 + 0.3 = 0.7 < 0.75, so 0.15 is needed too
    p = probs(logits, SamplingIR(temperature=1.0, top_p=0.75))
    np.testing.assert_allclose(p, [0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85, 0], atol=1e-6)
    p = probs(logits, SamplingIR(temperature=1.0, top_p=0.7))  # exactly reached by two tokens
    np.testing.assert_allclose(p, [0, 0.4 / 0.7, 0, 0.3 / 0.7, 0, 0], atol=1e-6)
    # temperature sharpens: p^(1/T) normalized
    t = 0.5
    raw = np.array([0.05, 0.4, 0.1, 0.3, 0.15, 1e-9]) ** (1 / t)
    np.testing.assert_allclose(probs(logits, SamplingIR(temperature=t)), raw / raw.sum(), atol=1e-6)
    # greedy is the one-hot of the argmax; sampling greedy returns the argmax
    np.testing.assert_array_equal(probs(logits, SamplingIR()), np.eye(V)[1])
    assert int(sample(jax.random.key(0), logits, SamplingIR())) == 1
    # processing works on batched logits and never keeps fewer than one token
    batch = jax.random.normal(jax.random.key(1), (3, 4, V))
    out = process_logits(batch, SamplingIR(temperature=0.7, top_k=1, top_p=0.01))
    assert out.shape == (3, 4, V)
    assert (np.isfinite(np.asarray(out)).sum(-1) == 1).all()


def test_sample_follows_processed_distribution():
    s = SamplingIR(temperature=0.7, top_k=4, top_p=0.95)
    logits = jax.random.normal(jax.random.key(2), (V,)) * 1.5
    keys = jax.random.split(jax.random.key(3), N)
    toks = jax.jit(jax.vmap(lambda k: sample(k, logits, s)))(keys)
    assert tv(freqs(toks, V), probs(logits, s)) < tv_bound(N, V)


# ---------------------------------------------------------------- verification: first token

CONFIGS = [
    SamplingIR(temperature=1.0),
    SamplingIR(temperature=0.7, top_k=3),
    SamplingIR(temperature=1.3, top_p=0.8),
]


def _random_tables(seed: int, gamma: int):
    kp, kq = jax.random.split(jax.random.key(seed))
    p_logits = jax.random.normal(kp, (gamma + 1, V)) * 1.5  # target, one row per position
    q_logits = jax.random.normal(kq, (gamma, V)) * 1.5  # drafter
    return p_logits, q_logits


@functools.partial(jax.jit, static_argnames="one_hot_draft")
def _first_tokens(keys, p, q, q_logits, one_hot_draft: bool):
    """First emitted token and accepted count per key. p [G+1, V], q [G, V] processed probs."""

    def one(key):
        kd, kv = jax.random.split(key)
        if one_hot_draft:  # argmax drafts: q is the one-hot of the draft
            draft = jnp.argmax(q_logits, axis=-1)[None].astype(jnp.int32)  # [1, G]
            qq = jax.nn.one_hot(draft, V)
        else:
            draft = jax.random.categorical(kd, jnp.log(q), axis=-1)[None].astype(jnp.int32)
            qq = q[None]
        res = verify(kv, draft, qq, p[None], greedy=False)
        first = jnp.where(res.n_accepted > 0, draft[:, 0], res.next_token)
        return first[0], res.n_accepted[0]

    return jax.vmap(one)(keys)


@pytest.mark.parametrize("s", CONFIGS, ids=["T1", "T0.7-topk3", "T1.3-topp0.8"])
@pytest.mark.parametrize("one_hot_draft", [False, True], ids=["sampled", "argmax"])
def test_first_emitted_token_follows_target(s, one_hot_draft):
    gamma = 3
    p_logits, q_logits = _random_tables(10, gamma)
    p, q = probs(p_logits, s), probs(q_logits, s)  # [G+1, V], [G, V]
    keys = jax.random.split(jax.random.key(11), N)
    first, n_acc = _first_tokens(keys, p, q, q_logits, one_hot_draft)
    bound = tv_bound(N, V)
    target = np.asarray(p[0])
    assert tv(freqs(first, V), target) < bound
    # power: emitting the draft's own distribution, or the unprocessed target, is detectable
    q0 = np.eye(V)[int(jnp.argmax(q_logits[0]))] if one_hot_draft else np.asarray(q[0])
    assert tv(q0, target) > 5 * bound
    if s.temperature != 1.0:
        assert tv(jax.nn.softmax(p_logits[0]), target) > 5 * bound
    # acceptance of the first draft has the predicted rate sum_x min(p, q)
    expected_acc = np.minimum(target, q0).sum()
    acc = float((np.asarray(n_acc) > 0).mean())
    assert abs(acc - expected_acc) < 5 * math.sqrt(0.25 / N)


# ---------------------------------------------------------------- verification: a tiny Markov LM

START = 2


@functools.partial(jax.jit, static_argnames="gamma")
def _markov_pairs(keys, p_tab, q_tab, gamma: int):
    """Two speculative rounds of a first-order Markov target p_tab[prev] and drafter q_tab[prev].

    Returns the first two emitted tokens per key [n, 2].
    """

    def round_(key, prev):
        kd, kv = jax.random.split(key)
        drafts, ctx = [], prev
        for kk in jax.random.split(kd, gamma):
            ctx = jax.random.categorical(kk, jnp.log(q_tab[ctx])).astype(jnp.int32)
            drafts.append(ctx)
        draft = jnp.stack(drafts)  # [G]
        prevs = jnp.concatenate([prev[None], draft])  # [G+1] context of each position
        res = verify(kv, draft[None], q_tab[prevs[:gamma]][None], p_tab[prevs][None], greedy=False)
        padded = jnp.concatenate([draft, jnp.full((1,), -1, jnp.int32)])  # [G+1]
        emitted = jnp.where(jnp.arange(gamma + 1) < res.n_accepted[0], padded, -1)
        emitted = emitted.at[res.n_accepted[0]].set(res.next_token[0])
        return emitted, res.n_accepted[0]

    def one(key):
        k1, k2 = jax.random.split(key)
        e1, n1 = round_(k1, jnp.int32(START))
        e2, _ = round_(k2, e1[0])  # used only when round 1 emitted a single token
        second = jnp.where(n1 > 0, e1[1], e2[0])
        return jnp.stack([e1[0], second])

    return jax.vmap(one)(keys)


@pytest.mark.parametrize("s", CONFIGS[:2], ids=["T1", "T0.7-topk3"])
def test_first_two_tokens_follow_target_markov_chain(s):
    kp, kq = jax.random.split(jax.random.key(20))
    p_tab = probs(jax.random.normal(kp, (V, V)) * 1.5, s)  # [prev, next]
    q_tab = probs(jax.random.normal(kq, (V, V)) * 1.5, s)
    pairs = np.asarray(_markov_pairs(jax.random.split(jax.random.key(21), N), p_tab, q_tab, 3))
    joint = np.asarray(p_tab[START])[:, None] * np.asarray(p_tab)  # P(x1) P(x2 | x1)
    emp = freqs(pairs[:, 0] * V + pairs[:, 1], V * V)
    bound = tv_bound(N, V * V)
    assert tv(emp, joint.ravel()) < bound
    draft_joint = np.asarray(q_tab[START])[:, None] * np.asarray(q_tab)
    assert tv(draft_joint.ravel(), joint.ravel()) > 5 * bound


# ---------------------------------------------------------------- greedy rule and ragged drafts


def test_greedy_rule():
    # target argmax per position: [3, 1, 4, 0]
    p = jax.nn.one_hot(jnp.array([[3, 1, 4, 0], [3, 1, 4, 0], [3, 1, 4, 0]]), V) * 5.0
    draft = jnp.array([[3, 1, 4], [3, 2, 4], [5, 1, 4]], jnp.int32)
    res = verify_greedy(draft, p)
    np.testing.assert_array_equal(res.n_accepted, [3, 1, 0])
    np.testing.assert_array_equal(res.next_token, [0, 1, 3])  # bonus, then corrections
    np.testing.assert_array_equal(res.accepted, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # ragged drafts: row 0 drafted only 2, so its bonus comes from position 2
    res = verify_greedy(draft, p, n_draft=jnp.array([2, 3, 3]))
    np.testing.assert_array_equal(res.n_accepted, [2, 1, 0])
    np.testing.assert_array_equal(res.next_token, [4, 1, 3])
    # the same through the generic entry, jitted
    res = jax.jit(lambda d, p: verify(None, d, None, p, greedy=True))(draft, p)
    np.testing.assert_array_equal(res.n_accepted, [3, 1, 0])


def test_sampled_ragged_drafts_bonus_position():
    """With n_draft = 1 of G = 3, the bonus after an accepted draft comes from p[1], not p[3]."""
    s = SamplingIR(temperature=1.0)
    p_logits, _ = _random_tables(30, 3)
    p = probs(p_logits, s)[None]
    draft = jnp.array([[1, 2, 3]], jnp.int32)
    q = jax.nn.one_hot(draft, V)

    def one(key):
        r = verify(key, draft, q, p, jnp.array([1]), greedy=False)
        return r.n_accepted[0], r.next_token[0]

    n_acc, nxt = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(31), N))
    n_acc, nxt = np.asarray(n_acc), np.asarray(nxt)
    assert n_acc.max() == 1
    assert abs((n_acc == 1).mean() - float(p[0, 0, 1])) < 5 * math.sqrt(0.25 / N)
    sel = nxt[n_acc == 1]
    assert tv(freqs(sel, V), p[0, 1]) < tv_bound(sel.size, V)
    rej = nxt[n_acc == 0]  # residual: p[0] without token 1
    resid = np.asarray(p[0, 0]).copy()
    resid[1] = 0
    assert tv(freqs(rej, V), resid / resid.sum()) < tv_bound(rej.size, V)


@pytest.mark.parametrize("temperature", [1e-30, 1e-45])
def test_a_tiny_temperature_samples_the_argmax_not_nan(temperature):
    logits = jax.random.normal(jax.random.key(0), (4, 50)) * 30
    s = SamplingIR(temperature=temperature)
    p = probs(logits, s)
    assert bool(jnp.isfinite(p).all())
    np.testing.assert_array_equal(np.argmax(p, -1), np.argmax(logits, -1))
    drawn = sample(jax.random.key(1), logits, s)
    np.testing.assert_array_equal(drawn, np.argmax(logits, -1))
