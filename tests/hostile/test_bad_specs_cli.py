"""Hostile input, category 8 (messages): every bad spec of `tests/dsl/bad/` through the
command line. `tests/dsl/test_bad_specs.py` pins each one's code and exact location; here each
must also reach the user as exit 2 with its location, a hint, no traceback, in bounded time
and memory."""

from pathlib import Path

import pytest
from hostile_harness import assert_clean, run_cli

BAD = Path(__file__).resolve().parents[1] / "dsl/bad"
PREFIX = "# overrides: "


def _overrides(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line[len(PREFIX) :].strip() for line in lines if line.startswith(PREFIX)]


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_spec_on_the_command_line(path):
    o = run_cli(["check", path, *_overrides(path)])
    assert_clean(o, "")
    assert o.first_line.startswith((str(BAD), "cli:")), o.first_line
    assert o.first_line.split(": error[")[0].count(":") >= 1  # file:line:col or cli:N:col
