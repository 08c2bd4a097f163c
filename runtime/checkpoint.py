"""Atomic, resumable, sharded checkpoints of explicit pytrees (orbax-checkpoint).

A checkpoint is a directory `step_<N>/` holding `state/` (an orbax PyTree checkpoint: each
process writes the shards its devices hold) and `meta.json` (step, shape hash, data position,
anything JSON). It is assembled under `.tmp-step_<N>/` and renamed into place once every shard
and meta.json are written, so a kill at any moment leaves the previous checkpoint or the new
one, never half of one; the last `keep` are kept. `restore` reads straight onto the shardings
asked for (any mesh, any process count) or into host arrays. Checkpoints written before
orbax (`arrays.npz` instead of `state/`) are still read.

With several processes, every one calls `save`, `restore` and `write_json_atomic` (they wait
for each other there): the run directory must be on storage they all see, and process 0
writes the files they share.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import jax
import numpy as np

from .errors import UserError

STATE = "state"  # the orbax checkpoint inside a step directory
LEGACY = "arrays.npz"  # what a step directory held before orbax


class CheckpointError(UserError):
    """A missing, corrupt or incompatible checkpoint (a user-facing error)."""


def _key(path) -> str:
    return jax.tree_util.keystr(path)


def shape_hash(tree) -> str:
    """A hash of every leaf's path, shape and dtype: what must agree to load a checkpoint."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    text = ";".join(f"{_key(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in leaves)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_primary() -> bool:
    """Whether this process writes the files all processes share (process 0)."""
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _checkpointer():
    import orbax.checkpoint as ocp  # imported when needed: it is slow to import

    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler())


def _state(step_dir: Path) -> Path:
    """The orbax checkpoint in a step directory (orbax takes absolute paths only)."""
    return (Path(step_dir) / STATE).absolute()


def save(directory: Path, step: int, tree, meta: dict, keep: int = 2) -> Path:
    import orbax.checkpoint as ocp

    final = directory / f"step_{step:08d}"
    tmp = directory / f".tmp-{final.name}"
    if is_primary():
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".tmp-*"):  # a killed save's (one trainer per directory)
            shutil.rmtree(stale, ignore_errors=True)
    _barrier(f"checkpoint {final} start")
    savable = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x), tree)
    try:
        _checkpointer().save(_state(tmp), args=ocp.args.PyTreeSave(savable))
        if is_primary():
            with open(tmp / "meta.json", "w") as f:
                f.write(json.dumps({**meta, "step": step}, indent=2))
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(directory.glob("step_*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if is_primary():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier(f"checkpoint {final} done")
    return final


def write_json_atomic(path: Path, data: dict) -> None:
    """Written by process 0; every process returns once it is in place."""
    if is_primary():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    _barrier(f"write {path}")


def finished(stage_dir: Path) -> dict | None:
    """A finished stage's `final.json` (None while the stage has not finished): the one
    place that reads it. It names at least `checkpoint` (the step folder holding the result)
    and `steps`."""
    path = stage_dir / "final.json"
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict) or not isinstance(info.get("checkpoint"), str):
            raise ValueError("it names no checkpoint")
        if not isinstance(info.get("steps"), int):
            raise ValueError("it holds no step count")
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{path} is damaged ({e})",
            hint="delete it and run `tandemc run SPEC train`: the stage finishes again from its "
            "last checkpoint",
        ) from None
    return info


def latest(directory: Path) -> Path | None:
    found = sorted(p for p in directory.glob("step_*") if (p / "meta.json").exists())
    return found[-1] if found else None


def read_meta(path: Path) -> dict:
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({e}); delete it to start over"
        ) from None


def restore(path: Path, template, shardings=None) -> tuple[object, dict]:
    """Loads `path` into the structure of `template` (arrays or ShapeDtypeStructs): onto
    `shardings` (a matching tree of shardings; each process reads only its shards), or into
    host arrays when it is None."""
    meta = read_meta(path)
    want = shape_hash(template)
    if meta.get("shape_hash") not in (None, want):
        raise CheckpointError(
            f"checkpoint {path} was written for different parameter shapes "
            f"(hash {meta.get('shape_hash')}, this spec needs {want}); the spec's models or "
            "projections changed since: use another --run-dir or delete the checkpoint"
        )
    if (path / LEGACY).exists():
        tree = _legacy(path, lambda data: _fill(template, data, "", path))
        if shardings is not None:
            tree = jax.tree.map(_place, tree, shardings)
        return tree, meta
    return _read_state(path, template, shardings), meta


def load_subtree(path: Path, name: str, template):
    """One model's (or projection's) parameters from a train-state checkpoint, as host
    arrays: the entry `name` under `params` (trained in that stage) or `frozen`. None if
    absent."""
    if (path / LEGACY).exists():
        return _legacy(path, lambda data: _legacy_subtree(data, name, template, path))
    try:
        stored = _checkpointer().metadata(_state(path)).item_metadata.tree
    except Exception as e:  # orbax raises many kinds; any of them means unreadable
        raise _corrupt(path, e) from None
    for group in ("params", "frozen"):
        if name in (stored.get(group) or {}):
            return _read_state(path, {group: {name: template}}, None, partial=True)[group][name]
    return None


def _read_state(path: Path, template, shardings, partial: bool = False):
    import orbax.checkpoint as ocp

    if shardings is None:
        args = jax.tree.map(
            lambda x: ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype), template
        )
    else:
        args = jax.tree.map(
            lambda x, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=x.shape, dtype=x.dtype),
            template,
            shardings,
        )
    item = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    restore = ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=partial)
    try:
        tree = _checkpointer().restore(_state(path), args=restore)
    except Exception as e:  # orbax raises many kinds; any of them means unreadable
        raise _corrupt(path, e) from None
    for (p, got), want in zip(
        jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(template), strict=True
    ):
        if not isinstance(got, np.ndarray | jax.Array) or got.shape != tuple(want.shape):
            found = "missing" if isinstance(got, jax.ShapeDtypeStruct) else got.shape
            raise CheckpointError(
                f"checkpoint {path}: '{_key(p)}' is {found}, expected {tuple(want.shape)}"
            )
    return tree if shardings is not None else jax.tree.map(jax.numpy.asarray, tree)


def _corrupt(path: Path, error: Exception) -> CheckpointError:
    reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error)
    return CheckpointError(f"checkpoint {path} is corrupt ({reason}); delete it to start over")


def _place(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


# --- checkpoints written before orbax: step_<N>/arrays.npz ------------------------------------


def _legacy(path: Path, read):
    try:
        with np.load(path / LEGACY) as data:
            return read(data)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise _corrupt(path, e) from None


def _legacy_subtree(data, name: str, template, path: Path):
    for group in ("params", "frozen"):
        prefix = f"['{group}']['{name}']"
        if any(k.startswith(prefix) for k in data.files):
            return _fill(template, data, prefix, path)
    return None


def _fill(template, arrays, prefix: str, path: Path):
    """`template`'s structure with each leaf read from `arrays[prefix + its key path]`."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for p, leaf in leaves:
        key = prefix + _key(p)
        value = arrays[key] if key in arrays else None  # one read: npz entries load lazily
        if value is None or value.shape != tuple(leaf.shape):
            got = "missing" if value is None else value.shape
            raise CheckpointError(
                f"checkpoint {path}: '{key}' is {got}, expected {tuple(leaf.shape)}"
            )
        out.append(jax.numpy.asarray(value, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)
