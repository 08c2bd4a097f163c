"""One of several JAX processes (started by test_processes.py through `launch.py`, which sets
the README's environment variables): joins the others, trains the tiny program over every
process's devices, reads token batches per process, saves the trained state as a checkpoint
and restores one that a single process saved. Process 0 prints one JSON object on its last
line and writes the arrays the test compares.

    process_worker.py DOCS_DIR CHECKPOINTS_DIR

DOCS_DIR holds .ids documents for the token stream; CHECKPOINTS_DIR holds `by_one/` (saved
by one process) and receives `by_two/` (saved here), `by_two.npz` (the state it holds) and
`by_one_restored.npz` (what was restored from `by_one/`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
from jax.experimental.multihost_utils import process_allgather
from tiny import program, train_sharded

from compiler.ir import MeshIR
from compiler.nn import init_params
from compiler.sharding import Sharder, maybe_initialize_distributed
from compiler.train import init_train_state
from runtime import checkpoint
from runtime.data import TokenStream
from runtime.tokenizer import ByteTokenizer

MESH = (("data", 4), ("model", 2))
RESTORE_MESH = (("data", 2), ("model", 4))  # another mesh than the one that trained
STREAM = {"seq_len": 16, "batch": 8, "seed": 3, "window": 4}  # test_processes.py reads it too


def read_batches(docs_dir: Path, sh: Sharder) -> dict:
    """Global batches assembled from each process's rows: 6 in a row, and the last 3 again
    from the stream state saved after the 3rd (mid-window)."""
    docs = sorted(docs_dir.glob("*.ids"))
    batch = STREAM["batch"]
    rows = sh.local_batch_rows(batch)
    batch_sh = sh.tokens((batch, STREAM["seq_len"] + 1))

    def take(stream, n):
        return [
            process_allgather(sh.put_batch(next(stream), batch_sh, batch), tiled=True).tolist()
            for _ in range(n)
        ]

    stream = TokenStream(docs, ByteTokenizer(), **STREAM, rows=rows)
    first = take(stream, 3)
    state = stream.state()
    rest = take(stream, 3)
    resumed = take(TokenStream(docs, ByteTokenizer(), **STREAM, rows=rows, state=state), 3)
    return {
        "rows": process_allgather(rows).tolist(),
        "batches": first + rest,
        "resumed": resumed,
    }


def host_arrays(tree) -> dict[str, np.ndarray]:
    """Every leaf, gathered from all processes, by its key path."""
    leaves = jax.tree_util.tree_flatten_with_path(process_allgather(tree, tiled=True))[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def checkpoints(prog, state, folder: Path) -> dict:
    """Saves `state` (spread over both processes) to by_two/; restores by_one/ (saved by one
    process) onto RESTORE_MESH over both processes."""
    saved = checkpoint.save(
        folder / "by_two", 3, state, {"shape_hash": checkpoint.shape_hash(state)}
    )
    template = init_train_state(prog, prog.train[0], init_params(prog, jax.random.key(0)))
    other = dataclasses.replace(prog, mesh=MeshIR(axes=RESTORE_MESH))
    shardings = Sharder.for_run(other).train_state(other, other.train[0], template)
    restored, meta = checkpoint.restore(checkpoint.latest(folder / "by_one"), template, shardings)
    w_up = restored["params"]["small"]["layers_0"]["mlp"]["w_up"]
    gathered = host_arrays(state), host_arrays(restored)
    if jax.process_index() == 0:
        np.savez(folder / "by_two.npz", **gathered[0])
        np.savez(folder / "by_one_restored.npz", **gathered[1])
    return {
        "saved": saved.name,
        "restored_step": meta["step"],
        "restored_w_up": [
            str(w_up.sharding.spec),
            len(w_up.sharding.device_set),
            list(w_up.addressable_shards[0].data.shape),
        ],  # fmt: skip
    }


def main() -> None:
    maybe_initialize_distributed(os.environ.get("TANDEM_DISTRIBUTED") == "1")
    out: dict = {"processes": jax.process_count(), "devices": jax.device_count(),
                 "local_devices": jax.local_device_count()}  # fmt: skip
    prog = dataclasses.replace(program(), mesh=MeshIR(axes=MESH))
    out["train_4x2"], state = train_sharded(prog, init_params(prog, jax.random.key(0)))
    out["data"] = read_batches(Path(sys.argv[1]), Sharder.for_run(prog))
    out["checkpoints"] = checkpoints(prog, state, Path(sys.argv[2]))
    if jax.process_index() == 0:
        print(json.dumps(out))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
