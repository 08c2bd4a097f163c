"""The tiny Tandem program the scale-out workers train and decode, shared so that the
single-process run (`worker.py`) and the two-process run (`process_worker.py`) execute the
same code. Importing it does not start JAX's backends: each worker sets XLA_FLAGS first."""

from __future__ import annotations

import jax
import numpy as np

from compiler.ir import (
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
from compiler.sharded_programs import train_step_program
from compiler.sharding import Sharder
from compiler.train import init_train_state

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


def train_sharded(prog: ProgramIR, params) -> tuple[dict, dict]:
    """STEPS train steps on the program's mesh (every device of every process): what the
    tests compare, and the final train state."""
    stage = prog.train[0]
    sh = Sharder.for_run(prog)
    state = init_train_state(prog, stage, params)
    step, _, state_sh, batch_sh = train_step_program(prog, stage, sh, state,
                                                     compiler_options=FAST)  # fmt: skip
    state = sh.put(state, state_sh)
    rows = sh.local_batch_rows(stage.batch)  # each process places only its rows
    losses = []
    for i, batch in enumerate(batches(stage)):
        key = jax.random.fold_in(jax.random.key(1), i)
        state, m = step(state, sh.put_batch(batch[rows], batch_sh, stage.batch), key)
        losses.append(float(m["loss"]))
    w_up = state["params"]["small"]["layers_0"]["mlp"]["w_up"]
    mu = state["opt_state"][1].mu["small"]["layers_0"]["mlp"]["w_up"]
    info = {
        "losses": losses,
        "mesh": dict(sh.sizes),
        "w_up_spec": str(w_up.sharding.spec),
        "w_up_devices": len(w_up.sharding.device_set),
        "w_up_shard": list(w_up.addressable_shards[0].data.shape),
        "mu_spec": str(mu.sharding.spec),
        "frozen_wq_spec": str(state["frozen"]["large"]["layers_0"]["attn"]["wq"].sharding.spec),
        "batch_spec": str(batch_sh.spec),
    }
    return info, state
