"""Router features and labels on a tiny tandem, checked against independent computations:
numpy features, and teacher-forced M_S / M_L distributions for the labels; the BCE fit learns a
signal that is there; AUC and calibration helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from decode_fixtures import decode_ir, forward, params_for, program, prompts, teacher_forced

from compiler.ir import AdaptiveIR
from compiler.router.collect import RouterData, _collect, collect, collect_config
from compiler.router.features import features, n_features
from compiler.router.fit import auc, calibration, evaluate, fit, split

KEY = jax.random.key(0)


def test_features_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 11)) * 2
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    emb = rng.normal(size=(11, 5))
    got = np.asarray(features(jnp.asarray(p), jnp.asarray(emb), 3))
    assert got.shape == (3, n_features(3, 5))
    for b in range(3):
        top = np.argsort(-p[b])[:3]
        want = np.concatenate([[-(p[b] * np.log(p[b])).sum()], p[b][top], emb[top].ravel()])
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_collected_labels_equal_teacher_forced_distributions():
    """First round, batch 1: at draft i, tv = TV(M_S, M_L) at position f + i - 1 computed by
    teacher-forced forwards over prompt + drafts; reject = their argmaxes differ."""
    prog = program("tandem")
    large, small = prog.models
    params = params_for(prog, seed=3, head_scale=3.0)
    g, top_k, L = 4, 3, 6
    decode = decode_ir("adaptive", adaptive=AdaptiveIR(rule="fixed", max_gamma=g), max_new=8)
    cfg = collect_config(prog, decode, max_new=8)
    toks, lens = prompts(1, [L], L, seed=5)
    x, tv, reject, valid, top_p, drafts = jax.device_get(
        _collect(cfg, params, toks, lens, KEY, 1, top_k)
    )
    assert valid[0].all()
    seq = jnp.concatenate([toks, jnp.asarray(drafts[0])], axis=1)  # [1, L + G]
    lg, hiddens = forward(params["large"], large, seq)
    frontier = jnp.full(seq.shape, L - 1, jnp.int32)  # M_L memory below x_f, M_S own from f
    ls = teacher_forced(params["small"], params["l2s"], small, prog.wirings[0], hiddens, seq,
                        frontier)  # fmt: skip
    pos = np.arange(L - 1, L - 1 + g)
    q, p = _softmax(np.asarray(ls)[0, pos]), _softmax(np.asarray(lg)[0, pos])
    np.testing.assert_allclose(tv[0, 0], 0.5 * np.abs(q - p).sum(-1), atol=1e-4)
    np.testing.assert_array_equal(reject[0, 0], q.argmax(-1) != p.argmax(-1))
    np.testing.assert_array_equal(drafts[0, 0], q.argmax(-1))  # greedy drafts
    np.testing.assert_allclose(top_p[0, 0], q.max(-1), atol=1e-5)
    want_x = features(jnp.asarray(q), params["small"]["embed"]["tokens"], top_k)
    np.testing.assert_allclose(x[0, 0], np.asarray(want_x), atol=1e-4)


def test_collect_skips_done_rows_and_flattens():
    prog = program("tandem")
    params = params_for(prog, seed=1)
    decode = decode_ir("adaptive", adaptive=AdaptiveIR(rule="fixed", max_gamma=3), max_new=6)
    cfg = collect_config(prog, decode, max_new=6)
    toks, lens = prompts(2, [3, 5], 5)
    data = collect(cfg, params, toks, lens, KEY, rounds=10, top_k=2)
    # random weights: one token per round, so each row runs 6 rounds of 3 drafts, then stops
    n = len(data.tv)
    assert 2 * 3 <= n < 2 * 10 * 3 and n % 3 == 0
    assert ((data.tv >= 0) & (data.tv <= 1 + 1e-6)).all()
    assert set(np.unique(data.position)) == {1, 2, 3}


def test_auc_and_calibration():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    d = RouterData(np.zeros((4, 1)), np.array([0.0, 0.2, 0.8, 1.0]),
                   np.array([False, False, True, True]), np.ones(4), np.ones(4))  # fmt: skip
    bins = calibration(np.array([0.95, 0.9, 0.1, 0.05]), d, bins=2)
    assert [b["n"] for b in bins] == [2, 2]
    assert bins[0]["observed_accept"] == 0.0 and bins[1]["observed_accept"] == 1.0


def test_fit_learns_a_real_signal():
    """tv depends on one feature; the fitted router ranks rejections well above chance."""
    rng = np.random.default_rng(0)
    n = 4000
    x = rng.normal(size=(n, 6)).astype(np.float32)
    tv = 1 / (1 + np.exp(-3 * x[:, 2]))
    reject = rng.random(n) < tv
    data = RouterData(x, tv.astype(np.float32), reject, np.ones(n, int), rng.random(n))
    tr, va = split(data, 0.25)
    res = fit(tr, va, hidden=16, activation="gelu", steps=300, batch=256, lr=1e-2)
    assert res.report["val"]["auc_router"] > 0.75
    assert abs(res.report["val"]["auc_confidence"] - 0.5) < 0.1  # top_p here is noise
    untrained = evaluate({**res.router, "w2": 0 * res.router["w2"]}, va, "gelu")
    assert untrained["bce"] > res.report["val"]["bce"] + 0.05
