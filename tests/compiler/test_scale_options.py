"""train[i].scale: remat, micro-batches, scanned layers and fused attention change how a step
runs, not what it computes; the compile plan's memory estimate follows XLA's figures."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from tiny_ir import VOCAB, jit, large_cfg, program, small_cfg, stage, tandem_wiring

from compiler.ir import ObjectiveIR, ScaleIR
from compiler.memory import activation_bytes
from compiler.nn import init_params
from compiler.sharding import Sharder
from compiler.train import init_train_state, make_train_step
from runtime.stage_config import stage_config
from tandem_dsl import api

LARGE = large_cfg()  # 3 layers, grouped kv heads
SMALL = small_cfg()
WIRING = tandem_wiring(SMALL, LARGE, (None, 3))  # one causal layer, one Tandem layer
DRAFTER = small_cfg(name="drafter")
PROG = program([LARGE, SMALL, DRAFTER], [WIRING])
# SGD: a step moves the weights by lr * gradient, so comparing moves compares gradients
# (Adam's first step would magnify rounding in near-zero gradients to +-lr)
STAGES = {
    "lm": stage(ObjectiveIR(kind="ce", model="large"), ["large"], kind="sgd"),
    "tandem": stage(ObjectiveIR(kind="distil", model="small"), ["small", "l2s"], kind="sgd"),
    "drafter": stage(
        ObjectiveIR(kind="distil", model="drafter", teacher="large"), ["drafter"], kind="sgd"
    ),
}
SCALES = {  # "all" covers remat full and micro-batches
    "remat-dots": ScaleIR(remat="dots"),
    "scan": ScaleIR(scan_layers=True),
    "fused": ScaleIR(attention="fused"),
    "all": ScaleIR(remat="full", grad_accum=4, scan_layers=True, attention="fused"),
}


def _step(prog, st, params, batch):
    state = init_train_state(prog, st, params)
    return jit(make_train_step(prog, st))(state, batch, jax.random.PRNGKey(1))


# a distilled drafter runs the lm stack's code with a teacher forward on top: slow only
@pytest.mark.parametrize(
    "stage_name", ["lm", "tandem", pytest.param("drafter", marks=pytest.mark.slow)]
)
def test_scale_options_compute_the_same_step(stage_name):
    params = init_params(PROG, jax.random.PRNGKey(0))
    batch = np.random.default_rng(0).integers(0, VOCAB, (4, 17)).astype(np.int32)
    base = STAGES[stage_name]
    want_state, want = _step(PROG, base, params, batch)
    for name, scale in SCALES.items():
        state, got = _step(PROG, dataclasses.replace(base, scale=scale), params, batch)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=2e-5, err_msg=f"{name}: {key}")
        moved, want_moved = jax.tree.leaves(state["params"]), jax.tree.leaves(want_state["params"])
        for a, b in zip(moved, want_moved, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=name)


def test_micro_batches_are_strided_rows():
    """Micro-batch i is rows i, i + n, ...: the accumulated step equals the full batch even
    when the rows differ a lot (a wrong split would still average to the same mean only if
    every micro-batch saw the same rows)."""
    params = init_params(PROG, jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    batch = rng.integers(0, VOCAB, (4, 17)).astype(np.int32)
    batch[:2] = 0  # two constant rows: easy; two random rows: hard
    base = STAGES["lm"]
    _, want = _step(PROG, base, params, batch)
    _, got = _step(PROG, dataclasses.replace(base, scale=ScaleIR(grad_accum=4)), params, batch)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-4)


def _xla_temp_bytes(prog, st, params, batch) -> int:
    state = init_train_state(prog, st, params)
    step = jax.jit(make_train_step(prog, st), donate_argnums=0)
    compiled = step.lower(state, batch, jax.random.PRNGKey(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_estimate_follows_xla():
    """The estimate (activations + gradients) against XLA:CPU's temp bytes, where attention
    dominates: within -40% / +50%, and ordered as XLA orders them. Remat is compared with
    scanned layers: XLA:CPU schedules unrolled recomputation early (compiler/memory.py)."""
    big = large_cfg(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=256, max_len=256)
    prog = program([big], max_len=256)
    base = stage(ObjectiveIR(kind="ce", model="large"), ["large"], seq_len=256, batch=8)
    params = init_params(prog, jax.random.PRNGKey(0))
    batch = np.zeros((8, 257), np.int32)
    sh = Sharder.for_compile(prog)
    grads = sum(x.nbytes for x in jax.tree.leaves(params["large"]))
    rows = {}
    for scale in (ScaleIR(), ScaleIR(remat="dots", scan_layers=True),
                  ScaleIR(remat="full", scan_layers=True), ScaleIR(grad_accum=4)):  # fmt: skip
        st = dataclasses.replace(base, scale=scale)
        estimate = activation_bytes(prog, st, sh) + grads
        rows[scale] = (estimate, _xla_temp_bytes(prog, st, params, batch))
    for scale, (estimate, xla) in rows.items():
        assert 0.6 < estimate / xla < 1.5, (scale, estimate, xla)
    order = sorted(rows, key=lambda s: rows[s][0])
    assert order == sorted(rows, key=lambda s: rows[s][1])


def test_scale_settings_are_not_part_of_the_result():
    """A stage may resume, or be reused, after its scale settings changed (to fit memory)."""
    path = "specs/quickstart.yaml"
    spec = api.load(path)
    other = api.load(path, ["train.0.scale.remat=full", "train.0.scale.grad_accum=2"])
    assert other.train[0].scale.remat == "full"
    from compiler.build import build_ir

    prog, other_prog = build_ir(spec), build_ir(other)
    assert other_prog.train[0].scale == ScaleIR(remat="full", grad_accum=2)
    assert stage_config(spec, prog, 0) == stage_config(other, other_prog, 0)
