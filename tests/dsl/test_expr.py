"""Tests for the spec expression language (tandem_dsl/expr.py, tandem_dsl/expr.lark)."""

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem_dsl import expr as E

VALUES = {
    "models.small.n_layers": 4,
    "models.large.n_layers": 12,
    "models.large.d_model": 512,
    "wiring.0.block": 2,
    "zero": 0,
    "flag": True,
    "norm": "rmsnorm",
    "lr": 3e-3,
}
SIZES = {"small": 4, "large": 12}


def lookup(path):
    return VALUES[path]


def ev(text):
    return E.evaluate(text, lookup)


def error(fn, *args):
    with pytest.raises(E.ExprError) as info:
        fn(*args)
    e = info.value
    assert e.end > e.start
    assert "__ANON" not in e.message and "__ANON" not in (e.hint or "")
    return e


def layer_map(text, sizes=SIZES):
    return E.parse_layer_map(text, lookup, sizes, "small", "large")


# -- arithmetic -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", 42),
        ("0", 0),
        ("4 * 64", 256),
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("10 - 4 - 3", 3),  # left associative
        ("100 // 10 // 3", 3),
        ("2 * 3 % 4", 2),  # * and % share a level, left to right
        ("-7 // 2", -4),  # unary minus binds tighter than //, floor semantics
        ("-(7 // 2)", -3),
        ("7 % -3", -2),
        ("-7 % 3", 2),
        ("2 * -3", -6),
        ("--3", 3),
        ("1 - -1", 2),
        ("  \t4*64\n", 256),
        ("4 * ${models.large.d_model}", 2048),
        ("${models.large.n_layers} // ${models.small.n_layers}", 3),
        ("${wiring.0.block} + 1", 3),
        ("(${ models . small . n_layers })", 4),
    ],
)
def test_arithmetic(text, value):
    assert ev(text) == value


def test_evaluate_accepts_parsed_expr():
    node = E.parse("${models.small.n_layers} * 2")
    assert isinstance(node, E.BinOp)
    assert E.evaluate(node, lookup) == 8


def test_parse_positions():
    node = E.parse("1 + ${a.b} * 3")
    assert (node.start, node.end) == (0, 14)
    assert (node.right.start, node.right.end) == (4, 14)
    assert node.right.left == E.Ref("a.b", 4, 10)


# -- references -------------------------------------------------------------------------------


def test_references_in_source_order():
    refs = E.references(
        "small[0:${a.b}] <- large[${c} : ${wiring.0.block}], small[${d}] <- large[0]"
    )
    assert [(r.path, r.start, r.end) for r in refs] == [
        ("a.b", 8, 14),
        ("c", 25, 29),
        ("wiring.0.block", 32, 49),
        ("d", 58, 62),
    ]
    assert E.references("4 * 64") == []
    assert [r.path for r in E.references(E.parse("${x} - ${y}"))] == ["x", "y"]


def test_is_whole_reference():
    assert E.is_whole_reference("${a.b}") == "a.b"
    assert E.is_whole_reference("  ${wiring.0.block} ") == "wiring.0.block"
    assert E.is_whole_reference("${a.b} + 1") is None
    assert E.is_whole_reference("(${a.b})") is None
    assert E.is_whole_reference("a.b") is None
    assert E.is_whole_reference("${a.b") is None
    assert E.is_whole_reference(3) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4 * 64", True),
        ("-1", True),
        ("(2)", True),
        ("${a.b}", True),
        ("run-${a}", True),  # contains ${: must parse (and will fail loudly)
        ("${broken", True),
        ("rmsnorm", False),
        ("hello world", False),
        ("42", False),
        ("3e-3", False),
        ("2024-01-01", False),
        ("1.2.3", False),
        ("10:30", False),
        ("a - b", False),
        ("", False),
        (42, False),
    ],
)
def test_is_expression(text, expected):
    assert E.is_expression(text) is expected


# -- ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, length, expected",
    [
        (":", 5, [0, 1, 2, 3, 4]),
        ("2:", 5, [2, 3, 4]),
        (":4", 5, [0, 1, 2, 3]),
        ("0:8:2", 10, [0, 2, 4, 6]),
        ("::3", 10, [0, 3, 6, 9]),
        ("-2:", 5, [3, 4]),
        (":-1", 5, [0, 1, 2, 3]),
        ("-4:-1:2", 5, [1, 3]),
        ("::-1", 4, [3, 2, 1, 0]),
        ("3:3", 5, []),
        ("0:5", 5, [0, 1, 2, 3, 4]),
        ("-5:", 5, [0, 1, 2, 3, 4]),
        ("1:${models.small.n_layers}", 5, [1, 2, 3]),
        ("${wiring.0.block} * 2 : ", 6, [4, 5]),
    ],
)
def test_ranges_follow_python_slices(text, length, expected):
    assert list(E.evaluate_range(text, lookup, length)) == expected


def test_range_errors():
    e = error(E.evaluate_range, "0:6", lookup, 5)
    assert (e.code, e.start, e.end) == ("E-EXPR-VALUE", 2, 3)
    assert "-5..5" in e.message
    e = error(E.evaluate_range, "-6:", lookup, 5)
    assert (e.code, e.start, e.end) == ("E-EXPR-VALUE", 0, 2)
    e = error(E.evaluate_range, "0:4:${zero}", lookup, 5)
    assert (e.code, e.start, e.end, e.message) == (
        "E-EXPR-VALUE",
        4,
        11,
        "range step cannot be zero",
    )
    e = error(E.evaluate_range, "4", lookup, 5)
    assert (e.code, e.start) == ("E-EXPR-SYNTAX", 1)
    assert (
        e.message == "unexpected end of expression; expected one of: '+', '-', '*', '//', '%', ':'"
    )
    e = error(E.evaluate_range, E.parse("4"), lookup, 5)
    assert e.code == "E-EXPR-TYPE"
    e = error(E.evaluate, E.parse("1:4"), lookup)
    assert (e.code, e.start, e.end) == ("E-EXPR-TYPE", 0, 3)


# -- layer maps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("small[0:2] <- large[4:8:2], small[2:] <- large[-1]", (4, 6, 12, 12)),
        ("small[:] <- large[-1]", (12, 12, 12, 12)),
        ("small[:] <- large[0]", (0, 0, 0, 0)),  # embeddings
        ("small[0:4] <- large[3:13:3]", (3, 6, 9, 12)),
        ("small[:] <- large[-4:]", (9, 10, 11, 12)),
        ("small[0:2] <- large[1:3]", (1, 2, None, None)),
        ("small[3] <- large[5]", (None, None, None, 5)),
        ("small[-1] <- large[7:8]", (None, None, None, 7)),
        ("small[::-1] <- large[1:5]", (4, 3, 2, 1)),
        ("small[0:${models.small.n_layers}] <- large[${models.large.n_layers}]", (12,) * 4),
        ("small[1:3]<-large[2*2:4+4:2]", (None, 4, 6, None)),
        ("small[:2] <- large[0], small[2:] <- large[12]", (0, 0, 12, 12)),
    ],
)
def test_layer_maps(text, expected):
    assert layer_map(text) == expected


def test_layer_map_size_mismatch_names_both_sizes():
    text = "small[0:2] <- large[4:12:3]"
    e = error(layer_map, text)
    assert (e.code, e.start, e.end) == ("E-EXPR-VALUE", 14, 27)
    assert e.message == "small[0:2] selects 2 layers but large[4:12:3] selects 3"
    assert "large[-1]" in e.hint


@pytest.mark.parametrize(
    "text, start, end, words",
    [
        ("small[0:6] <- large[0:6]", 8, 9, ["6", "-4..4"]),
        ("small[4] <- large[0]", 6, 7, ["index 4", "-4..3"]),
        ("small[0] <- large[13]", 18, 20, ["index 13", "-13..12", "embeddings"]),
        ("small[0] <- large[-14]", 18, 21, ["-14", "-13..12"]),
        ("small[:] <- large[0:14]", 20, 22, ["14", "-13..13"]),
    ],
)
def test_layer_map_index_out_of_range(text, start, end, words):
    e = error(layer_map, text)
    assert (e.code, e.start, e.end) == ("E-EXPR-VALUE", start, end)
    for word in words:
        assert word in e.message + " " + (e.hint or "")


def test_layer_map_dst_mapped_twice():
    text = "small[0:2] <- large[0:2], small[1:3] <- large[5:7]"
    e = error(layer_map, text)
    assert (e.code, e.start, e.end) == ("E-EXPR-VALUE", 26, 36)
    assert e.message == "small layer 1 is mapped twice"


@pytest.mark.parametrize(
    "text, start, end, want",
    [
        ("smal[0:2] <- large[0:2]", 0, 4, "small"),
        ("small[0:2] <- larg[0:2]", 14, 18, "large"),
        ("large[0:2] <- small[0:2]", 0, 5, "small"),
        ("small[0] <- large[1], small[1] <- big[2]", 34, 37, "large"),
    ],
)
def test_layer_map_wrong_model_names(text, start, end, want):
    e = error(layer_map, text)
    assert (e.code, e.start, e.end) == ("E-EXPR-VALUE", start, end)
    assert e.hint == f"did you mean {want!r}?"


def test_layer_map_other_errors():
    e = error(layer_map, "small[2:2] <- large[0]")
    assert (e.code, e.start, e.end) == ("E-EXPR-VALUE", 0, 10)
    e = error(layer_map, "small[::0] <- large[0]")
    assert (e.code, e.start, e.end) == ("E-EXPR-VALUE", 8, 9)
    e = error(layer_map, "small[0:${nope.n}] <- large[0]")
    assert (e.code, e.start, e.end) == ("E-EXPR-REF", 8, 17)
    e = error(layer_map, "small[${flag}] <- large[0]")
    assert (e.code, e.start, e.end) == ("E-EXPR-TYPE", 6, 13)
    e = error(layer_map, "small[0] <- large[1 // ${zero}]")
    assert (e.code, e.start, e.end) == ("E-EXPR-VALUE", 23, 30)
    e = error(layer_map, "4 * 64")
    assert (e.code, e.start, e.message) == ("E-EXPR-SYNTAX", 0, "unexpected '4'; expected name")


# -- error codes and offsets ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, code, start, end",
    [
        ("${nope.x} + 1", "E-EXPR-REF", 0, 9),
        ("1 + ${models.small.nope}", "E-EXPR-REF", 4, 24),
        ("${flag} + 1", "E-EXPR-TYPE", 0, 7),
        ("2 * ${norm}", "E-EXPR-TYPE", 4, 11),
        ("${lr}", "E-EXPR-TYPE", 0, 5),
        ("8 // (${zero})", "E-EXPR-VALUE", 6, 13),
        ("8 % (4 - 4)", "E-EXPR-VALUE", 5, 10),
        ("4 / 2", "E-EXPR-SYNTAX", 2, 3),
        ("4 *", "E-EXPR-SYNTAX", 3, 4),
        ("4 *   ", "E-EXPR-SYNTAX", 6, 7),
        ("", "E-EXPR-SYNTAX", 0, 1),
        ("(1 + 2", "E-EXPR-SYNTAX", 6, 7),
        ("1 + 2)", "E-EXPR-SYNTAX", 5, 6),
        ("4 * d_model", "E-EXPR-SYNTAX", 4, 11),
        ("1.5", "E-EXPR-SYNTAX", 1, 2),
        ("007", "E-EXPR-SYNTAX", 0, 3),
        ("${a.}", "E-EXPR-SYNTAX", 4, 5),
        ("${a b}", "E-EXPR-SYNTAX", 4, 5),
        ("$x", "E-EXPR-SYNTAX", 0, 1),
        ("2 ** 3", "E-EXPR-SYNTAX", 3, 4),
        ("max(1, 2)", "E-EXPR-SYNTAX", 0, 3),
        ("0:4", "E-EXPR-SYNTAX", 1, 2),
    ],
)
def test_error_codes_and_offsets(text, code, start, end):
    e = error(ev, text)
    assert (e.code, e.start, e.end) == (code, start, end)


def test_messages_name_tokens_readably():
    assert error(E.parse, "small[0:2").message == (
        "unexpected end of expression; expected one of: '+', '-', '*', '//', '%', ':', ']'"
    )
    assert (
        error(ev, "4 *").message
        == "unexpected end of expression; expected one of: integer, '${', '(', '-'"
    )
    assert error(E.parse, "small[0:2] large[1]").message == "unexpected 'large'; expected '<-'"
    assert error(E.parse, "small[0:2] <-").message.endswith("expected name")
    assert error(E.parse, "${a.b").message.endswith("expected one of: '.', '}'")
    e = error(ev, "4 / 2")
    assert e.hint == "use '//' for integer division"
    assert "'//'" in e.message
    assert "${...d_model}" in error(ev, "4 * d_model").hint
    assert error(ev, "4 ${a}").hint == E.SYNTAX_HINT
    # After a complete operand every operator is offered, even where LALR already reduced.
    assert "'*'" in error(E.parse, "4 4").message
    assert "'*'" in error(ev, "0:4").message


def test_every_terminal_has_a_display_name():
    terminals = {t.name for t in E._parser().terminals} - {"WS"}
    assert terminals <= set(E._DISPLAY)


def test_error_is_an_exception_with_fields():
    e = error(ev, "${nope.x}")
    assert isinstance(e, Exception)
    assert e.hint.startswith("check the path")
    assert "E-EXPR-REF" in str(e) and "${nope.x}" in str(e)
    again = pickle.loads(pickle.dumps(e))
    assert (again.code, again.message, again.start, again.end) == (e.code, e.message, 0, 9)
    assert error(ev, "${nope}").hint.startswith("references are absolute paths")


def test_deep_nesting_is_an_error_not_a_crash():
    assert ev("(" * 50 + "-" * 50 + "1" + ")" * 50) == 1
    assert error(ev, "(" * 5000 + "1" + ")" * 5000).code == "E-EXPR-SYNTAX"


def test_no_eval_of_python():
    for text in ["__import__('os')", "open('x')", "1 if 1 else 2", "[1, 2]", "lambda: 1"]:
        assert error(ev, text).code == "E-EXPR-SYNTAX"


# -- property: arithmetic agrees with Python's integer arithmetic --------------------------------

REF_VALUES = {"v.a": 7, "v.b": -3, "v.c": 0, "w.0.x": 12}


@st.composite
def arith(draw, depth=0):
    """(dsl text, python text) pairs; minimal parenthesisation exercises precedence."""
    if depth > 4 or draw(st.integers(0, 2)) == 0:
        if draw(st.booleans()):
            n = draw(st.integers(0, 10**6))
            return str(n), str(n)
        path = draw(st.sampled_from(sorted(REF_VALUES)))
        return "${" + path + "}", f"({REF_VALUES[path]})"
    kind = draw(st.sampled_from(["bin", "bin", "neg", "paren"]))
    if kind == "neg":
        text, py = draw(arith(depth + 1))
        return f"-{text}", f"-{py}"
    if kind == "paren":
        text, py = draw(arith(depth + 1))
        return f"({text})", f"({py})"
    op = draw(st.sampled_from(["+", "-", "*", "//", "%"]))
    (lt, lp), (rt, rp) = draw(arith(depth + 1)), draw(arith(depth + 1))
    space = draw(st.sampled_from(["", " ", "  "]))
    return f"{lt}{space}{op}{space}{rt}", f"{lp} {op} {rp}"


@settings(max_examples=200, deadline=None)
@given(arith())
def test_arithmetic_matches_python(pair):
    text, py = pair
    try:
        expected = eval(py, {"__builtins__": {}})  # test oracle only; the library never evals
    except ZeroDivisionError:
        assert error(E.evaluate, text, REF_VALUES.__getitem__).code == "E-EXPR-VALUE"
        return
    assert E.evaluate(text, REF_VALUES.__getitem__) == expected
    assert E.is_expression(text) or text.isdigit()
