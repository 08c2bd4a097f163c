"""The runtime end to end: train stages, resume after a kill, generate, compare."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from runtime import run
from runtime.errors import UserError

MINI = Path(__file__).parent / "specs/mini.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    r = run.open_run(MINI, run_dir=tmp_path_factory.mktemp("mini"), log=lambda *a: None)
    results = run.train(r)
    return r, {x.name: x for x in results}


def test_tandem_beats_an_independent_small_model(trained):
    _, results = trained
    tandem, drafter = results["tandem"].metrics, results["drafter"].metrics
    assert results["large"].metrics["loss"] < 3.0  # learned something (unigram is ~3.3)
    # Held-out cross-entropy: 2.48 vs 2.54 here. Accuracy is no test of it at this size: on
    # validation rows spread over the held-out files both score 0.373 (the Tandem model was
    # ahead only on the first file, a character table, which every row used to come from).
    assert tandem["ce"] < drafter["ce"] - 0.03, (tandem, drafter)


def test_stage_outputs(trained):
    r, _ = trained
    for stage in ("large", "tandem", "drafter"):
        d = r.run_dir / stage
        assert (d / "final.json").exists() and (d / "curves.png").stat().st_size > 1000
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        assert any(x["kind"] == "eval" for x in rows) and any(x["kind"] == "train" for x in rows)


def test_completed_stages_are_skipped(trained):
    r, results = trained
    again = run.train(run.open_run(MINI, run_dir=r.run_dir, log=lambda *a: None))
    assert all(x.skipped for x in again)
    for x in again:
        a, b = jax.tree.leaves(x.params), jax.tree.leaves(results[x.name].params)
        assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=False))


def test_generate_and_compare(trained):
    r, _ = trained
    g = run.generate(r, ["def main(", "import os\nimport sys\n"])
    assert len(g.texts) == 2 and all(len(t) == 24 for t in g.tokens)
    c = run.compare(r, ["def main("], repeats=1)
    assert c["identical"], (c["text"], c["baseline_text"])
    assert c["ours"]["large_calls_per_token"] < 1.0


def test_bad_prompts_are_user_errors(trained):
    r, _ = trained
    with pytest.raises(UserError, match="empty"):
        run.generate(r, [""])
    with pytest.raises(UserError, match="at most"):
        run.generate(r, ["x" * 500])


def _params_of(run_dir: Path, stage: str):
    r = run.open_run(MINI, run_dir=run_dir, log=lambda *a: None)
    return jax.tree.leaves(run.trained_params(r)[stage])


def test_resume_after_a_kill_gives_the_same_parameters(tmp_path):
    overrides = ["train.0.steps=40", "train.0.checkpoint_every=10", "~train.2", "~train.1"]
    straight = run.open_run(MINI, overrides, tmp_path / "straight", log=lambda *a: None)
    run.train(straight)

    killed_dir = tmp_path / "killed"
    code = (
        "from runtime import run; "
        f"r = run.open_run({str(MINI)!r}, {overrides!r}, {str(killed_dir)!r}, log=print); "
        "run.train(r)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    deadline = time.time() + 120
    while not list((killed_dir / "large").glob("step_00000020")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "large/final.json").exists(), "killed too late to test resume"

    resumed = run.open_run(MINI, overrides, killed_dir, log=lambda *a: None)
    results = run.train(resumed)
    assert results[0].steps == 40 and not results[0].skipped
    a = jax.tree.leaves(run.trained_params(straight)["large"])
    b = jax.tree.leaves(run.trained_params(resumed)["large"])
    assert all(np.allclose(u, v, atol=1e-6) for u, v in zip(a, b, strict=False))


def test_nan_loss_stops_the_stage_and_names_the_step(tmp_path):
    from runtime.train import TrainingDiverged

    overrides = ["train.0.optimizer.lr=1e30", "train.0.optimizer.warmup=0", "~train.2", "~train.1"]
    r = run.open_run(MINI, overrides, tmp_path, log=lambda *a: None)
    with pytest.raises(TrainingDiverged, match=r"at step \d+\. Checkpoints written after"):
        run.train(r)
    assert not (tmp_path / "large/final.json").exists()


def test_bpe_tokenizer_is_trained_once_and_saved(tmp_path):
    overrides = [
        "+tokenizer={kind: bpe, vocab_size: 400}",
        "train.0.steps=2",
        "~train.2",
        "~train.1",
    ]
    r = run.open_run(MINI, overrides, tmp_path, log=lambda *a: None)
    assert (tmp_path / "tokenizer.json").exists() and r.prog.model("large").vocab == 400
    again = run.open_run(MINI, overrides, tmp_path, log=lambda *a: None)
    assert again.tokenizer.encode("def main():") == r.tokenizer.encode("def main():")
