"""The README's multi-host recipe as written: `tandemc run SPEC train` started once per process
with TANDEM_DISTRIBUTED=1, JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (and
each process's CPU devices in XLA_FLAGS). Two processes with 4 devices each continue a run
that this process (one device) began, from its checkpoint, and finish it as this process
did; this process then reads what the two saved."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from launch import run_processes

from runtime import run

SPEC = Path(__file__).parent / "specs/two_stages.yaml"
MESH = "+mesh={data: 4, model: 2}"


def tandemc_train(run_dir: Path) -> list[str]:
    """`tandemc run SPEC train MESH --run-dir RUN_DIR` (tandemc is runtime.cli's main)."""
    return [sys.executable, "-m", "runtime.cli", "run", str(SPEC), "train", MESH,
            "--run-dir", str(run_dir)]  # fmt: skip


QUIET = {"log": lambda *a: None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(run by this process, run continued by two, the two processes' stdouts)."""
    root = tmp_path_factory.mktemp("multihost")
    one, two = root / "one", root / "two"
    run.train(run.open_run(SPEC, run_dir=one, **QUIET))
    # `two` is `one` stopped after the first stage's step-2 checkpoint
    shutil.copytree(one, two)
    (two / "large/final.json").unlink()
    shutil.rmtree(two / "large/step_00000004")
    shutil.rmtree(two / "tandem")
    outputs = run_processes(tandemc_train(two), n=2, devices=4, timeout=180)
    return one, two, outputs


def metrics(stage_dir: Path) -> dict[tuple[str, int], dict]:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {(r["kind"], r["step"]): r for r in rows}
    assert len(by_step) == len(rows), "a row was logged twice"
    return by_step


def test_two_processes_continue_a_one_process_run_like_it(runs):
    one, two, outputs = runs
    assert all("tandem" in out for out in outputs)  # both printed the training table
    for stage, steps in (("large", 4), ("tandem", 2)):
        want, got = metrics(one / stage), metrics(two / stage)
        assert sorted(got) == sorted(want) == [("train", 1), ("train", steps)]
        for key, row in want.items():
            np.testing.assert_allclose(got[key]["loss"], row["loss"], rtol=2e-5, err_msg=key)
        assert (two / stage / "final.json").exists() and (two / stage / "curves.png").exists()
    assert not list(two.glob("*/.tmp-*"))


def test_what_two_processes_saved_restores_in_one(runs):
    one, two, _ = runs
    by_one = run.trained_params(run.open_run(SPEC, run_dir=one, **QUIET), require=True)
    by_two = run.trained_params(run.open_run(SPEC, run_dir=two, **QUIET), require=True)
    assert sorted(by_two) == sorted(by_one)
    for a, b in zip(jax.tree.leaves(by_two), jax.tree.leaves(by_one), strict=True):
        # 8 devices sum in another order than one: Adam turns that into ~1e-6 differences
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
