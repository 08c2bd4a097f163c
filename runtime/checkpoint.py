"""Atomic, resumable checkpoints of explicit pytrees.

A checkpoint is a directory `step_<N>/` holding `arrays.npz` (every leaf, keyed by its
pytree path) and `meta.json` (step, shape hash, data position, anything JSON). It is
written under a temporary name and renamed into place, so a kill at any moment leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import jax
import numpy as np

from .errors import UserError


class CheckpointError(UserError):
    """A missing, corrupt or incompatible checkpoint (a user-facing error)."""


def _key(path) -> str:
    return jax.tree_util.keystr(path)


def flatten(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_key(path): np.asarray(leaf) for path, leaf in leaves}


def shape_hash(tree) -> str:
    """A hash of every leaf's path, shape and dtype: what must agree to load a checkpoint."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    text = ";".join(f"{_key(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in leaves)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(directory: Path, step: int, tree, meta: dict, keep: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp-"))
    try:
        with open(tmp / "arrays.npz", "wb") as f:
            np.savez(f, **flatten(tree))
            f.flush()
            os.fsync(f.fileno())
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(directory.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


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


def restore(path: Path, template) -> tuple[object, dict]:
    """Loads `path` into the structure of `template` (arrays or ShapeDtypeStructs)."""
    meta = read_meta(path)
    want = shape_hash(template)
    if meta.get("shape_hash") not in (None, want):
        raise CheckpointError(
            f"checkpoint {path} was written for different parameter shapes "
            f"(hash {meta.get('shape_hash')}, this spec needs {want}); the spec's models or "
            "projections changed since: use another --run-dir or delete the checkpoint"
        )
    try:
        with np.load(path / "arrays.npz") as data:
            return _fill(template, data, "", path), meta
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt ({e}); delete it to start over"
        ) from None


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


def load_subtree(path: Path, name: str, template):
    """One model's (or projection's) parameters from a train-state checkpoint: the entry
    `name` under `params` (trained in that stage) or `frozen`. None if absent."""
    try:
        with np.load(path / "arrays.npz") as data:
            for group in ("params", "frozen"):
                prefix = f"['{group}']['{name}']"
                if any(k.startswith(prefix) for k in data.files):
                    return _fill(template, data, prefix, path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt ({e}); delete it to start over"
        ) from None
    return None
