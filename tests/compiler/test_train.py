"""Training programs: frozen models get no gradient and no optimizer state; every
objective's loss goes down on a tiny fixed batch; eval metrics; schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_ir import VOCAB, jit, large_cfg, program, replace, small_cfg, stage, tandem_wiring

from compiler.errors import IRInvariantError
from compiler.ir import ObjectiveIR, OptimizerIR, WiringIR
from compiler.nn import decoder_forward, init_params
from compiler.train import (
    init_train_state,
    make_eval_step,
    make_loss_fn,
    make_schedule,
    make_train_step,
)

LARGE = large_cfg(n_layers=1)
SMALL = small_cfg(n_layers=1)
DRAFTER = small_cfg(name="drafter", n_layers=1, mlp="gelu")
WIRING = tandem_wiring(SMALL, LARGE, (1,))
NONE = WiringIR(kind="none", query="drafter", memory=None, layer_map=(None,), projection=None)
PROG = program([LARGE, SMALL, DRAFTER], [WIRING, NONE])
T = 16

STAGES = {
    "lm-large": stage(ObjectiveIR(kind="ce", model="large"), ["large"]),
    "tandem-ce": stage(ObjectiveIR(kind="ce", model="small"), ["small", "l2s"]),
    "tandem-distil": stage(ObjectiveIR(kind="distil", model="small"), ["small", "l2s"]),
}
DRAFTER_DISTIL = stage(
    ObjectiveIR(kind="distil", model="drafter", teacher="large", weight=0.3, temperature=2.0),
    ["drafter"],
)


@pytest.fixture(scope="module")
def params():
    return init_params(PROG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def batch():
    # a tiny fixed batch with some structure (a repeated random motif per row)
    rng = np.random.default_rng(0)
    motif = rng.integers(0, VOCAB, size=(4, 5))
    return jnp.asarray(np.tile(motif, (1, 4))[:, : T + 1], jnp.int32)


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def test_frozen_large_has_no_optimizer_state(params):
    st = init_train_state(PROG, STAGES["tandem-ce"], params)
    assert set(st["params"]) == {"small", "l2s"}
    assert set(st["frozen"]) == {"large", "drafter"}
    opt_paths = _paths(st["opt_state"])
    assert opt_paths and not any("'large'" in p or "'drafter'" in p for p in opt_paths)
    n_trainable = sum(x.size for x in jax.tree.leaves(st["params"]))
    n_opt = sum(x.size for x in jax.tree.leaves(st["opt_state"]) if x.ndim > 0)
    assert n_opt == 2 * n_trainable  # adam mu and nu, nothing for frozen models


def test_frozen_large_receives_no_gradient(params, batch):
    """A gradient taken w.r.t. ALL params is exactly zero for the frozen large model,
    although the large model does change the loss (so the check can fail)."""
    loss_fn = make_loss_fn(PROG, STAGES["tandem-ce"])
    rng = jax.random.PRNGKey(1)

    @jit
    def check(p, p_shifted):
        grads = jax.grad(lambda p: loss_fn(p, batch, rng)[0])(p)
        norms = {k: sum(jnp.sum(g * g) for g in jax.tree.leaves(v)) for k, v in grads.items()}
        return norms, loss_fn(p, batch, rng)[0] - loss_fn(p_shifted, batch, rng)[0]

    shifted = dict(params, large=jax.tree.map(lambda x: x * 1.5, params["large"]))
    norms, delta = jax.tree.map(float, check(params, shifted))
    assert norms["large"] == 0.0 and norms["drafter"] == 0.0
    assert norms["small"] > 0 and norms["l2s"] > 0
    assert abs(delta) > 1e-4  # the large model's hiddens do feed the loss


@pytest.mark.parametrize("name", sorted(STAGES))
def test_loss_decreases(params, batch, name):
    st = STAGES[name]
    state = init_train_state(PROG, st, params)
    step = jit(make_train_step(PROG, st))
    frozen_before = jax.tree.map(np.asarray, state["frozen"])
    losses = []
    for i in range(30):
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses
    assert int(state["step"]) == 30
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(state["frozen"]), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    if st.objective.kind == "distil":
        assert {"ce", "distil", "agreement"} <= set(metrics)


def test_memory_prediction_trains_and_reports_its_loss(params, batch):
    """A wiring with memory prediction: the regression loss is a metric, its weighted sum
    with the token loss is the loss, and both go down; the predicting maps get gradients."""
    wiring = tandem_wiring(SMALL, LARGE, (1,), predict=0.5, depth=3)
    prog = program([LARGE, SMALL, DRAFTER], [wiring, NONE])
    st = stage(ObjectiveIR(kind="distil", model="small"), ["small", "l2s"])
    p = init_params(prog, jax.random.PRNGKey(0))
    assert set(p["l2s"]["predict"]) == {"layers_0"}
    key = jax.random.PRNGKey(1)
    loss, metrics = jit(make_loss_fn(prog, st))(p, batch, key)
    assert float(metrics["prediction"]) > 0.1
    unweighted = program([LARGE, SMALL, DRAFTER], [replace(wiring, predict=0.0), NONE])
    token_loss, _ = jit(make_loss_fn(unweighted, st))(p, batch, key)  # same model, weight 0
    np.testing.assert_allclose(
        float(loss), float(token_loss) + 0.5 * float(metrics["prediction"]), rtol=1e-5
    )
    grads = jax.grad(lambda q: make_loss_fn(prog, st)(q, batch, jax.random.PRNGKey(1))[0])(p)
    assert float(jnp.abs(grads["l2s"]["predict"]["layers_0"]["w"]).max()) > 0
    state = init_train_state(prog, st, p)
    step = make_train_step(prog, st)
    first = None
    for i in range(30):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        first = first or {k: float(m[k]) for k in ("loss", "prediction")}
    assert float(m["loss"]) < 0.7 * first["loss"]
    assert float(m["prediction"]) < 0.8 * first["prediction"]


def test_drafter_distillation_loss_is_the_formula(params, batch):
    """Independent drafter (wiring kind none) distilled from the large model:
    (1 - w) * CE + w * CE(softmax(z_L / τ), p_S), on the drafter's plain causal logits."""
    st = DRAFTER_DISTIL
    loss_fn = make_loss_fn(PROG, st)

    @jit
    def both(p):
        loss, metrics = loss_fn(p, batch, None)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        z_s = decoder_forward(p["drafter"], DRAFTER, inputs)[0]
        z_l = decoder_forward(p["large"], LARGE, inputs)[0]
        logp = jax.nn.log_softmax(z_s)
        ce = -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))
        soft = -jnp.mean(jnp.sum(jax.nn.softmax(z_l / 2.0) * logp, -1))
        return loss, metrics, 0.7 * ce + 0.3 * soft, ce

    loss, metrics, want, ce = both(params)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["ce"]), float(ce), rtol=1e-6)
    state = init_train_state(PROG, st, params)
    assert set(state["params"]) == {"drafter"}  # the teacher is frozen: a target only


def test_eval_metrics(params, batch):
    st = STAGES["tandem-ce"]
    state = init_train_state(PROG, st, params)
    near, far = make_eval_step(PROG, st), make_eval_step(PROG, st, block=8)
    near, far = jit(lambda s, b: (near(s, b), far(s, b)))(state, batch)
    assert {"loss", "ce", "accuracy", "agreement"} <= set(near)
    assert 0.0 <= float(near["accuracy"]) <= 1.0
    assert 0.0 <= float(near["agreement"]) <= 1.0
    # a larger evaluation block length is a different frontier, hence a different loss
    assert float(far["loss"]) != float(near["loss"])
    lm = STAGES["lm-large"]
    shapes = jax.eval_shape(make_eval_step(PROG, lm), init_train_state(PROG, lm, params), batch)
    assert "accuracy" in shapes and "agreement" not in shapes  # no teacher, no memory model


def test_stage_errors(params):
    """An IR built in Python that breaks a stage's invariants (the spec checks report each
    one with its location first) is a bug of its builder."""
    with pytest.raises(IRInvariantError, match="no gradient"):
        init_train_state(PROG, stage(ObjectiveIR(kind="ce", model="drafter"), ["large"]), params)
    with pytest.raises(IRInvariantError, match="needs a teacher"):
        init_train_state(
            PROG, stage(ObjectiveIR(kind="distil", model="drafter"), ["drafter"]), params
        )
    with pytest.raises(IRInvariantError, match="not a model"):
        init_train_state(PROG, stage(ObjectiveIR(kind="ce", model="nope"), ["nope"]), params)


def test_schedules():
    opt = OptimizerIR(lr=1.0, warmup=4, schedule="cosine")
    lr = make_schedule(opt, 104)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 3, 4, 54, 104, 500)],
                               [0.25, 1.0, 1.0, 0.55, 0.1, 0.1], atol=1e-6)  # fmt: skip
    lin = make_schedule(OptimizerIR(lr=2.0, warmup=0, schedule="linear"), 10)
    np.testing.assert_allclose([float(lin(s)) for s in (0, 5, 10)], [2.0, 1.1, 0.2], atol=1e-6)
    const = make_schedule(OptimizerIR(lr=0.5, warmup=2, schedule="constant"), 10)
    np.testing.assert_allclose([float(const(s)) for s in (0, 1, 2, 9)], [0.25, 0.5, 0.5, 0.5])
