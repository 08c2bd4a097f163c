"""Runs on 8 virtual CPU devices (started by test_scale.py in a subprocess): sharded training
and decoding against the single-device programs. Prints one JSON object on the last line."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from compiler.decode import make_generate  # noqa: E402
from compiler.ir import (  # noqa: E402
    DecodeIR,
    DecoderIR,
    MeshIR,
    ObjectiveIR,
    OptimizerIR,
    ProgramIR,
    ProjectionIR,
    TrainStageIR,
    WiringIR,
)
from compiler.nn import init_params  # noqa: E402
from compiler.sharded_programs import generate_program, train_step_program  # noqa: E402
from compiler.sharding import Sharder  # noqa: E402
from compiler.train import init_train_state, make_train_step  # noqa: E402

# XLA:CPU at -O0 compiles about 2x faster; both sides of every comparison use it.
FAST = {"xla_backend_optimization_level": 0}
VOCAB, MAX_LEN, STEPS = 64, 64, 3


def program(axes=(("data", -1), ("model", 1))) -> ProgramIR:
    """A tiny Tandem pair whose heads, kv_heads, MLP width and vocab divide by 4."""
    large = DecoderIR(name="large", vocab=VOCAB, d_model=32, n_layers=2, n_heads=4,
                      n_kv_heads=4, d_ff=64, max_len=MAX_LEN)  # fmt: skip
    small = DecoderIR(name="small", vocab=VOCAB, d_model=16, n_layers=2, n_heads=4,
                      n_kv_heads=4, d_ff=32, max_len=MAX_LEN)  # fmt: skip
    proj = ProjectionIR(name="l2s", kind="linear", d_in=32, d_out=16)
    wiring = WiringIR(kind="tandem", query="small", memory="large", layer_map=(1, 2),
                      projection=proj)  # fmt: skip
    stage = TrainStageIR(
        name="tandem",
        objective=ObjectiveIR(kind="distil", model="small", teacher="large", weight=0.5),
        trainable=("small", "l2s"),
        optimizer=OptimizerIR(lr=1e-2, schedule="constant", weight_decay=0.1),
        steps=STEPS, batch=8, seq_len=16,
    )  # fmt: skip
    decode = DecodeIR(policy="speed", target="large", draft="small", gamma=3, max_new_tokens=12)
    return ProgramIR(name="scale", models=(large, small), wirings=(wiring,), train=(stage,),
                     decode=decode, batch=4, max_len=MAX_LEN, mesh=MeshIR(axes=axes))  # fmt: skip


def batches(stage: TrainStageIR) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, VOCAB, (stage.batch, stage.seq_len + 1), np.int32)
            for _ in range(STEPS)]  # fmt: skip


def train_single(prog: ProgramIR, params) -> list[float]:
    stage = prog.train[0]
    params = jax.tree.map(jnp.copy, params)  # the step donates its state
    state = init_train_state(prog, stage, params)
    step = jax.jit(make_train_step(prog, stage), donate_argnums=0, compiler_options=FAST)
    losses = []
    for i, batch in enumerate(batches(stage)):
        state, m = step(state, jnp.asarray(batch), jax.random.fold_in(jax.random.key(1), i))
        losses.append(float(m["loss"]))
    return losses


def train_sharded(prog: ProgramIR, params) -> dict:
    stage = prog.train[0]
    sh = Sharder.for_run(prog)
    state = init_train_state(prog, stage, params)
    step, _, state_sh, batch_sh = train_step_program(prog, stage, sh, state,
                                                     compiler_options=FAST)  # fmt: skip
    state = sh.put(state, state_sh)
    losses = []
    for i, batch in enumerate(batches(stage)):
        key = jax.random.fold_in(jax.random.key(1), i)
        state, m = step(state, sh.put(batch, batch_sh), key)
        losses.append(float(m["loss"]))
    w_up = state["params"]["small"]["layers_0"]["mlp"]["w_up"]
    mu = state["opt_state"][1].mu["small"]["layers_0"]["mlp"]["w_up"]
    return {
        "losses": losses,
        "mesh": dict(sh.sizes),
        "w_up_spec": str(w_up.sharding.spec),
        "w_up_devices": len(w_up.sharding.device_set),
        "w_up_shard": list(w_up.addressable_shards[0].data.shape),
        "mu_spec": str(mu.sharding.spec),
        "frozen_wq_spec": str(state["frozen"]["large"]["layers_0"]["attn"]["wq"].sharding.spec),
        "batch_spec": str(batch_sh.spec),
    }


def prompts(batch: int, p_max: int = 8):
    rng = np.random.default_rng(7)
    toks = rng.integers(0, VOCAB, (batch, p_max), np.int32)
    lens = np.array([8, 5, 3, 7][:batch], np.int32)
    toks = np.where(np.arange(p_max)[None] < lens[:, None], toks, 0).astype(np.int32)
    return toks, lens


def rows(result) -> list[list[int]]:
    toks, lens = np.asarray(result.tokens), np.asarray(result.lengths)
    return [toks[b, : lens[b]].tolist() for b in range(toks.shape[0])]


def decode_single(prog: ProgramIR, params) -> list[list[int]]:
    fn = make_generate(prog, prog.decode, compiler_options=FAST)
    toks, lens = prompts(prog.batch)
    return rows(fn(params, jnp.asarray(toks), jnp.asarray(lens), jax.random.key(0)))


def decode_sharded(prog: ProgramIR, params) -> dict:
    sh = Sharder.for_run(prog)
    fn = generate_program(prog, prog.decode, sh, compiler_options=FAST)
    toks, lens = prompts(prog.batch)
    placed = sh.put(params, sh.params(params))
    args = (placed, toks, lens, jax.random.key(0))
    compiled = fn.lower(*args).compile()
    hlo = compiled.as_text()
    result = compiled(*args)
    # Cache slots: prompt buffer + max_new + gamma + 1; K/V [B, S, kv_heads, head_dim]
    d = prog.decode
    s = toks.shape[1] + d.max_new_tokens + d.gamma + 1
    b = prog.batch // sh.sizes["data"]
    local = f"f32[{b},{s},{4 // sh.sizes['model']},8]"  # the large model's cache shard
    wq = placed["large"]["layers_0"]["attn"]["wq"]
    return {
        "rows": rows(result),
        "mesh": dict(sh.sizes),
        "cache_shard_in_hlo": local in hlo,
        "cache_shard": local,
        "has_while_loop": " while(" in hlo,
        "large_wq_spec": str(wq.sharding.spec),
    }


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    out: dict = {"devices": len(jax.devices())}
    start = time.perf_counter()
    prog = program()
    params = init_params(prog, jax.random.key(0))
    out["train_single"] = train_single(prog, params)
    for data, model in ((8, 1), (4, 2), (2, 4)):
        mesh_prog = dataclasses.replace(prog, mesh=MeshIR(axes=(("data", -1), ("model", model))))
        out[f"train_{data}x{model}"] = train_sharded(mesh_prog, params)
    out["train_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    out["decode_single"] = decode_single(prog, params)
    for model in (2, 4):
        mesh_prog = dataclasses.replace(prog, mesh=MeshIR(axes=(("data", -1), ("model", model))))
        out[f"decode_model{model}"] = decode_sharded(mesh_prog, params)
    out["decode_seconds"] = time.perf_counter() - start
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
