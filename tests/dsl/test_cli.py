"""`tandemc check | render | schema`: exit codes, messages, and no JAX import."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from runtime.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "specs/quickstart.yaml")
BAD = ROOT / "tests/dsl/bad"


def test_check_ok(capsys):
    assert main(["check", QUICKSTART]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_check_bad_exits_2_without_traceback(capsys):
    assert main(["check", str(BAD / "kv_heads.yaml")]) == 2
    err = capsys.readouterr().err
    assert "error[E-CHECK-KV-HEADS]" in err and "Traceback" not in err
    assert "kv_heads.yaml:4:61" in err and "hint:" in err


def test_check_with_overrides(capsys):
    assert main(["check", QUICKSTART, "decode.gamma=6", "models.small.n_heads=3"]) == 2
    assert "E-CHECK-HEAD-DIM" in capsys.readouterr().err


def test_missing_file_is_a_user_error(capsys):
    assert main(["check", "no/such/spec.yaml"]) == 2
    assert "E-FILE-MISSING" in capsys.readouterr().err


def test_check_never_imports_jax():
    code = (
        "import sys; from runtime.cli import main; "
        f"rc = main(['check', {QUICKSTART!r}]); "
        "assert rc == 0; assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_debug_shows_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "--debug", "check", str(BAD / "kv_heads.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_render_resolved_and_provenance(capsys):
    assert main(["render", QUICKSTART, "--resolved", "decode.gamma=7"]) == 0
    tree = yaml.safe_load(capsys.readouterr().out)
    assert tree["decode"]["gamma"] == 7 and tree["models"]["small"]["n_kv_heads"] == 2
    assert main(["render", QUICKSTART, "--provenance", "decode.gamma=7"]) == 0
    out = capsys.readouterr().out
    assert "decode.gamma: 7  # cli:1:14" in out
    assert "models.small.n_kv_heads: 2  # default" in out
    assert "quickstart.yaml:" in out


def test_render_merged_keeps_expressions(capsys):
    assert main(["render", str(ROOT / "specs/tandem-final-layer.yaml")]) == 0
    tree = yaml.safe_load(capsys.readouterr().out)
    assert tree["models"]["large"]["trainable"] is False and "include" not in tree


def test_schema_json_and_md(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema") and "models" in schema["properties"]
    assert main(["schema", "--format", "md"]) == 0
    assert capsys.readouterr().out == (ROOT / "docs/spec-reference.md").read_text()


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.startswith("tandemc ")
