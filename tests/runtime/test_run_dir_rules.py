"""The run-directory rules: a finished stage is reused only when nothing it depends on changed;
more steps continue it; any other change is refused, naming the fields; one process trains in a
run directory at a time; resuming never repeats metrics; a diverged loss sets the bad
checkpoints aside and the same command resumes from a good one."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from runtime import checkpoint, run
from runtime.errors import UserError
from runtime.train import TrainingDiverged

MINI = Path(__file__).parent / "specs/mini.yaml"
SHORT = [
    "train.0.steps=4",
    "train.1.steps=3",
    "train.2.steps=3",
    "train.0.checkpoint_every=2",
    "train.0.eval_every=4",
    "train.1.eval_every=3",
    "train.2.eval_every=3",
    "train.0.eval_batches=1",
    "train.1.eval_batches=1",
    "train.2.eval_batches=1",
]


def _open(run_dir, *overrides, said=None):
    log = said.append if said is not None else (lambda *a: None)
    return run.open_run(MINI, [*SHORT, *overrides], run_dir=run_dir, log=log)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rules") / "run"
    run.train(_open(run_dir))
    return run_dir


@pytest.fixture
def copy(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _steps(run_dir, stage):
    return json.loads((run_dir / stage / "final.json").read_text())["steps"]


def test_unchanged_stages_are_reused(copy):
    results = run.train(_open(copy))
    assert all(x.skipped for x in results)


def test_changed_lr_is_refused_naming_the_field(copy):
    with pytest.raises(UserError, match=r"stage\.optimizer\.lr: 0\.01 -> 0\.005") as info:
        run.train(_open(copy, "train.1.optimizer.lr=5e-3"))
    assert "'tandem'" in str(info.value) and "delete" in info.value.hint
    assert info.value.field == ("train", 1)  # located at the stage in the spec
    with pytest.raises(UserError, match="optimizer.lr"):  # nor decoded with silently
        run.trained_params(_open(copy, "train.1.optimizer.lr=5e-3"))


def test_changed_model_is_refused_for_every_stage_that_reads_it(copy):
    # the large model's MLP kind: same parameter shapes, another model
    with pytest.raises(UserError, match=r"models\.large\.mlp: \"swiglu\" -> \"gelu\""):
        run.train(_open(copy, "+models.large.mlp=gelu", "models.large.d_ff=512"))


def test_more_steps_continue_and_stages_that_read_it_are_refused(copy):
    said = []
    with pytest.raises(UserError, match=r"after\.large\.steps: 4 -> 6") as info:
        run.train(_open(copy, "train.0.steps=6", said=said))
    assert any("continuing from step 4 to 6" in s for s in said)
    assert _steps(copy, "large") == 6 and "'tandem'" in str(info.value)
    rows = [json.loads(x) for x in (copy / "large/metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_fewer_steps_are_refused(copy):
    with pytest.raises(UserError, match="has 4 steps, the spec asks for 2"):
        run.train(_open(copy, "train.0.steps=2"))


def test_a_second_process_is_refused_while_one_trains(copy):
    with run.run_lock(copy):  # another tandemc holds the run directory
        with pytest.raises(UserError, match="in use by another process"):
            run.train(_open(copy, "train.2.steps=5"))
    assert run.train(_open(copy))  # released: fine again


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    only_large = ["train.0.steps=6", "train.0.checkpoint_every=3", "~train.2", "~train.1"]
    run.train(_open(tmp_path / "run", *only_large), stop_after_steps=5)  # checkpoints at 3, 5
    metrics = tmp_path / "run/large/metrics.jsonl"
    shutil.rmtree(tmp_path / "run/large/step_00000005")  # killed before this checkpoint landed
    with open(metrics, "a") as f:
        f.write(json.dumps({"kind": "train", "step": 5, "loss": 1.0}) + "\n")
    run.train(_open(tmp_path / "run", *only_large))
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == sorted(set(steps)), steps


def test_nan_guard_names_a_good_checkpoint_and_the_same_command_resumes(tmp_path):
    setup = ["train.0.steps=8", "train.0.checkpoint_every=1", "train.0.optimizer.warmup=3",
             "+train.0.optimizer.kind=sgd", "train.0.optimizer.clip=0",
             "~train.2", "~train.1"]  # fmt: skip
    bad = [*setup, "train.0.optimizer.lr=1e5"]  # NaN after a few steps
    with pytest.raises(TrainingDiverged) as info:
        run.train(_open(tmp_path / "run", *bad))
    message = f"{info.value} {info.value.hint}"
    stage_dir = tmp_path / "run/large"
    assert "set aside" in message and "train.0.optimizer.lr=10000" in message
    kept = checkpoint.latest(stage_dir)
    if kept is not None:  # the one it resumes from: finite weights
        assert f"resumes from {kept.name}" in message
        r = _open(tmp_path / "run", *bad)
        template = run.initial_params(r)["large"]
        arrays = checkpoint.load_subtree(kept, "large", template)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(arrays))
    else:
        assert "starts over" in message
    assert list((stage_dir / "diverged").glob("step_*"))
    # the advice, as one command: the same run with a lower learning rate finishes
    fixed = [*setup, "train.0.optimizer.lr=1e-3"]
    results = run.train(_open(tmp_path / "run", *fixed))
    assert results[0].steps == 8
