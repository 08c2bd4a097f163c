"""The no-loss flag (`compiler.loss_mask`) in the training programs: models read clean ids, the
loss and its metrics are means over the counted target positions only (CE, distillation,
accuracy, agreement), for live and teacher-cached steps; a stage without `loss_mask` is the
unmasked program."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_ir import FAST_COMPILE, VOCAB, jit, large_cfg, program, small_cfg, stage, tandem_wiring

from compiler import loss_mask
from compiler.ir import ObjectiveIR, TeacherCacheIR, WiringIR
from compiler.nn import decoder_forward, init_params
from compiler.train import init_train_state, make_loss_fn, make_train_step, teacher
from tandem_dsl.model import MAX_VOCAB

LARGE = large_cfg(n_layers=1)
DRAFTER = small_cfg(name="drafter", n_layers=1)
SMALL = small_cfg(n_layers=1)
NONE = WiringIR(kind="none", query="drafter", memory=None, layer_map=(None,), projection=None)
WIRING = tandem_wiring(SMALL, LARGE, (1,))
PROG = program([LARGE, SMALL, DRAFTER], [WIRING, NONE])
T = 16

LM = stage(ObjectiveIR(kind="ce", model="large"), ["large"])
DISTIL = stage(
    ObjectiveIR(kind="distil", model="drafter", teacher="large", weight=0.3, temperature=2.0),
    ["drafter"],
)


def masked(st):
    return dataclasses.replace(st, loss_mask=True)


@pytest.fixture(scope="module")
def params():
    return init_params(PROG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, (4, T + 1)).astype(np.int32)


@pytest.fixture(scope="module")
def flags():
    """Which tokens carry NO_LOSS: about half, every row with some of each."""
    f = np.random.default_rng(1).random((4, T + 1)) < 0.5
    f[:, 1], f[:, 2] = True, False
    f[0, T], f[1, T] = True, False  # the last token of a row is a target only, no input
    return f


def test_the_flag_is_outside_every_token_id_and_round_trips():
    assert loss_mask.NO_LOSS > MAX_VOCAB and loss_mask.NO_LOSS < 2**31  # positive int32
    ids = np.array([0, 5, MAX_VOCAB - 1], np.int32)
    flagged = loss_mask.no_loss(ids)
    assert flagged.dtype == np.int32 and (flagged > 0).all()
    for x in (flagged, jnp.asarray(flagged)):
        np.testing.assert_array_equal(loss_mask.token_ids(x), ids)
        assert not np.asarray(loss_mask.counted(x)).any()
    assert np.asarray(loss_mask.counted(ids)).all()
    np.testing.assert_array_equal(loss_mask.token_ids(ids), ids)


def _reference(params, tokens, flags, st):
    """The loss and metrics written out: means over the counted target positions."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    w = ~flags[:, 1:]
    z = decoder_forward(params[st.objective.model], PROG.model(st.objective.model), inputs)[0]
    logp = jax.nn.log_softmax(z)
    nll = -np.take_along_axis(np.asarray(logp), targets[..., None], -1)[..., 0]
    out = {"ce": nll[w].mean(), "accuracy": (np.argmax(z, -1) == targets)[w].mean()}
    if st.objective.kind == "distil":
        zt = decoder_forward(params["large"], LARGE, inputs)[0]
        tau = st.objective.temperature
        soft = -np.sum(np.asarray(jax.nn.softmax(zt / tau) * logp), -1)
        out["distil"] = soft[w].mean()
        out["agreement"] = (np.argmax(z, -1) == np.argmax(zt, -1))[w].mean()
        out["loss"] = (1 - st.objective.weight) * out["ce"] + st.objective.weight * out["distil"]
    else:
        out["loss"] = out["ce"]
    return out


@pytest.mark.parametrize("st", [LM, DISTIL], ids=["lm", "distil"])
def test_the_loss_and_metrics_count_only_unflagged_targets(params, tokens, flags, st):
    loss_fn = jit(make_loss_fn(PROG, masked(st)))
    batch = np.where(flags, loss_mask.no_loss(tokens), tokens)
    loss, metrics = loss_fn(params, batch, None)
    want = _reference(params, tokens, flags, st)
    for name, value in want.items():
        np.testing.assert_allclose(metrics[name], value, rtol=2e-5, err_msg=name)
    # a flagged target may be any token: the loss does not see it; a counted one it does (the
    # last token of a row: a target and no model's input)
    other = batch.copy()
    other[0, T] = loss_mask.no_loss((tokens[0, T] + 1) % VOCAB)  # flagged
    assert float(loss_fn(params, other, None)[0]) == float(loss)
    other = batch.copy()
    other[1, T] = (tokens[1, T] + 1) % VOCAB  # counted
    assert abs(float(loss_fn(params, other, None)[0]) - float(loss)) > 1e-6


def test_without_flags_the_masked_program_computes_the_plain_loss(params, tokens):
    for st in (LM, DISTIL):
        plain = jit(make_loss_fn(PROG, st))(params, tokens, None)[1]
        mask = jit(make_loss_fn(PROG, masked(st)))(params, tokens, None)[1]
        for name in plain:
            np.testing.assert_allclose(mask[name], plain[name], rtol=1e-6, err_msg=name)


def test_a_batch_with_nothing_to_count_has_zero_loss_and_no_gradient(params, tokens):
    st = masked(LM)
    state = init_train_state(PROG, st, params)
    new, metrics = jit(make_train_step(PROG, st))(state, loss_mask.no_loss(tokens), None)
    assert float(metrics["loss"]) == 0.0 and float(metrics["grad_norm"]) == 0.0
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(new["params"]))


def test_a_tandem_step_reads_clean_ids_and_masks_its_loss(params, tokens, flags):
    st = masked(stage(ObjectiveIR(kind="distil", model="small"), ["small", "l2s"]))
    batch = np.where(flags, loss_mask.no_loss(tokens), tokens)
    rng = jax.random.PRNGKey(0)
    loss_fn = jit(make_loss_fn(PROG, st))
    loss, _ = loss_fn(params, batch, rng)
    # the flags of the inputs change nothing: the models read the clean ids
    inputs_flagged = batch.copy()
    inputs_flagged[:, 0] = loss_mask.no_loss(tokens[:, 0])
    np.testing.assert_array_equal(loss_fn(params, inputs_flagged, rng)[0], loss)
    # and all-counted differs from masked
    assert abs(float(loss_fn(params, tokens, rng)[0]) - float(loss)) > 1e-6


def test_a_teacher_cached_step_masks_as_the_live_one(params, tokens, flags, monkeypatch):
    """The store keeps the flagged tokens; the teacher pass reads them clean; a lossless store
    trains exactly as the live teacher, flags and all."""
    monkeypatch.setattr(teacher, "HIDDEN_DTYPE", jnp.float32)
    frozen = large_cfg(n_layers=1, trainable=False)
    cached = dataclasses.replace(
        masked(DISTIL), teacher_cache=TeacherCacheIR(batches=4, top_k=VOCAB)
    )
    prog = program([frozen, SMALL, DRAFTER], [WIRING, NONE], [cached])
    batch = jnp.asarray(np.where(flags, loss_mask.no_loss(tokens), tokens))
    out = jax.jit(teacher.make_teacher_pass(prog, cached), compiler_options=FAST_COMPILE)(
        params["large"], batch
    )
    stored = {"tokens": batch, **out}
    live = dataclasses.replace(cached, teacher_cache=None)

    def one_step(prog, st, b):
        state = init_train_state(prog, st, params)
        return jit(make_train_step(prog, st))(state, b, jax.random.PRNGKey(3))[1]

    got = one_step(prog, cached, stored)
    want = one_step(program([frozen, SMALL, DRAFTER], [WIRING, NONE], [live]), live, batch)
    for name in ("loss", "ce", "distil", "agreement", "accuracy", "grad_norm"):
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, err_msg=name)
    ref = _reference(params, tokens, flags, DISTIL)
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=2e-5)
