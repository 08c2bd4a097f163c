"""Hostile input at run time, categories 3-8: a finished stage asked for under changed
settings (never reused silently), a run directory another process holds, filesystem faults
(nothing is lost to an output error, outputs are checked before the work), values that only
fail against this machine or the data (too big for memory, no data, no held-out data), bad
prompts and command-line misuse. Each exits 2 with the spec location or the argument, a hint
where one helps, no traceback, within the time and memory bounds.

The behaviour behind categories 3-5 (continue on more steps, the NaN guard's named checkpoint,
two concurrent runs, metrics after resume) is shown in `tests/runtime/test_run_dir_rules.py`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_harness import assert_clean, run_cli

from runtime.cli import main

TINY = """tandem: 1
name: tiny
data: {corpus: stdlib, seq_len: 32}
models:
  large: {d_model: 32, n_layers: 1, n_heads: 2}
  small: {d_model: 16, n_layers: 1, n_heads: 2}
projections:
  l2s: {from: large, to: small}
wiring:
  - {query: small, memory: large, via: l2s, block: 2}
train:
  - {name: large, trainable: [large], steps: 2, batch: 2, eval_every: 2, eval_batches: 1}
  - {name: tandem, trainable: [small, l2s], steps: 2, batch: 2, eval_every: 2, eval_batches: 1,
     objective: {kind: ce, model: small}}
decode: {policy: speed, target: large, draft: small, gamma: 2, max_new_tokens: 8}
shapes: {batch: 1, max_len: 256}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(spec, run dir) of the tiny spec, trained."""
    root = tmp_path_factory.mktemp("hostile_run")
    spec = root / "tiny.yaml"
    spec.write_text(TINY)
    run_dir = root / "run"
    assert main(["run", str(spec), "train", "--run-dir", str(run_dir)]) == 0  # unbounded
    assert (run_dir / "tandem/final.json").exists()
    (root / "afile").write_text("x")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00")
    (root / "one.txt").write_text("def f():\n    return 1\n")
    return spec, run_dir


def _files_outside_runs(root: Path) -> list[Path]:
    """Everything but the run directories ("fresh": one a refused run may create, empty)."""
    runs = (root / "run", root / "fresh")
    return sorted(p for p in root.rglob("*") if not any(p.is_relative_to(r) for r in runs))


def _fill(argv, spec, run_dir):
    root = spec.parent
    return [str(a).format(spec=spec, run=run_dir, root=root) for a in argv]


# argv, code (None: a plain `error:` naming the argument), what the first line names
STALE = [
    (["train.0.optimizer.lr=1e-2"], "optimizer.lr"),
    (["train.0.batch=4"], "batch"),
    (["train.1.objective.kind=distil", "+train.1.objective.teacher=large"], "objective"),
    (["data.seq_len=16"], "seq_len"),
    (["+models.large.mlp=gelu"], "mlp"),
    (["+models.large.init.seed=7"], "seed"),
    (["+data.seed=3"], "seed"),
]


@pytest.mark.parametrize("verb", ["train", "generate"])
@pytest.mark.parametrize("overrides, field", STALE, ids=[s[0][0] for s in STALE])
def test_a_finished_stage_under_changed_settings_is_refused(trained, verb, overrides, field):
    spec, run_dir = trained
    o = run_cli(["run", spec, verb, *overrides, "--run-dir", run_dir])
    assert_clean(o, f"{spec}:", "E-RUN")
    assert "with other settings" in o.first_line and field in o.err


def test_a_run_directory_in_use_is_refused(trained):
    spec, run_dir = trained
    other = run_dir.parent / "busy"
    other.mkdir(exist_ok=True)
    with open(other / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        o = run_cli(["run", spec, "train", "--run-dir", other])
    assert_clean(o, "error: run directory")
    assert "in use by another process (pid 4242)" in o.first_line


CASES = [
    # filesystem faults, found before any work
    (["run", "{spec}", "--run-dir", "{root}/afile"], None, "is a file", False),
    (["run", "{spec}", "--run-dir", "/proc/no/such"], None, "/proc/no/such", True),
    (["run", "{spec}", "generate", "--json", "{root}/no/such/out.json"], None, "--json", False),
    (["run", "{spec}", "generate", "--json", "{root}"], None, "--json", False),
    (["compile", "{spec}", "-o", "{root}/afile"], None, "--out", False),
    (["compile", "{spec}", "-o", "/proc/no/such"], None, "--out", False),
    (["pull", "smollm2-135m", "--dir", "{root}/afile"], None, "is a file", False),
    (
        ["pull", "smollm2-135m", "--dir", "{root}/m", "--wheel", "{root}/no.whl"],
        None,
        "--wheel",
        False,
    ),
    (
        ["pull", "smollm2-135m", "--dir", "{root}/m", "--wheel", "{root}/afile"],
        None,
        "not a wheel",
        False,
    ),
    # prompts
    (["run", "{spec}", "generate", "--prompt", ""], None, "empty", False),
    (["run", "{spec}", "generate", "--prompt", "x" * 300], None, "tokens", False),
    (["run", "{spec}", "generate", "--prompt", "caf\udcff"], None, "UTF-8", False),
    (["run", "{spec}", "generate", "--prompt-file", "/dev/zero"], None, "larger than", False),
    (["run", "{spec}", "generate", "--prompt-file", "{root}/binary.txt"], None, "UTF-8", False),
    (["run", "{spec}", "generate", "--prompt-file", "{root}/none.txt"], None, "none.txt", False),
    (["run", "{spec}", "generate", "--prompt-file", "{root}"], None, "prompt file", False),
    (["run", "{spec}", "generate", "--prompt", "hi", "--chat"], None, "chat template", False),
    # command-line misuse
    (["run", "{spec}", "nosuchstage"], None, "unknown stage", True),
    (["run", "{spec}", "--nosuch-flag"], None, "unrecognized", False),
    (["compile", "{spec}", "--platforms", "cpu,quantum"], None, "--platforms", False),
    (["compile", "{spec}", "--platforms", "cpu,cpu"], None, "--platforms", False),
    (["compile", "{spec}", "--devices", "0"], None, "--devices 0", False),
    (["compile", "{spec}", "--devices", "-3"], None, "--devices -3", False),
    (["compile", "{spec}", "--emit", "nosuch"], None, "--emit", False),
    (["compile", "{spec}", "--program", "nosuch"], None, "nosuch", False),
    (["compile", "{spec}", "--stop-after", "nosuch"], None, "--stop-after", False),
    (["pull", "no-such-model"], None, "no-such-model", False),
    (["check"], None, "spec", False),
    (["nosuch-command"], None, "nosuch-command", False),
    # too big for this machine: refused before anything is allocated
    (
        ["run", "{spec}", "generate", "models.large.d_model=65536", "models.large.n_layers=64"],
        "E-RUN",
        "needs at least",
        True,
    ),
    (
        [
            "run",
            "{spec}",
            "train",
            "train.0.batch=1000000",
            "data.val_fraction=0",
            "--run-dir",
            "{root}/fresh",
        ],
        "E-RUN",
        "logits",
        True,
    ),
    (
        [
            "run",
            "{spec}",
            "train",
            "+tokenizer.vocab_size=60000",
            "tokenizer.kind=bpe",
            "models.large.n_layers=1024",
            "models.large.d_model=4096",
            "models.large.n_heads=32",
        ],
        "E-RUN",
        "needs at least",
        True,
    ),
    # data that cannot make batches
    (
        ["run", "{spec}", "train", "data.corpus=null", "+data.paths=[{root}/nowhere/*.txt]"],
        "E-RUN",
        "matches no files",
        False,
    ),
    (
        ["run", "{spec}", "train", "data.corpus=null", "+data.paths=[{root}/one.txt]"],
        "E-RUN",
        "validation split",
        False,
    ),
    (
        ["run", "{spec}", "train", "train.0.batch=100000", "--run-dir", "{root}/fresh"],
        "E-RUN",
        "validation data",
        True,
    ),
    (
        [
            "run",
            "{spec}",
            "train",
            "data.corpus=null",
            '+data.paths=[""]',
            "--run-dir",
            "{root}/fresh",
        ],
        "E-RUN",
        "empty entry",
        False,
    ),
    (
        [
            "run",
            "{spec}",
            "train",
            "+data.generated={{model: large, new_tokens: 250, chat_prompts: 0, code_prompts: 2, "
            "share: 0.5}}",
            "--run-dir",
            "{root}/fresh",
        ],
        "E-RUN",
        "do not fit",
        True,
    ),
    (
        [
            "run",
            "{spec}",
            "train",
            "tokenizer={{kind: gguf, path: {root}/afile}}",
            "models.large.vocab=300",
            "models.small.vocab=300",
            "--run-dir",
            "{root}/fresh",
        ],
        "E-RUN",
        "not a GGUF file",
        False,
    ),
    (
        [
            "run",
            "{spec}",
            "train",
            "tokenizer={{kind: hf-json, path: {root}/afile}}",
            "models.large.vocab=300",
            "models.small.vocab=300",
            "--run-dir",
            "{root}/fresh",
        ],
        "E-RUN",
        "tokenizer.json",
        False,
    ),
    # weights that are not what the spec says
    (
        ["run", "{spec}", "train", "+models.large.init={{from: gguf, path: {root}/afile}}"],
        "E-RUN",
        "not a GGUF file",
        False,
    ),
    (
        ["run", "{spec}", "train", "+models.large.init={{from: safetensors, path: {root}/afile}}"],
        "E-RUN",
        "safetensors",
        False,
    ),
    (
        ["run", "{spec}", "train", "+models.large.init={{from: checkpoint, path: {root}/nowhere}}"],
        "E-RUN",
        "has not finished",
        True,
    ),
]


@pytest.mark.parametrize("argv, code, said, hint", CASES, ids=[" ".join(c[0][1:4]) for c in CASES])
def test_runtime_misuse_is_a_clean_error(trained, argv, code, said, hint):
    spec, run_dir = trained
    argv = _fill(argv, spec, run_dir)
    if argv[0] == "run" and "--run-dir" not in argv:
        argv += ["--run-dir", str(run_dir)]
    before = _files_outside_runs(spec.parent)
    o = run_cli(argv)
    where = "" if code is None else ("cli:" if "cli:" in o.first_line else f"{spec}:")
    assert_clean(o, where, code, hint)
    assert said in o.err, o.err
    assert (
        _files_outside_runs(spec.parent) == before
    )  # nothing written: no half results, no stray files


def test_json_to_a_device_is_written_in_place_not_replaced(trained, tmp_path):
    spec, run_dir = trained
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        o = run_cli(["run", spec, "generate", "--run-dir", run_dir, "--json", fifo])
        assert o.code == 0, o.err
        assert fifo.is_fifo() and b'"generate"' in os.read(reader, 1 << 20)
    finally:
        os.close(reader)


def test_the_decode_cache_length_does_not_retrain_a_rope_model(trained):
    spec, run_dir = trained
    o = run_cli(["run", spec, "generate", "shapes.max_len=512", "--run-dir", run_dir])
    assert o.code == 0 and "other settings" not in o.err, o.err


def test_no_held_out_data_trains_without_evaluation(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    o = run_cli(["run", spec, "train", "data.val_fraction=0", "--run-dir", tmp_path / "run"])
    assert o.code == 0, o.err
    rows = (tmp_path / "run/large/metrics.jsonl").read_text()
    assert '"kind": "train"' in rows and '"kind": "eval"' not in rows


def test_a_second_process_on_the_same_run_directory_is_refused(trained, tmp_path):
    spec, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    longer = ["train.1.steps=100000", "--run-dir", str(copy)]
    first = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", str(spec), "train", *longer],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while (copy / ".lock").read_text().strip() != str(first.pid):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        o = run_cli(["run", spec, "train", *longer])
        assert_clean(o, "error: run directory")
        assert f"in use by another process (pid {first.pid})" in o.first_line
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("text", ["{", "[]", '{"steps": 2}', '{"checkpoint": "step_00000002"}', ""])
@pytest.mark.parametrize("verb", ["train", "generate"])
def test_a_damaged_final_json_is_named_with_the_way_out(trained, tmp_path, verb, text):
    spec, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "large/final.json").write_text(text)
    o = run_cli(["run", spec, verb, "--run-dir", copy])
    assert_clean(o, f"{spec}:", "E-RUN")
    assert "final.json is damaged" in o.first_line and "delete it" in o.err


def test_a_compiler_bug_keeps_its_traceback(trained, monkeypatch):
    import compiler.driver

    def broken(*args, **kwargs):
        raise ValueError("an invariant the compiler broke")

    monkeypatch.setattr(compiler.driver, "compile_spec", broken)
    with pytest.raises(ValueError, match="invariant"):  # not exit 2 with a user-error line
        main(["compile", str(trained[0])])
