"""Checkpoints (orbax): bit-exact round trips onto host arrays or shardings, keep-N, atomic
saves, damaged or mismatched checkpoints as clear errors, and the pre-orbax format still read.
Saving from two processes and restoring in one (and back) is in tests/scale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from runtime import checkpoint
from runtime.checkpoint import CheckpointError


class Moments(NamedTuple):
    count: jax.Array
    mu: dict


def state(seed: int = 0) -> dict:
    """A train state's shape: nested dicts, a named tuple, None, an empty dict, bf16."""
    rng = np.random.default_rng(seed)
    w = {"w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=(6,)), jnp.bfloat16)}  # fmt: skip
    return {
        "step": jnp.asarray(7, jnp.int32),
        "params": {"small": w},
        "frozen": {},
        "opt_state": (Moments(jnp.asarray(3, jnp.int32), {"small": w}), None),
    }


def equal(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs
    )


def save(directory, step, tree, **meta):
    return checkpoint.save(
        directory, step, tree, {"shape_hash": checkpoint.shape_hash(tree), **meta}
    )


def test_round_trip_is_bit_exact_onto_host_arrays_or_shardings(tmp_path):
    saved = state()
    path = save(tmp_path, 7, saved, data={"epoch": 1})
    assert (path / "meta.json").exists() and (path / checkpoint.STATE).is_dir()
    host, meta = checkpoint.restore(path, state(1))
    assert equal(host, saved) and meta["data"] == {"epoch": 1} and meta["step"] == 7
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, P()), saved)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), saved)
    placed, _ = checkpoint.restore(path, abstract, shardings)
    assert equal(placed, saved)
    assert placed["params"]["small"]["w"].sharding == shardings["params"]["small"]["w"]
    small = checkpoint.load_subtree(path, "small", saved["params"]["small"])
    assert equal(small, saved["params"]["small"])
    assert checkpoint.load_subtree(path, "large", saved["params"]["small"]) is None


def test_a_relative_run_directory_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `--run-dir runs/x`: orbax itself takes absolute paths only
    path = save(Path("runs/x"), 3, state())
    assert equal(checkpoint.restore(path, state(1))[0], state())
    assert equal(checkpoint.load_subtree(path, "small", state()["params"]["small"]),
                 state()["params"]["small"])  # fmt: skip


def test_the_last_two_are_kept_and_a_killed_save_leaves_the_previous_one(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        save(tmp_path, step, state(step))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000003"]
    # a save killed half way leaves its temporary folder: never taken for a checkpoint
    (tmp_path / ".tmp-step_00000004/state").mkdir(parents=True)
    assert checkpoint.latest(tmp_path).name == "step_00000003"

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_checkpointer", lambda: type("C", (), {"save": dies})())
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 4, state(4))
    monkeypatch.undo()
    assert checkpoint.latest(tmp_path).name == "step_00000003"
    assert equal(checkpoint.restore(tmp_path / "step_00000003", state())[0], state(3))
    save(tmp_path, 5, state(5))  # the next save clears what the killed ones left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003", "step_00000005"]


def _damage_every_file(path):
    for f in (path / checkpoint.STATE).rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage" * 3)


@pytest.mark.parametrize(
    "damage",
    [
        _damage_every_file,
        lambda path: shutil.rmtree(path / checkpoint.STATE),
        lambda path: (path / "meta.json").write_text("{"),
    ],
    ids=["garbage", "state-deleted", "meta-json"],
)
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    path = save(tmp_path, 1, state())
    damage(path)
    with pytest.raises(CheckpointError, match=r"(corrupt|unreadable).*delete it to start over"):
        checkpoint.restore(path, state())
    if (path / "meta.json").read_text() != "{":
        with pytest.raises(CheckpointError, match="corrupt"):
            checkpoint.load_subtree(path, "small", state()["params"]["small"])


def test_other_shapes_are_refused(tmp_path):
    path = save(tmp_path, 1, state())
    wider = jax.tree.map(lambda x: jnp.zeros((4, 8)) if x.shape == (4, 6) else x, state())
    with pytest.raises(CheckpointError, match="different parameter shapes"):
        checkpoint.restore(path, wider)
    with pytest.raises(
        CheckpointError, match=r"\['small'\]\['w'\]' is \(4, 6\), expected \(4, 8\)"
    ):
        checkpoint.load_subtree(path, "small", wider["params"]["small"])
    extra = {**state()["params"]["small"], "gate": jnp.zeros(3)}
    with pytest.raises(CheckpointError, match=r"\['small'\]\['gate'\]' is missing"):
        checkpoint.load_subtree(path, "small", extra)


def test_checkpoints_from_before_orbax_are_still_read(tmp_path):
    saved = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x, state())
    path = tmp_path / "step_00000002"
    path.mkdir()
    leaves = jax.tree_util.tree_flatten_with_path(saved)[0]
    np.savez(path / "arrays.npz", **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves})
    meta = {"shape_hash": checkpoint.shape_hash(saved), "step": 2}
    (path / "meta.json").write_text(json.dumps(meta))
    assert checkpoint.latest(tmp_path) == path
    assert equal(checkpoint.restore(path, saved)[0], saved)
    assert equal(checkpoint.load_subtree(path, "small", saved["params"]["small"]),
                 saved["params"]["small"])  # fmt: skip
    (path / "arrays.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.restore(path, saved)
