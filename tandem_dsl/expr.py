"""The expression language used inside spec string values (docs/architecture.md).

Integer arithmetic (``+ - * // %``, unary minus, parentheses), ``${a.b.c}`` references,
half-open ranges ``a:b[:step]`` and layer maps ``dst[range] <- src[range], ...``.
The grammar lives in ``expr.lark`` (LALR, positions on). There is no ``eval`` and there are
no function calls. Every error is an :class:`ExprError` with a code and a character span.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

Lookup = Callable[[str], Any]


class ExprError(Exception):
    """An error at ``text[start:end]`` of an expression (0-based, end exclusive, never empty)."""

    def __init__(self, code: str, message: str, start: int, end: int, hint: str | None = None):
        super().__init__(code, message, start, end, hint)  # args mirror __init__: picklable
        self.code, self.message, self.hint = code, message, hint
        self.start, self.end = start, max(end, start + 1)

    def __str__(self) -> str:
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"error[{self.code}] at {self.start}: {self.message}{hint}"


# ---------------------------------------------------------------------------------------------
# AST. Every node carries its span in the source text.


@dataclass(frozen=True)
class Num:
    value: int
    start: int
    end: int


@dataclass(frozen=True)
class Ref:
    path: str
    start: int
    end: int


@dataclass(frozen=True)
class Neg:
    operand: Expr
    start: int
    end: int


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * // %
    left: Expr
    right: Expr
    start: int
    end: int


@dataclass(frozen=True)
class Range:
    lo: Expr | None
    hi: Expr | None
    step: Expr | None
    start: int
    end: int


@dataclass(frozen=True)
class Select:
    """``model[sel]``; ``sel`` is a Range or a single integer expression (an index)."""

    model: str
    sel: Expr
    start: int
    end: int


@dataclass(frozen=True)
class Mapping:
    dst: Select
    src: Select
    start: int
    end: int


@dataclass(frozen=True)
class LayerMap:
    mappings: tuple[Mapping, ...]
    start: int
    end: int


Expr = Num | Ref | Neg | BinOp | Range | LayerMap

# ---------------------------------------------------------------------------------------------
# Parsing.

_STARTS = {"any": "start", "int": "int_only", "range": "range_only", "layer_map": "layer_map"}
# Display names for every terminal, in the order alternatives are listed in messages.
_DISPLAY = {
    "INT": "integer",
    "REF_OPEN": "'${'",
    "LPAR": "'('",
    "NAME": "name",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH2": "'//'",
    "PERCENT": "'%'",
    "DOT": "'.'",
    "RBRACE": "'}'",
    "RPAR": "')'",
    "COLON": "':'",
    "LBRACK": "'['",
    "RBRACK": "']'",
    "LARROW": "'<-'",
    "COMMA": "','",
    "$END": "end of expression",
}
_HINTS = {
    "/": "use '//' for integer division",
    ".": "only integers are supported",
    "$": "references are written ${a.b.c}",
    "{": "references are written ${a.b.c}",
}
_OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "%": operator.mod,
}


@functools.cache
def _parser() -> lark.Lark:
    grammar = Path(__file__).with_name("expr.lark").read_text()
    return lark.Lark(
        grammar,
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        start=list(_STARTS.values()),
    )


def _expected(text: str, pos: int, start: str, fallback: set[str]) -> str:
    """Readable list of the terminals the parser accepts after ``text[:pos]``."""
    try:
        interactive = _parser().parse_interactive(text[:pos], start=start)
        interactive.exhaust_lexer()
        names = interactive.accepts() or fallback
    except UnexpectedInput:
        names = fallback
    shown = [d for n, d in _DISPLAY.items() if n in names]
    return shown[0] if len(shown) == 1 else "one of: " + ", ".join(shown)


SYNTAX_HINT = 'integer expressions use + - * // % ( ) and ${references}, e.g. "2 * ${x.y} + 1"'


def _syntax_error(text: str, e: UnexpectedInput, start: str) -> ExprError:
    if isinstance(e, UnexpectedToken) and e.token.type != "$END":
        lo, hi, found = e.token.start_pos, e.token.end_pos, e.token.value
        expected = _expected(text, lo, start, set(e.expected))
        hint = _HINTS.get(found, SYNTAX_HINT)
        if e.token.type == "NAME" and "REF_OPEN" in e.expected:
            hint = f"to use a spec value, write a reference with its full path: ${{...{found}}}"
        return ExprError(
            "E-EXPR-SYNTAX", f"unexpected {found!r}; expected {expected}", lo, hi, hint
        )
    if isinstance(e, UnexpectedCharacters):
        lo, char = e.pos_in_stream, text[e.pos_in_stream]
        expected = _expected(text, lo, start, set(e.allowed))
        msg = f"unexpected character {char!r}; expected {expected}"
        return ExprError("E-EXPR-SYNTAX", msg, lo, lo + 1, _HINTS.get(char, SYNTAX_HINT))
    assert isinstance(e, UnexpectedToken | UnexpectedEOF)
    expected = _expected(text, len(text), start, set(e.expected))
    msg = f"unexpected end of expression; expected {expected}"
    return ExprError(
        "E-EXPR-SYNTAX",
        msg,
        len(text),
        len(text) + 1,
        "the expression stops too early: complete it",
    )


def _build(t: Any) -> Any:
    """Lark tree -> AST (None stays None)."""
    if t is None:
        return None
    kind, kids = str(t.data), t.children
    if kind in ("start", "int_only", "range_only"):
        return _build(kids[0])
    span = (t.meta.start_pos, t.meta.end_pos)
    if kind == "num":
        if len(kids[0]) > 1 and kids[0].startswith("0"):
            msg = f"integer literals cannot have leading zeros: {str(kids[0])!r}"
            raise ExprError("E-EXPR-SYNTAX", msg, *span, f"write {int(kids[0])}")
        return Num(int(kids[0]), *span)
    if kind == "ref":
        return Ref(".".join(str(k) for k in kids if k.type in ("NAME", "INT")), *span)
    if kind == "paren":
        return _build(kids[1])
    if kind == "neg":
        return Neg(_build(kids[1]), *span)
    if kind == "binop":
        return BinOp(str(kids[1]), _build(kids[0]), _build(kids[2]), *span)
    if kind == "range":
        parts: list[Any] = [None, None, None]
        i = 0
        for k in kids:
            if isinstance(k, lark.Token) and k.type == "COLON":
                i += 1
            elif k is not None:
                parts[i] = _build(k)
        return Range(*parts, *span)
    if kind == "select":
        return Select(str(kids[0]), _build(kids[2]), *span)
    if kind == "mapping":
        return Mapping(_build(kids[0]), _build(kids[2]), *span)
    if kind == "layer_map":
        return LayerMap(tuple(_build(k) for k in kids if isinstance(k, lark.Tree)), *span)
    raise AssertionError(f"unhandled rule {kind}")


@functools.lru_cache(maxsize=4096)
def parse(text: str, kind: str = "any") -> Expr:
    """Parse ``text``; ``kind`` restricts it to "int", "range" or "layer_map" (default "any")."""
    start = _STARTS[kind]
    try:
        return _build(_parser().parse(text, start=start))
    except UnexpectedInput as e:
        raise _syntax_error(text, e, start) from None
    except RecursionError:
        raise ExprError(
            "E-EXPR-SYNTAX", "expression is nested too deeply", 0, len(text), "simplify it"
        ) from None


def _node(text_or_expr: str | Expr, kind: str) -> Expr:
    return parse(text_or_expr, kind) if isinstance(text_or_expr, str) else text_or_expr


# ---------------------------------------------------------------------------------------------
# Queries and evaluation.


def is_expression(text: str) -> bool:
    """True if ``text`` must be parsed as an expression.

    That is: it contains ``${`` (so a malformed reference is reported, not kept as text), or it is
    integer arithmetic with at least one operator (``"4 * 64"``, ``"-1"``). Plain words, bare
    numbers (``"42"``), dates, versions and floats (``"3e-3"``) are not expressions.
    """
    if not isinstance(text, str):
        return False
    if "${" in text:
        return True
    try:
        parse(text, "int")
    except ExprError:
        return False
    return not text.strip().isdigit()


def is_whole_reference(text: str) -> str | None:
    """``"${a.b}"`` alone (surrounding whitespace allowed) -> ``"a.b"``; otherwise None."""
    if not isinstance(text, str) or "${" not in text:
        return None
    try:
        node = parse(text)
    except ExprError:
        return None
    lo, hi = len(text) - len(text.lstrip()), len(text.rstrip())
    if isinstance(node, Ref) and (node.start, node.end) == (lo, hi):
        return node.path
    return None


def references(text_or_expr: str | Expr) -> list[Ref]:
    """Every ``${...}`` in source order."""
    found: list[Ref] = []

    def walk(node: Any) -> None:
        if isinstance(node, Ref):
            found.append(node)
        elif isinstance(node, tuple):
            for item in node:
                walk(item)
        elif dataclasses.is_dataclass(node):
            for field in dataclasses.fields(node):
                walk(getattr(node, field.name))

    walk(_node(text_or_expr, "any"))
    return sorted(found, key=lambda r: r.start)


def _describe(node: Expr) -> str:
    return {Range: "a range", LayerMap: "a layer map"}.get(type(node), "an integer expression")


def evaluate(text_or_expr: str | Expr, lookup: Lookup) -> int:
    """Evaluate an integer expression; ``lookup(path)`` resolves references (KeyError: unknown)."""
    node = _node(text_or_expr, "int")
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Ref):
        try:
            value = lookup(node.path)
        except KeyError:
            hint = "references are absolute paths, e.g. ${models.small.n_layers}"
            if "." in node.path:
                hint = "check the path: each part must be a key of the spec (models.<name>.d_model)"
            msg = f"unknown reference ${{{node.path}}}"
            raise _span_error("E-EXPR-REF", msg, node, hint) from None
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"${{{node.path}}} is {type(value).__name__} {value!r}, expected an integer"
            raise _span_error("E-EXPR-TYPE", msg, node, "refer to an integer field")
        return value
    if isinstance(node, Neg):
        return -evaluate(node.operand, lookup)
    if isinstance(node, BinOp):
        left, right = evaluate(node.left, lookup), evaluate(node.right, lookup)
        if right == 0 and node.op in ("//", "%"):
            msg = "division by zero" if node.op == "//" else "modulo by zero"
            raise _span_error("E-EXPR-VALUE", msg, node.right, "the right side evaluates to 0")
        return _OPS[node.op](left, right)
    msg = f"expected an integer expression, got {_describe(node)}"
    raise _span_error("E-EXPR-TYPE", msg, node, 'e.g. "2 * ${models.small.d_model}"')


def _span_error(code: str, msg: str, node: Any, hint: str | None = None) -> ExprError:
    return ExprError(code, msg, node.start, node.end, hint)


def _range(node: Range, lookup: Lookup, length: int, about: str | None) -> range:
    lo, hi, step = (
        None if e is None else evaluate(e, lookup) for e in (node.lo, node.hi, node.step)
    )
    for bound, expr in ((lo, node.lo), (hi, node.hi)):
        if bound is not None and not -length <= bound <= length:
            msg = f"range bound {bound} is out of range {-length}..{length}"
            raise _span_error("E-EXPR-VALUE", msg, expr, about)
    if step == 0:
        raise _span_error(
            "E-EXPR-VALUE", "range step cannot be zero", node.step, "omit it or use 1"
        )
    return range(*slice(lo, hi, step).indices(length))


def evaluate_range(text_or_expr: str | Expr, lookup: Lookup, length: int) -> range:
    """Apply a range ``a:b[:step]`` to ``length`` items with Python slice semantics.

    Unlike a Python slice, a bound outside ``-length..length`` is an error (not clamped).
    """
    node = _node(text_or_expr, "range")
    if not isinstance(node, Range):
        msg = f"expected a range like 0:4, got {_describe(node)}"
        raise _span_error("E-EXPR-TYPE", msg, node, "write start:stop or start:stop:step")
    return _range(node, lookup, length, None)


def _select(sel: Select, lookup: Lookup, length: int, about: str) -> tuple[list[int], bool]:
    """Indices selected by ``model[sel]`` and whether ``sel`` is a single index."""
    if isinstance(sel.sel, Range):
        return list(_range(sel.sel, lookup, length, about)), False
    index = evaluate(sel.sel, lookup)
    if not -length <= index < length:
        msg = f"index {index} is out of range {-length}..{length - 1}"
        raise _span_error("E-EXPR-VALUE", msg, sel.sel, about)
    return [index % length], True


def _layers(n: int) -> str:
    return f"{n} layer" if n == 1 else f"{n} layers"


def parse_layer_map(
    text: str, lookup: Lookup, sizes: dict[str, int], dst: str, src: str
) -> tuple[int | None, ...]:
    """Resolve a layer map such as ``"small[0:2] <- large[4:8:2], small[2:] <- large[-1]"``.

    Returns, for each layer j of ``dst``, the ``src`` residual stream it reads (None: unwired).
    Destination ranges apply to ``sizes[dst]`` layers. Source indices count residual streams
    0..L (0 = embeddings, L = ``sizes[src]`` = output of the last layer), so source ranges apply
    to L + 1 items and ``src[-1]`` is L. A single source index is broadcast to every selected
    destination layer; otherwise both sides must select the same number of layers.
    """
    node = parse(text, "layer_map")
    n_dst, n_src = sizes[dst], sizes[src]
    about_dst = f"{dst} has {_layers(n_dst)}"
    about_src = f"{src} has {_layers(n_src)}; its residual streams are 0..{n_src} (0 = embeddings)"
    wired: list[int | None] = [None] * n_dst
    for m in node.mappings:
        for side, want in ((m.dst, dst), (m.src, src)):
            if side.model != want:
                role = "destination" if side is m.dst else "source"
                msg = f"the {role} model here is {want!r}, not {side.model!r}"
                end = side.start + len(side.model)
                raise ExprError("E-EXPR-VALUE", msg, side.start, end, f"did you mean {want!r}?")
        dst_ids, _ = _select(m.dst, lookup, n_dst, about_dst)
        src_ids, single = _select(m.src, lookup, n_src + 1, about_src)
        dst_text, src_text = text[m.dst.start : m.dst.end], text[m.src.start : m.src.end]
        if not dst_ids:
            raise _span_error("E-EXPR-VALUE", f"{dst_text} selects no layers", m.dst, about_dst)
        if single:
            src_ids = src_ids * len(dst_ids)
        elif len(src_ids) != len(dst_ids):
            msg = f"{dst_text} selects {_layers(len(dst_ids))} but {src_text} selects "
            msg += str(len(src_ids))
            hint = (
                f"select as many layers on each side, or one source layer ({src}[-1]) to broadcast"
            )
            raise _span_error("E-EXPR-VALUE", msg, m.src, hint)
        for j, i in zip(dst_ids, src_ids, strict=True):
            if wired[j] is not None:
                msg = f"{dst} layer {j} is mapped twice"
                hint = "each destination layer may appear in only one mapping"
                raise _span_error("E-EXPR-VALUE", msg, m.dst, hint)
            wired[j] = i
    return tuple(wired)
