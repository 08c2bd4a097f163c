"""The stop-rule table: the spec's rule names and the compiler's builders agree, and each rule
the spec can name without a router builds from a decode section alone."""

from __future__ import annotations

import pytest

from compiler.decode.rules import RULES, Rule
from compiler.ir import AdaptiveIR, DecodeIR
from tandem_dsl.model import STOP_RULES


def test_the_spec_and_the_compiler_name_the_same_rules():
    assert set(RULES) == set(STOP_RULES)


@pytest.mark.parametrize("name", [n for n, needs in STOP_RULES.items() if "costs" not in needs])
def test_each_rule_builds_from_the_decode_section(name):
    d = DecodeIR(policy="adaptive", target="large", draft="small", gamma=3,
                 adaptive=AdaptiveIR(rule=name, max_gamma=6))  # fmt: skip
    rule = RULES[name](d, None)
    assert isinstance(rule, Rule) and hash(rule) == hash(RULES[name](d, None))


def test_expected_gain_needs_measured_costs():
    d = DecodeIR(policy="adaptive", target="large", draft="small",
                 adaptive=AdaptiveIR(rule="expected_gain", max_gamma=4))  # fmt: skip
    with pytest.raises(ValueError, match="measured costs"):
        RULES["expected_gain"](d, None)
    costs = {"small_ms": 0.5, "block_ms": {"1": 2.0, "2": 2.5, "4": 3.0}}
    rule = RULES["expected_gain"](d, costs)
    assert rule.block_costs == (2.0, 2.0, 2.5, 3.0, 3.0) and rule.small_cost == 0.5
