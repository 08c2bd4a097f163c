"""`objective.draft_vocab` N: a drafter trained for the ids it may propose. Its output layer
is cut to N rows, the loss sees the teacher renormalized over ids < N and skips targets past
N; the metrics still score every position (a target or teacher argmax past N is a miss). Live
and teacher-cached steps agree."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_ir import VOCAB, jit, large_cfg, program, small_cfg, stage, tandem_wiring

from compiler.ir import ObjectiveIR, TeacherCacheIR, WiringIR
from compiler.nn import decoder_forward, init_params
from compiler.train import init_train_state, make_loss_fn, make_train_step, teacher
from compiler.train.losses import TopK, within_vocab

N = 40  # of VOCAB = 61 ids
LARGE = large_cfg(n_layers=1, trainable=False)
DRAFTER = small_cfg(name="drafter", n_layers=1)
SMALL = small_cfg(n_layers=1)
NONE = WiringIR(kind="none", query="drafter", memory=None, layer_map=(None,), projection=None)
PROG = program([LARGE, SMALL, DRAFTER], [tandem_wiring(SMALL, LARGE, (1,)), NONE])
T = 16


def _stage(model: str, trainable, n: int = N, **kw):
    obj = ObjectiveIR(
        kind="distil", model=model, teacher="large", weight=0.3, temperature=2.0, draft_vocab=n
    )
    return dataclasses.replace(stage(obj, trainable), **kw)


DRAFT = _stage("drafter", ["drafter"])


@pytest.fixture(scope="module")
def params():
    return init_params(PROG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, (4, T + 1)).astype(np.int32)


def test_the_loss_is_the_cut_model_against_the_renormalized_teacher(params, tokens):
    loss, metrics = jit(make_loss_fn(PROG, DRAFT))(params, tokens, None)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    z = np.asarray(decoder_forward(params["drafter"], DRAFTER, inputs)[0])[..., :N]
    zt = np.asarray(decoder_forward(params["large"], LARGE, inputs)[0])
    logp = np.asarray(jax.nn.log_softmax(z))
    counted = targets < N
    assert 0 < counted.mean() < 1
    nll = -np.take_along_axis(logp, np.minimum(targets, N - 1)[..., None], -1)[..., 0]
    soft = -np.sum(np.asarray(jax.nn.softmax(zt[..., :N] / 2.0)) * logp, -1)
    want = {
        "ce": nll[counted].mean(),
        "distil": soft[counted].mean(),
        "accuracy": (z.argmax(-1) == targets).mean(),  # every position: past N is a miss
        "agreement": (z.argmax(-1) == zt.argmax(-1)).mean(),
    }
    want["loss"] = 0.7 * want["ce"] + 0.3 * want["distil"]
    for name, value in want.items():
        np.testing.assert_allclose(metrics[name], value, rtol=2e-5, err_msg=name)
    assert float(loss) == pytest.approx(float(want["loss"]), rel=2e-5)


def test_a_cut_at_the_whole_vocabulary_is_the_plain_loss(params, tokens):
    plain = jit(make_loss_fn(PROG, _stage("drafter", ["drafter"], n=0)))(params, tokens, None)
    whole = jit(make_loss_fn(PROG, _stage("drafter", ["drafter"], n=VOCAB)))(params, tokens, None)
    for name in plain[1]:
        np.testing.assert_allclose(whole[1][name], plain[1][name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("model", ["small", "drafter"])
def test_a_lossless_store_trains_as_the_live_teacher(model, params, tokens, monkeypatch):
    monkeypatch.setattr(teacher, "HIDDEN_DTYPE", jnp.float32)
    live = _stage(model, [model, "l2s"] if model == "small" else [model])
    cached = dataclasses.replace(live, teacher_cache=TeacherCacheIR(batches=1, top_k=VOCAB))
    stored = jit(teacher.make_teacher_pass(PROG, cached))(params["large"], tokens)
    runs = ((live, tokens), (cached, {"tokens": tokens, **stored}))
    results = []
    for st, batch in runs:
        prog = dataclasses.replace(PROG, train=(st,))
        state = init_train_state(prog, st, params)
        results.append(jit(make_train_step(prog, st))(state, batch, jax.random.PRNGKey(3)))
    (_, want), (_, got) = results
    for name in ("loss", "ce", "distil", "agreement", "grad_norm"):
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, err_msg=name)
    # the gradients, not the updated weights: Adam's first step moves a weight by up to lr
    # whatever its gradient's size, so a near-zero gradient's rounding would show there
    want_g, got_g = (
        jit(jax.grad(make_loss_fn(PROG, st), has_aux=True))(params, batch, jax.random.PRNGKey(3))[0]
        for st, batch in runs
    )
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
    assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(want_g))


def test_a_stored_teacher_keeps_only_its_entries_below_the_cut():
    top = TopK(
        jnp.array([[[3.0, 2.0, 1.0], [5.0, 4.0, 0.0]]]),
        jnp.array([[[7, 2, 4], [9, 8, 6]]], jnp.int32),
    )
    targets = jnp.array([[2, 3]])
    got_targets, weights, ref = within_vocab(5, targets, None, top)
    # position 0: ids 2 and 4 stay, 7 gets no weight; position 1: nothing below 5 -> not counted
    np.testing.assert_array_equal(weights, [[1.0, 0.0]])
    np.testing.assert_array_equal(got_targets, [[2, 3]])
    p = np.asarray(jax.nn.softmax(ref.values[0, 0]))
    np.testing.assert_allclose(p, [0.0, np.e / (np.e + 1), 1 / (np.e + 1)], rtol=1e-6)
    assert (np.asarray(ref.indices) < 5).all()
    # a target past the cut is not counted either
    assert within_vocab(3, targets, jnp.ones((1, 2)), top)[1].tolist() == [[1.0, 0.0]]
