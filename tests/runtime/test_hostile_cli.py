"""Command-line misuse and filesystem faults: exit 2 with a message naming the argument, no
traceback, and no work done before the outputs are known to be writable."""

from pathlib import Path

import pytest

from runtime.cli import main

QUICKSTART = str(Path(__file__).resolve().parents[2] / "specs/quickstart.yaml")


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    return path


@pytest.mark.parametrize(
    "argv, said",
    [
        (["run", QUICKSTART, "--run-dir", "{afile}"], "is a file"),
        (["run", QUICKSTART, "--json", "{tmp}/no/such/out.json"], "--json"),
        (["run", QUICKSTART, "--json", "{tmp}"], "--json"),
        (["run", QUICKSTART, "generate", "--prompt", "caf\udcff"], "not valid UTF-8"),
        (["run", QUICKSTART, "generate", "--prompt-file", "{tmp}"], "prompt file"),
        (["compile", QUICKSTART, "--platforms", "cpu,quantum"], "--platforms"),
        (["compile", QUICKSTART, "--platforms", "cpu,cpu"], "--platforms"),
        (["compile", QUICKSTART, "--devices", "0"], "--devices 0"),
        (["compile", QUICKSTART, "--devices", "-3"], "--devices -3"),
        (["pull", "smollm2-135m", "--dir", "{afile}"], "is a file"),
        (["pull", "smollm2-135m", "--dir", "{tmp}/m", "--wheel", "{tmp}/no.whl"], "--wheel"),
        (["pull", "smollm2-135m", "--dir", "{tmp}/m", "--wheel", "{afile}"], "not a wheel"),
    ],
)
def test_misuse_is_a_clean_error(capsys, tmp_path, afile, argv, said):
    argv = [a.format(afile=afile, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("**/*.json"))  # nothing written
