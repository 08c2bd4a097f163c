"""Hostile specs: every case exits 2 with a located diagnostic, no traceback, in bounded time.
YAML (aliases that expand exponentially or refer to themselves, deep nesting, tags, merge keys,
includes of devices, FIFOs, directories, binary files and files outside the spec's folder) and
names that would become paths."""

import os
import time
from pathlib import Path

import pytest

from runtime.cli import main
from tandem_dsl import api

ROOT = Path(__file__).resolve().parents[2]
BASE = (ROOT / "tests/dsl/bad/no_data.yaml").read_text().replace(", corpus: null", "")
LAUGHS = "{a0: &a0 [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)
)
FILES = {
    "laughs": (f"bench: {LAUGHS}}}\n" + BASE, "E-YAML-SIZE", "laughs.yaml:1:"),
    "self_alias": ("x: &x [*x]\n" + BASE, "E-YAML-SIZE", "self_alias.yaml:1:"),
    "deep_flow": (BASE + "bench: " + "[" * 5000 + "]" * 5000 + "\n", "E-YAML-DEPTH", ":1:1"),
    "deep_block": (
        BASE + "".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "v: 1\n",
        "E-YAML-DEPTH",
        ":1:1",
    ),
    "tag_env": (BASE.replace("gamma: 4", "gamma: !env GAMMA"), "E-YAML-TAG", ":10:61"),
    "tag_python": (
        BASE.replace("gamma: 4", "gamma: !!python/object/apply:os.system [ls]"),
        "E-YAML-TAG",
        ":10:61",
    ),
    "tag_key": (BASE.replace("gamma: 4", "!env gamma: 4"), "E-YAML-KEY", ":10:"),
    "tag_bad_int": (BASE.replace("gamma: 4", "gamma: !!int four"), "E-YAML-TAG", ":10:61"),
    "merge_scalar": (BASE.replace("{d_model: 32,", "{<<: 3, d_model: 32,"), "E-YAML-MERGE", ":5:"),
    "include_zero": (BASE + "include: [/dev/zero]\n", "E-INCLUDE-OUTSIDE", ":13:"),
    "include_up": (BASE + "include: [../outside.yaml]\n", "E-INCLUDE-OUTSIDE", ":13:"),
    "include_dir": (BASE + "include: [folder]\n", "E-FILE-READ", ":13:"),
    "include_binary": (BASE + "include: [binary.yaml]\n", "E-FILE-READ", ":13:"),
    "include_fifo": (BASE + "include: [fifo.yaml]\n", "E-FILE-READ", ":13:"),
    "include_huge": (BASE + "include: [huge.yaml]\n", "E-FILE-READ", ":13:"),
}


@pytest.fixture
def folder(tmp_path):
    spec = tmp_path / "specs"
    spec.mkdir()
    (tmp_path / "outside.yaml").write_text(BASE)
    (spec / "folder").mkdir()
    (spec / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    (spec / "huge.yaml").write_text("# " + "x" * (2 << 20) + "\n")
    os.mkfifo(spec / "fifo.yaml")
    return spec


def _run(capsys, *argv) -> tuple[int, str, float]:
    start = time.perf_counter()
    code = main(["check", *argv])
    return code, capsys.readouterr().err, time.perf_counter() - start


@pytest.mark.parametrize("name", sorted(FILES))
def test_hostile_file(folder, capsys, name):
    text, code, where = FILES[name]
    (folder / f"{name}.yaml").write_text(text)
    rc, err, seconds = _run(capsys, str(folder / f"{name}.yaml"))
    assert rc == 2 and f"error[{code}]" in err and "Traceback" not in err, err
    assert f"{name}.yaml" in err.splitlines()[0] and where in err.splitlines()[0], err
    assert seconds < 5


@pytest.mark.parametrize(
    "value, code",
    [
        (f"bench={LAUGHS}}}", "E-YAML-SIZE"),
        ("decode.gamma=!env GAMMA", "E-YAML-TAG"),
        ("decode.gamma=!!int four", "E-YAML-TAG"),
        ("decode.gamma=" + "[" * 5000 + "]" * 5000, "E-OVERRIDE-VALUE"),
        ("decode={!env a: 1}", "E-YAML-KEY"),
    ],
)
def test_hostile_override(folder, capsys, value, code):
    (folder / "ok.yaml").write_text(BASE)
    rc, err, seconds = _run(capsys, str(folder / "ok.yaml"), value)
    assert rc == 2 and f"error[{code}]" in err and "Traceback" not in err, err
    assert err.startswith("cli:1:") and seconds < 5


def test_merge_keys_merge_and_explicit_keys_win(tmp_path):
    text = BASE.replace(
        "  small: {d_model: 32, n_layers: 2, n_heads: 2}",
        "  small: &small {d_model: 32, n_layers: 2, n_heads: 2}\n"
        "  drafter: {<<: *small, n_layers: 1}",
    )
    (tmp_path / "merge.yaml").write_text(text)
    spec = api.load(tmp_path / "merge.yaml")
    assert (spec.models["drafter"].d_model, spec.models["drafter"].n_layers) == (32, 1)


def test_include_below_the_spec_folder_still_works(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base/models.yaml").write_text(BASE)
    (tmp_path / "top.yaml").write_text("include: [base/models.yaml]\nname: top\n")
    assert api.load(tmp_path / "top.yaml").name == "top"


QUICKSTART = str(ROOT / "specs/quickstart.yaml")


@pytest.mark.parametrize(
    "override, code",
    [
        ("name=../../../x", "E-CHECK-NAME"),
        ("name=/etc/passwd", "E-CHECK-NAME"),
        ("name=''", "E-CHECK-NAME"),
        ("name=..", "E-CHECK-NAME"),
        ("name=a" + "b" * 64, "E-CHECK-NAME"),
        ("train.0.name=../../elsewhere", "E-CHECK-NAME"),
        ("train.1.name=large", "E-CHECK-STAGE-NAME"),
        ("train.0.name=generated", "E-CHECK-STAGE-NAME"),
        ("train.0.trainable=[]", "E-CHECK-UNKNOWN-TRAINABLE"),
        ("models.large.n_layers=2.0", "E-SCHEMA-TYPE"),
        ("models.large.d_model=1e3", "E-SCHEMA-TYPE"),
        ("train.0.optimizer.lr=.nan", "E-SCHEMA-TYPE"),
        ("train.0.optimizer.lr=.inf", "E-SCHEMA-TYPE"),
        ("decode.sampling.temperature=.nan", "E-SCHEMA-TYPE"),
        ("decode.sampling.top_p=0", "E-SCHEMA-RANGE"),
        ("decode.gamma=-3", "E-SCHEMA-RANGE"),
        ("+mesh={data: 0}", "E-CHECK-MESH-AXIS"),
    ],
)
def test_values_that_would_crash_later(capsys, override, code):
    rc, err, _ = _run(capsys, QUICKSTART, override)
    assert rc == 2 and f"error[{code}]" in err and "Traceback" not in err, err
    assert err.startswith("cli:1:") and "hint:" in err
