"""Hostile input, category 2: names that become paths (the spec name is the default run
directory, stage names are its folders, model and projection names are parameter keys)."""

from pathlib import Path

import pytest
from hostile_harness import assert_clean, run_cli

QUICKSTART = Path(__file__).resolve().parents[2] / "specs/quickstart.yaml"
MODEL = "{d_model: 32, n_layers: 1, n_heads: 2}"


@pytest.mark.parametrize(
    "override, code",
    [
        ("name=../../../x", "E-CHECK-NAME"),
        ("name=/etc/passwd", "E-CHECK-NAME"),
        ("name=''", "E-CHECK-NAME"),
        ("name=..", "E-CHECK-NAME"),
        ("name=.", "E-CHECK-NAME"),
        ("name=.hidden", "E-CHECK-NAME"),
        ("name=-rf", "E-CHECK-NAME"),
        ("name=a b", "E-CHECK-NAME"),
        ("name=a/b", "E-CHECK-NAME"),
        ("name=a\\b", "E-CHECK-NAME"),
        ("name=ünïcödé", "E-CHECK-NAME"),
        ("name=x..y", "E-CHECK-NAME"),
        ("name=a" + "b" * 64, "E-CHECK-NAME"),
        ("name=null", "E-SCHEMA-TYPE"),
        ("name=[a]", "E-SCHEMA-TYPE"),
        ("name=x: y", "E-SCHEMA-TYPE"),
        ("train.0.name=../../elsewhere", "E-CHECK-NAME"),
        ("train.0.name=''", "E-CHECK-NAME"),
        ("train.0.name=/tmp", "E-CHECK-NAME"),
        ("train.1.name=large", "E-CHECK-STAGE-NAME"),
        ("train.0.name=generated", "E-CHECK-STAGE-NAME"),
        ("train.0.name=router", "E-CHECK-STAGE-NAME"),
        (f"+models.../up={MODEL}", "E-OVERRIDE-SYNTAX"),
        (f"+models.a b={MODEL}", "E-CHECK-NAME"),
        (f"+models.-x={MODEL}", "E-CHECK-NAME"),
        ("+projections.large={from: large, to: small}", "E-CHECK-NAME"),
        ("+projections.x y={from: large, to: small}", "E-CHECK-NAME"),
    ],
)
def test_names_that_would_become_paths(override, code):
    assert_clean(run_cli(["check", QUICKSTART, override]), "cli:1:", code)
