"""The teacher cache's compiled side: a train step on a stored batch (the frozen model's top-k
logits and wired hiddens) computes what the live step computes, when nothing is lost in
storing (k = vocab, float32 hiddens); bfloat16 hiddens stay close; feature noise acts only
in training; a stage whose cache could go stale is refused."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_ir import FAST_COMPILE, VOCAB, large_cfg, program, small_cfg, stage, tandem_wiring

from compiler.errors import IRInvariantError
from compiler.ir import ObjectiveIR, TeacherCacheIR
from compiler.nn import init_params
from compiler.train import init_train_state, make_eval_step, make_train_step, teacher
from compiler.train.losses import TopK, soft_cross_entropy

LARGE = large_cfg(trainable=False)
SMALL = small_cfg()
DRAFTER = small_cfg(name="drafter")
WIRINGS = [tandem_wiring(SMALL, LARGE, (1, 3))]
FULL = TeacherCacheIR(batches=4, top_k=VOCAB)


def _stage(model: str, trainable, cache=FULL):
    obj = ObjectiveIR(kind="distil", model=model, teacher="large", weight=0.5)
    return dataclasses.replace(stage(obj, trainable), teacher_cache=cache)


TANDEM = _stage("small", ["small", "l2s"])
DRAFT = _stage("drafter", ["drafter"])
PROG = program([LARGE, SMALL, DRAFTER], WIRINGS, [TANDEM, DRAFT])


@pytest.fixture(scope="module")
def params():
    return init_params(PROG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (4, 17)), jnp.int32)


def _jit(fn):
    return jax.jit(fn, compiler_options=FAST_COMPILE)


def _stored(prog, st, params, tokens):
    out = _jit(teacher.make_teacher_pass(prog, st))(params["large"], tokens)
    return {"tokens": tokens, **out}


def _one_step(prog, st, params, batch):
    state = init_train_state(prog, st, params)
    new, metrics = _jit(make_train_step(prog, st))(state, batch, jax.random.PRNGKey(3))
    return new["params"], metrics


@pytest.mark.parametrize("st", [TANDEM, DRAFT], ids=["tandem", "drafter"])
def test_a_lossless_store_trains_exactly_as_the_live_teacher(st, params, tokens, monkeypatch):
    monkeypatch.setattr(teacher, "HIDDEN_DTYPE", jnp.float32)
    stored = _stored(PROG, st, params, tokens)
    # every layer a wiring reads, for both stages
    assert sorted(k for k in stored if k.startswith("hidden_")) == ["hidden_1", "hidden_3"]
    live = dataclasses.replace(st, teacher_cache=None)
    want_params, want = _one_step(program([LARGE, SMALL, DRAFTER], WIRINGS, [live]), live,
                                  params, tokens)  # fmt: skip
    got_params, got = _one_step(PROG, st, params, stored)
    for name in ("loss", "ce", "distil", "agreement", "grad_norm"):
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_hiddens_and_top_k_stay_close_to_the_live_loss(params, tokens):
    st = dataclasses.replace(TANDEM, teacher_cache=TeacherCacheIR(batches=4, top_k=16))
    prog = program([LARGE, SMALL, DRAFTER], WIRINGS, [st])
    stored = _stored(prog, st, params, tokens)
    assert stored["hidden_1"].dtype == jnp.bfloat16
    assert stored["top_values"].shape == (4, 16, 16)
    _, got = _one_step(prog, st, params, stored)
    live = dataclasses.replace(st, teacher_cache=None)
    _, want = _one_step(program([LARGE, SMALL, DRAFTER], WIRINGS, [live]), live, params, tokens)
    np.testing.assert_allclose(got["ce"], want["ce"], rtol=1e-2)
    np.testing.assert_allclose(got["agreement"], want["agreement"])


def test_top_k_distillation_renormalises_over_the_k_logits():
    teacher_logits = jnp.array([[[3.0, 1.0, 0.0, -2.0]]])
    student = jnp.array([[[0.5, 0.2, -0.1, 0.3]]])
    values, indices = jax.lax.top_k(teacher_logits, 2)
    got = soft_cross_entropy(student, TopK(values, indices))
    p = jax.nn.softmax(jnp.array([3.0, 1.0]))
    logp = jax.nn.log_softmax(student[0, 0])
    np.testing.assert_allclose(got, -(p[0] * logp[0] + p[1] * logp[1]), rtol=1e-6)


def test_feature_noise_acts_in_training_only(params, tokens):
    noisy = dataclasses.replace(TANDEM, teacher_cache=TeacherCacheIR(batches=4, noise=0.2))
    prog = program([LARGE, SMALL, DRAFTER], WIRINGS, [noisy])
    stored = _stored(prog, noisy, params, tokens)
    _, with_noise = _one_step(prog, noisy, params, stored)
    quiet = dataclasses.replace(noisy, teacher_cache=TeacherCacheIR(batches=4))
    _, without = _one_step(program([LARGE, SMALL, DRAFTER], WIRINGS, [quiet]), quiet, params,
                           stored)  # fmt: skip
    assert abs(float(with_noise["loss"]) - float(without["loss"])) > 1e-4
    # evaluation runs the live model on plain tokens: the cache and its noise play no part
    state = init_train_state(prog, noisy, params)
    a = _jit(make_eval_step(prog, noisy))(state, tokens)
    b = _jit(make_eval_step(prog, dataclasses.replace(noisy, teacher_cache=None)))(state, tokens)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)


def test_a_cache_that_could_go_stale_is_refused():
    trains_large = dataclasses.replace(TANDEM, trainable=("small", "l2s", "large"))
    with pytest.raises(IRInvariantError, match="stale"):
        init_train_state(program([large_cfg(), SMALL, DRAFTER], WIRINGS, [trains_large]),
                         trains_large, init_params(PROG, jax.random.PRNGKey(0)))  # fmt: skip
    other = large_cfg(name="other", trainable=False)
    two = _stage("small", ["small", "l2s"])
    two = dataclasses.replace(two, objective=dataclasses.replace(two.objective, teacher="other"))
    with pytest.raises(IRInvariantError, match="two models"):
        teacher.make_teacher_pass(program([LARGE, other, SMALL, DRAFTER], WIRINGS, [two]), two)
