"""The teacher cache in a run directory: the frozen model runs once for both students, the
store resumes and extends chunk by chunk with the same contents, training from it resumes
bit-exact across its passes, and a damaged store is a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from runtime import run, train_bench
from runtime.corpus import data_for_spec
from runtime.errors import UserError
from runtime.teacher_cache import CHUNK, StoredBatches, open_store

MINI = Path(__file__).parent / "specs/mini.yaml"
DISTIL = "{kind: distil, teacher: large, weight: 0.5}"
OVERRIDES = [
    "train.0.steps=3",
    f"train.1.objective={DISTIL}",
    f"train.2.objective={DISTIL}",
    "train.1.steps=24",
    "train.2.steps=6",
    "+train.1.teacher_cache={batches: 16}",
    "+train.2.teacher_cache={batches: 16}",
]


class Log(list):
    def __call__(self, *args):
        self.append(" ".join(map(str, args)))


def _open(run_dir: Path, overrides=OVERRIDES, log=None):
    return run.open_run(MINI, overrides, run_dir, log=(lambda *a: None) if log is None else log)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    log = Log()
    r = _open(tmp_path_factory.mktemp("cached"), log=log)
    run.train(r)
    return r, log


def test_the_frozen_model_runs_once_for_both_students(trained):
    r, log = trained
    assert len([line for line in log if "teacher cache: running 'large'" in line]) == 1
    (store,) = (r.run_dir / "teacher_cache").iterdir()
    assert len(list(store.glob("chunk_*"))) == 16 // CHUNK
    arrays = {p.name for p in (store / "chunk_00000").iterdir()}
    # the one layer input the Tandem model reads (its default wiring: large[2])
    assert arrays == {"tokens.npy", "top_values.npy", "top_indices.npy", "hidden_2.npy",
                      "position.json"}  # fmt: skip


def _store(r, batches: int, log=print):
    stage = r.prog.train[1]
    stage = stage.__class__(**{**stage.__dict__, "teacher_cache": stage.teacher_cache.__class__(
        batches=batches, top_k=stage.teacher_cache.top_k)})  # fmt: skip
    params = run.trained_params(r)
    return open_store(r.run_dir, r.prog, stage, params, data_for_spec(r.spec, r.tokenizer),
                      ("train", 1), log)  # fmt: skip


def test_the_store_resumes_and_extends_with_the_same_contents(trained, tmp_path):
    r, _ = trained
    whole = _store(r, 2 * CHUNK)  # extends the fixture's store by a chunk
    copy = tmp_path / "run"
    shutil.copytree(r.run_dir, copy, ignore=shutil.ignore_patterns("chunk_00001"))
    (copy / "teacher_cache" / whole.folder.name / ".tmp-killed").mkdir()  # a chunk cut short
    log = Log()
    resumed = _store(_open(copy), 2 * CHUNK, log)
    assert any("resuming after 16" in line for line in log)
    for i in (0, CHUNK - 1, CHUNK, 2 * CHUNK - 1):
        a, b = whole.batch(i), resumed.batch(i)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(whole.batch(0)["tokens"], whole.batch(CHUNK)["tokens"])


def test_each_pass_reads_every_stored_batch_in_a_new_order(trained):
    r, _ = trained
    store = _store(r, CHUNK)
    n = 5
    steps = StoredBatches(store, n, seed=0, position=None)
    first = [steps._index(s) for s in range(3 * n)]
    assert first[:n] == list(range(n))
    assert sorted(first[n : 2 * n]) == list(range(n)) and first[n : 2 * n] != first[2 * n :]
    later = StoredBatches(store, n, seed=0, position={"stored_step": 7})
    np.testing.assert_array_equal(next(later)["tokens"], store.batch(first[7])["tokens"])
    with pytest.raises(UserError, match="not a teacher-cache position"):
        StoredBatches(store, n, seed=0, position={"epoch": 0})


def test_training_from_the_store_resumes_bit_exact(trained, tmp_path):
    r, _ = trained
    stopped = tmp_path / "stopped"
    shutil.copytree(r.run_dir, stopped, ignore=shutil.ignore_patterns("tandem", "drafter"))
    run.train(_open(stopped), stop_after_steps=20)  # stops in the second pass over 16
    assert not (stopped / "tandem/final.json").exists()
    resumed = _open(stopped)
    run.train(resumed)
    a = jax.tree.leaves(run.trained_params(r)["small"])
    b = jax.tree.leaves(run.trained_params(resumed)["small"])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_damaged_store_is_a_clear_error(trained, tmp_path):
    r, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(r.run_dir, copy)
    (chunk,) = (copy / "teacher_cache").glob("*/chunk_00000")
    (chunk / "hidden_2.npy").write_bytes(b"not an array")
    with pytest.raises(UserError, match="damaged") as e:
        _store(_open(copy), CHUNK).batch(0)
    assert "delete" in e.value.hint


def test_the_train_bench_prints_live_and_cached_steps_side_by_side(trained, capsys):
    r, _ = trained
    one_stage = [o for o in OVERRIDES if not o.startswith("+train.2")]
    assert train_bench.main([str(MINI), *one_stage, "--run-dir", str(r.run_dir),
                             "--repeats", "1"]) == 0  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| tandem"]
    for row in rows[1:]:
        live, cached, speedup = row.split(" | ")[1:4]
        assert float(speedup.rstrip("x")) == pytest.approx(float(live) / float(cached), rel=0.1)
        assert row.endswith(" | - |")  # no draft_vocab: no step with the whole layer to time
    # a stage that trains for a draft vocabulary also times its step with the whole layer
    cut = ["train.1.objective.draft_vocab=128", "decode.draft_vocab=128"]
    assert train_bench.main([str(MINI), *one_stage, *cut, "--run-dir", str(r.run_dir),
                             "--repeats", "1"]) == 0  # fmt: skip
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][-1]
    assert float(row.split(" | ")[-1].rstrip(" |")) > 0


def test_the_train_bench_times_a_stage_with_and_without_a_per_step_sync(capsys):
    assert train_bench.main([str(MINI), "--sync", "large", "--steps", "2", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    synced, queued, ratio = rows[-1].split(" | ")[1:4]
    assert rows[-1].startswith("| large |")
    assert float(ratio.rstrip("x |")) == pytest.approx(float(queued) / float(synced), rel=0.01)
    assert train_bench.main([str(MINI), "--sync", "nope"]) == 2
