"""Scale-out: sharded training and decoding on 8 virtual CPU devices equal one device; bad
meshes and uncovered parameters are clear errors; a pod-sized spec plans on this machine.

The multi-device checks run once in a subprocess (`worker.py`, the `multi` fixture of
conftest.py): XLA_FLAGS must be set before JAX starts, and this process keeps its single
device for the other tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from compiler.build import build_ir
from compiler.driver import compile_spec
from compiler.ir import MeshIR
from compiler.shapes import abstract_params
from compiler.sharding import DEFAULT_RULES, Sharder, ShardingError, mesh_sizes
from runtime.cli import main
from tandem_dsl import api

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs/quickstart.yaml"
POD = ROOT / "specs/pod-7b-1b.yaml"


@pytest.mark.parametrize("mesh", ["8x1", "4x2", "2x4"])
def test_sharded_training_matches_one_device(multi, mesh):
    got = multi[f"train_{mesh}"]
    data, model = map(int, mesh.split("x"))
    assert multi["devices"] == 8 and got["mesh"] == {"data": data, "model": model}
    np.testing.assert_allclose(got["losses"], multi["train_single"], rtol=2e-5)
    # batch over data; the MLP width (and its Adam moments) over model; frozen params too
    assert got["batch_spec"] == "P('data',)"
    assert got["w_up_spec"] == got["mu_spec"] == "P(None, 'model')"
    assert got["w_up_devices"] == 8 and got["w_up_shard"] == [16, 32 // model]
    assert got["frozen_wq_spec"] == "P(None, 'model')"


@pytest.mark.parametrize("model", [2, 4])
def test_sharded_tandem_speed_equals_one_device(multi, model):
    got = multi[f"decode_model{model}"]
    assert got["mesh"] == {"data": 8 // model, "model": model}
    assert got["rows"] == multi["decode_single"]
    assert all(len(r) == 12 for r in got["rows"])
    assert got["large_wq_spec"] == "P(None, 'model')"
    # the whole-generation loop is one program whose K/V buffers are per-device shards
    assert got["has_while_loop"] and got["cache_shard_in_hlo"], got["cache_shard"]


def test_impossible_mesh_names_the_device_count(capsys):
    with pytest.raises(ShardingError, match="needs 6 devices, but there are 8"):
        mesh_sizes(MeshIR(axes=(("data", 3), ("model", 2))), 8)
    with pytest.raises(ShardingError, match="multiple of 3 devices, but there are 8"):
        mesh_sizes(MeshIR(axes=(("data", -1), ("model", 3))), 8)
    assert mesh_sizes(MeshIR(axes=(("data", -1), ("model", 2))), 8) == {"data": 4, "model": 2}
    spec = str(QUICKSTART)
    args = ["compile", spec, "+mesh={data: 3, model: 2}", "--devices", "4", "--stop-after", "ir"]
    assert main(args) == 2
    assert "needs 6 devices, but there are 4" in capsys.readouterr().err


def test_unmatched_parameter_is_an_error(tmp_path, capsys):
    spec = tmp_path / "no-mlp-rule.yaml"
    rules = [r for r in DEFAULT_RULES if r[0] != "mlp"]
    lines = "".join(f"  - [{lg}, {m or 'null'}]\n" for lg, m in rules)
    spec.write_text(QUICKSTART.read_text() + "sharding:\n" + lines)
    with pytest.raises(ShardingError, match=r"parameter large/layers_0/mlp/w_\w+: .*'mlp'.* more"):
        compile_spec(spec, stop_after="ir")
    assert main(["compile", str(spec), "--stop-after", "ir"]) == 2
    assert "matches no sharding rule" in capsys.readouterr().err


def test_indivisible_dimensions_are_replicated_and_reported():
    prog = build_ir(api.load(QUICKSTART))  # small: 2 heads
    sh = Sharder(AbstractMesh((1, 8), ("data", "model")), DEFAULT_RULES)
    shardings = sh.params(abstract_params(prog))
    assert shardings["small"]["layers_0"]["attn"]["wq"].spec == P()  # heads=2 vs model=8
    assert shardings["large"]["layers_0"]["mlp"]["w_up"].spec == P(None, "model")
    assert any("small/layers_0/attn/wq: heads=2 is not divisible by model=8" in n for n in sh.notes)


def test_pod_spec_plans_on_abstract_devices():
    plan = compile_spec(POD, stop_after="ir").plan["sharding"]
    assert plan["devices"] == 64 and plan["abstract"] and plan["mesh"] == {"data": 8, "model": 8}
    per_device = plan["device_bytes"]
    large_bytes = 7_241_732_096 * 2  # bfloat16
    assert large_bytes / 8 <= per_device["params:large"] < large_bytes / 7
    assert per_device["kv_cache:large"] == 8 * 4096 * 32 * 2 * 8 * 128 * 2 // 64
    assert not plan["notes"]


def test_the_process_count_and_id_come_from_the_environment(monkeypatch):
    from compiler import sharding
    from compiler.errors import InputError

    env = {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1", "JAX_COORDINATOR_ADDRESS": "h:1"}
    assert sharding.distributed_args(env) == {"num_processes": 2, "process_id": 1}
    assert sharding.distributed_args({}) == {}  # left to JAX's cluster detection
    with pytest.raises(InputError, match="JAX_PROCESS_ID='one'"):
        sharding.distributed_args({"JAX_PROCESS_ID": "one"})
    called = {}
    monkeypatch.setattr(sharding.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(sharding.jax.distributed, "initialize", lambda **kw: called.update(kw))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert sharding.maybe_initialize_distributed(True) and called == {
        "num_processes": 2,
        "process_id": 1,
    }
