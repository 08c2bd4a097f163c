"""`tandemc compile`: IR from every shipped spec, artifacts, exports that run on CPU."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler import nn
from compiler.artifacts import load_exported
from compiler.build import build_ir, format_ir
from compiler.driver import compile_spec
from compiler.plan import param_counts
from compiler.shapes import abstract_params
from runtime.cli import main
from tandem_dsl import api

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "specs").glob("*.yaml"))
# Variants of the flagship whose programs are the flagship's but for a train step's input (a
# stored teacher batch, tested run in tests/compiler/test_cached_train_step.py), an init or
# memory prediction (lowered on the quickstart in `test_variants_are_spec_edits`): lowering
# them again costs CI ~45 s, so it runs with -m slow.
FLAGSHIP_VARIANTS = {"smollm2-cached", "smollm2-from-large"}
LOWERED = [
    pytest.param(p, marks=pytest.mark.slow) if p.stem in FLAGSHIP_VARIANTS else p for p in SHIPPED
]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_ir_of_every_shipped_spec(path):
    prog = build_ir(api.load(path))
    sizes = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in abstract_params(prog).items()}
    assert sizes == param_counts(prog)
    assert prog.name in format_ir(prog)


@pytest.mark.parametrize("path", LOWERED, ids=lambda p: p.stem)
def test_every_shipped_spec_lowers_and_exports(path):
    result = compile_spec(path, stop_after="lower", platforms=("cpu", "tpu", "cuda"))
    assert result.programs, "no programs"
    for c in result.programs.values():
        assert c.stablehlo.startswith("module") and c.exported["cpu,tpu,cuda"]
        exported = jax.export.deserialize(bytearray(c.exported["cpu,tpu,cuda"]))
        assert exported.platforms == ("cpu", "tpu", "cuda")
    # Run one deserialized program on CPU where the weights fit comfortably (< 20 M params).
    block = result.programs.get("large_block")
    if block is not None and sum(param_counts(result.ir).values()) < 20_000_000:
        exported = jax.export.deserialize(bytearray(block.exported["cpu,tpu,cuda"]))
        args = [jnp.zeros(a.shape, a.dtype) for a in exported.in_avals]
        call_args, call_kwargs = exported.in_tree.unflatten(args)
        logits = exported.call(*call_args, **call_kwargs)[0]
        assert logits.shape == exported.out_avals[0].shape and bool(jnp.isfinite(logits).all())


def test_compile_writes_artifacts_and_exports_run_on_cpu(tmp_path):
    spec = ROOT / "specs/quickstart.yaml"
    pieces = ["large_block", "small_step", "verify"]  # every program lowers in the test above
    result = compile_spec(spec, tmp_path, programs=pieces, platforms=("cpu", "tpu", "cuda"))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"spec.resolved.yaml", "plan.json", "ir.txt"} <= names
    for program in pieces:
        assert {f"{program}.stablehlo.mlir", f"{program}.cost.json"} <= names
        assert f"{program}.cpu-tpu-cuda.jax_exported" in names
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["models"]["large"]["params"] == result.ir.model("large").param_count
    assert plan["programs"]["large_block"]["flops"] > 0
    # XLA's count and the IR's formula agree within 10 %.
    c = plan["programs"]["large_block"]
    assert abs(c["flops"] - c["analytic_flops"]) < 0.1 * c["analytic_flops"]

    prog = result.ir
    params = nn.init_params(prog, jax.random.PRNGKey(0))
    small = prog.model("small")
    cache = nn.init_cache(small, prog.batch, prog.max_len)
    tokens, start = jnp.array([[65]], jnp.int32), jnp.array([3], jnp.int32)
    exported = load_exported(tmp_path / "small_step.cpu-tpu-cuda.jax_exported")
    logits = exported.call(params["small"], cache, tokens, start)[0]
    want, _ = nn.small_block(params["small"], small, prog.wiring_of("small"), cache, tokens, start)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        ["wiring.0.layers=small[:] <- large[-1]", "projections.l2s.per_layer=false"],
        ["projections.l2s.type=mlp", "+projections.l2s.hidden=64"],
        ["models.small.n_heads=4", "+models.small.n_kv_heads=2", "wiring.0.block=3"],
        ["~wiring.0.layers"],
        ["+wiring.0.predict=1.0"],
    ],
    ids=["final-layer-shared", "mlp-projection", "gqa-small-gamma3", "proportional", "predict"],
)
def test_variants_are_spec_edits(overrides):
    spec = ROOT / "specs/quickstart.yaml"
    result = compile_spec(spec, overrides=overrides, programs=["small_step"], stop_after="lower")
    assert "small_step" in result.programs


def test_cli_compile_stop_after_and_unknown_program(tmp_path, capsys):
    spec = str(ROOT / "specs/quickstart.yaml")
    assert main(["compile", spec, "--stop-after", "ir", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "small[0] <- large[3]" in out and "FLOPs/token" in out
    assert (tmp_path / "plan.json").exists()
    assert main(["compile", spec, "--program", "nope"]) == 2
    assert "unknown program" in capsys.readouterr().err
