"""Runs on 8 virtual CPU devices (started in a subprocess by the `multi` fixture of
conftest.py): sharded training and decoding against the single-device programs. Prints one
JSON object on the last line."""

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
from tiny import FAST, VOCAB, batches, program, train_sharded  # noqa: E402

from compiler.decode import make_generate  # noqa: E402
from compiler.ir import MeshIR, ProgramIR  # noqa: E402
from compiler.nn import init_params  # noqa: E402
from compiler.sharded_programs import generate_program  # noqa: E402
from compiler.sharding import Sharder  # noqa: E402
from compiler.train import init_train_state, make_train_step  # noqa: E402


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
        out[f"train_{data}x{model}"] = train_sharded(mesh_prog, params)[0]
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
