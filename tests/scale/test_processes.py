"""Scale-out over real processes: two JAX processes on this machine (4 CPU devices each),
joined through the README's environment variables, train like one process with 8 devices,
each reads only its rows of every global batch, and checkpoints move between one process and
two, onto other meshes.

The processes run once (`process_worker.py`, the `pair` fixture); `worker.py` (the `multi`
fixture) is the single-process run they are compared with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny
from launch import last_json, python, run_processes
from process_worker import STREAM

from compiler.nn import init_params
from compiler.sharding import Sharder
from compiler.train import init_train_state
from runtime import checkpoint
from runtime.data import TokenStream
from runtime.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """Pre-tokenized documents of uneven lengths (ids below the tiny program's vocab)."""
    folder = tmp_path_factory.mktemp("docs")
    rng = np.random.default_rng(5)
    for i, n in enumerate([300, 41, 517, 90, 233]):
        rng.integers(0, 64, n).astype("<i4").tofile(folder / f"doc{i}.ids")
    return folder


def tiny_state(seed: int) -> dict:
    prog = tiny.program()
    return init_train_state(prog, prog.train[0], init_params(prog, jax.random.key(seed)))


def host_arrays(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


@pytest.fixture(scope="module")
def saved_by_one(tmp_path_factory):
    """A folder with `by_one/`: a train state saved by this process (one device), for the
    two processes to restore."""
    folder = tmp_path_factory.mktemp("checkpoints")
    state = {**tiny_state(9), "step": jnp.asarray(2, jnp.int32)}
    checkpoint.save(folder / "by_one", 2, state, {"shape_hash": checkpoint.shape_hash(state)})
    return folder, host_arrays(state)


@pytest.fixture(scope="module")
def pair(docs, saved_by_one):
    argv = python("process_worker.py", str(docs), str(saved_by_one[0]))
    outputs = run_processes(argv, n=2, devices=4, timeout=150)
    return last_json(outputs[0])


def test_two_processes_train_like_one_process_with_8_devices(pair, multi):
    assert (pair["processes"], pair["devices"], pair["local_devices"]) == (2, 8, 4)
    got, want = pair["train_4x2"], multi["train_4x2"]
    assert got["mesh"] == {"data": 4, "model": 2}
    # gloo's cross-process all-reduce sums in another order than XLA's in-process one
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-6)
    for key in ("w_up_spec", "mu_spec", "frozen_wq_spec", "batch_spec", "w_up_shard"):
        assert got[key] == want[key], key
    assert got["w_up_devices"] == 8  # the parameter spans both processes' devices


def test_each_process_reads_its_rows_and_the_global_batch_is_the_one_process_batch(pair, docs):
    got = pair["data"]
    assert got["rows"] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # data=4: two groups per process
    one = TokenStream(sorted(docs.glob("*.ids")), ByteTokenizer(), **STREAM)
    want = [next(one).tolist() for _ in range(6)]
    assert got["batches"] == want  # across a shuffle window's end (window 4)
    assert got["resumed"] == want[3:]  # from the state saved after the 3rd batch


def test_a_checkpoint_saved_by_one_process_restores_over_two_on_another_mesh(pair, saved_by_one):
    folder, saved = saved_by_one
    got = pair["checkpoints"]
    assert got["restored_step"] == 2
    # straight onto the 2 x 4 mesh: the small model's MLP width split 4 ways over 8 devices
    assert got["restored_w_up"] == ["P(None, 'model')", 8, [16, 8]]
    with np.load(folder / "by_one_restored.npz") as restored:
        assert sorted(restored.files) == sorted(saved)
        for key, value in saved.items():
            assert np.array_equal(restored[key], value), key


def test_a_checkpoint_saved_by_two_processes_restores_in_one(pair, saved_by_one):
    folder = saved_by_one[0]
    path = folder / "by_two" / pair["checkpoints"]["saved"]
    template = tiny_state(0)
    host, meta = checkpoint.restore(path, template)
    prog = tiny.program()  # the mesh of this process's single device
    shardings = Sharder.for_run(prog).train_state(prog, prog.train[0], template)
    placed, _ = checkpoint.restore(path, template, shardings)
    with np.load(folder / "by_two.npz") as trained:
        assert meta["step"] == 3 and sorted(trained.files) == sorted(host_arrays(host))
        for tree in (host, placed):
            for key, value in host_arrays(tree).items():
                assert np.array_equal(trained[key], value), key
