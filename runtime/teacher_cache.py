"""The teacher cache's store: a stage's frozen model run once over its training batches, its
outputs (`compiler.train.teacher`) kept in the run directory and read by the training steps.

Layout: `<run dir>/teacher_cache/<key>/chunk_<i>/`, each holding CHUNK consecutive batches as
one `.npy` file per array (memory-mapped when read) and `position.json`, the data position
after them. A chunk is written under a temporary name and renamed into place, so filling
resumes after a kill from the last whole chunk. The key hashes everything the outputs depend
on: the model's weights, the stored layers and k, and the data stream (documents, tokenizer,
seed, batch, seq_len); stages that agree on them share the store. A stage needing more
batches than the store holds extends it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from compiler.ir import ProgramIR, TrainStageIR
from compiler.train.teacher import (
    cached_model,
    make_teacher_pass,
    stored_batch_shapes,
    stored_k,
    stored_layers,
)

from .errors import UserError

CHUNK = 16  # batches per chunk folder: the unit of resume


def _on_disk(dtype) -> np.dtype:
    """How an array is saved: bfloat16 as its 16 bits (`.npy` has no bfloat16)."""
    return np.dtype(np.uint16) if dtype == jnp.bfloat16 else np.dtype(dtype)


def _digest(params) -> str:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


class TeacherStore:
    """One store folder: `filled` batches so far, each a stored batch (numpy)."""

    def __init__(self, folder: Path, shapes: dict):
        self.folder = folder
        self.shapes = shapes
        self.batch_bytes = sum(
            int(np.prod(s.shape)) * s.dtype.itemsize for s in self.shapes.values()
        )
        self._open: dict[int, dict] = {}

    def chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk_*")) if self.folder.exists() else []

    @property
    def filled(self) -> int:
        return len(self.chunks()) * CHUNK

    def position(self) -> dict | None:
        """The data position after the last whole chunk (None: nothing stored yet)."""
        chunks = self.chunks()
        return json.loads((chunks[-1] / "position.json").read_text()) if chunks else None

    def write_chunk(self, index: int, batches: list[dict], position: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=".tmp-"))
        try:
            for name in self.shapes:
                stacked = np.stack([b[name] for b in batches])
                np.save(tmp / f"{name}.npy", stacked.view(_on_disk(stacked.dtype)))
            (tmp / "position.json").write_text(json.dumps(position))
            os.replace(tmp, self.folder / f"chunk_{index:05d}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def batch(self, i: int) -> dict:
        """Stored batch i as numpy arrays (copied out of the memory map)."""
        chunk, row = divmod(i, CHUNK)
        if chunk not in self._open:
            folder = self.folder / f"chunk_{chunk:05d}"
            try:
                arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in self.shapes}
            except (OSError, ValueError) as e:
                raise UserError(
                    f"teacher cache {folder} is damaged ({e})",
                    hint=f"delete {self.folder} and run again to rebuild it",
                ) from None
            for name, array in arrays.items():
                want = (CHUNK, *self.shapes[name].shape)
                if array.shape != want:
                    raise UserError(
                        f"teacher cache {folder}: {name} has shape {array.shape}, not {want}",
                        hint=f"delete {self.folder} and run again to rebuild it",
                    )
            self._open[chunk] = arrays
        arrays = self._open[chunk]
        return {n: np.array(a[row]).view(self.shapes[n].dtype) for n, a in arrays.items()}


def open_store(run_dir: Path, prog: ProgramIR, stage: TrainStageIR, params: dict, data,
               field: tuple, log=print) -> TeacherStore:  # fmt: skip
    """The stage's store, filled up to its `batches` (running the model for what is missing)."""
    name = cached_model(prog, stage)
    cache = stage.teacher_cache
    stream = data.train(stage.seq_len, stage.batch, stage.seed, None, field)
    start = stream.state()
    stream.close()
    key = {
        "model": name,
        "weights": _digest(params[name]),
        "layers": stored_layers(prog, name),
        "top_k": stored_k(prog, stage),
        "data": start,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    store = TeacherStore(run_dir / "teacher_cache" / digest, stored_batch_shapes(prog, stage))
    wanted = -(-cache.batches // CHUNK) * CHUNK
    if store.filled < wanted:
        _fill(store, wanted, prog, stage, params[name], data, field, log)
    return store


def _fill(store: TeacherStore, wanted: int, prog, stage, params, data, field, log) -> None:
    have = store.filled
    need = (wanted - have) * store.batch_bytes
    store.folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.folder.parent).free
    tokens = (wanted - have) * stage.batch * stage.seq_len
    layers = stored_layers(prog, cached_model(prog, stage))
    log(
        f"teacher cache: running '{cached_model(prog, stage)}' over {wanted - have} batches "
        f"({tokens:,} tokens; layers {list(layers)}, top-{stored_k(prog, stage)} logits): "
        f"{need / 1e9:.2f} GB into {store.folder}" + (f" (resuming after {have})" if have else "")
    )
    if need > free:
        raise UserError(
            f"the teacher cache needs {need / 1e9:.2f} GB and {store.folder.parent} has "
            f"{free / 1e9:.2f} GB free",
            field=field + ("teacher_cache",),
            hint="lower teacher_cache.batches or top_k, or free disk space",
        )
    teacher_pass = jax.jit(make_teacher_pass(prog, stage))
    stream = data.train(stage.seq_len, stage.batch, stage.seed, store.position(), field)
    try:
        for index in range(have // CHUNK, wanted // CHUNK):
            batches = []
            for _ in range(CHUNK):
                tokens = next(stream)
                out = jax.device_get(teacher_pass(params, tokens))
                batches.append({"tokens": np.asarray(tokens, np.int32), **out})
            store.write_chunk(index, batches, stream.state())
            log(f"teacher cache: {(index + 1) * CHUNK}/{wanted} batches")
    finally:
        stream.close()


class StoredBatches:
    """The batches a cached stage trains on: step s reads stored batch s mod n, each pass over
    the n in a fresh order (seeded); the position is the step."""

    def __init__(self, store: TeacherStore, n: int, seed: int, position: dict | None):
        self.store, self.n, self.seed = store, n, seed
        if position is not None and "stored_step" not in position:
            raise UserError(
                f"the checkpoint's data position {position} is not a teacher-cache position",
                hint="delete the stage's folder in the run directory to train it afresh",
            )
        self.step = 0 if position is None else int(position["stored_step"])
        self._order: tuple[int, np.ndarray | None] = (-1, None)

    def state(self) -> dict:
        return {"stored_step": self.step}

    def _index(self, step: int) -> int:
        epoch, i = divmod(step, self.n)
        if epoch == 0:
            return i
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._order[1][i])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.store.batch(self._index(self.step))
        self.step += 1
        return batch

    def with_state(self):
        for batch in self:
            yield batch, self.state()
