"""Stage 3, resolve: defaults, `${...}` references and expressions -> a typed `Spec`.

References are resolved on demand with a stack, which visits values in dependency order
and reports a cycle with its members. Defaults that depend on other values (n_kv_heads,
d_ff, vocab, seq_len) are expressions too, so `render --provenance` can show them.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing

from . import expr, model
from .diagnostics import DEFAULT, Collector
from .schema import fields, hints, yaml_name
from .source import Doc, path_str


def dataclass_of(tp):
    """The dataclass inside `X`, `X | None` (but not a union with a str)."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _is_int(tp) -> bool:
    return tp is int or (int in typing.get_args(tp) and str not in typing.get_args(tp))


def _default_tree(cls) -> dict:
    out = {}
    for f in fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[yaml_name(f)] = (
                _default_tree(type(value)) if dataclasses.is_dataclass(value) else value
            )
        elif f.default is not dataclasses.MISSING:
            out[yaml_name(f)] = f.default
    return out


def fill_defaults(doc: Doc) -> Doc:
    """Adds every missing optional key with its default (origin `default`)."""
    doc = Doc(copy.deepcopy(doc.tree), dict(doc.origins), dict(doc.key_origins), doc.files)

    def walk(cls, node: dict, path: tuple):
        for f in fields(cls):
            key, sub = yaml_name(f), path + (yaml_name(f),)
            tp = hints(cls)[f.name]
            if key not in node:
                if "default_expr" in f.metadata:
                    node[key] = f.metadata["default_expr"].replace("{self}", path_str(path))
                elif "default_fn" in f.metadata:
                    node[key] = f.metadata["default_fn"](path_str(path), doc.tree)
                elif f.default_factory is not dataclasses.MISSING:
                    value = f.default_factory()
                    node[key] = (
                        _default_tree(type(value)) if dataclasses.is_dataclass(value) else value
                    )
                elif f.default is not dataclasses.MISSING:
                    node[key] = f.default
                else:
                    continue
                doc.origins[sub] = DEFAULT
            value = node[key]
            inner = dataclass_of(tp)
            if inner is not None and isinstance(value, dict):
                walk(inner, value, sub)
            elif typing.get_origin(tp) in (list, dict):
                item_cls = typing.get_args(tp)[-1]
                if dataclasses.is_dataclass(item_cls):
                    items = value.items() if isinstance(value, dict) else enumerate(value)
                    for k, v in items:
                        if isinstance(v, dict):
                            walk(item_cls, v, sub + (k,))
            elif key == "draft" and isinstance(value, dict):
                walk(model.NgramDraft, value, sub)

    walk(model.Spec, doc.tree, ())
    return doc


class _Resolver:
    def __init__(self, doc: Doc, errors: Collector):
        self.doc, self.errors = doc, errors
        self.tree = doc.tree
        self.done: set[tuple] = set()
        self.stack: list[tuple] = []
        self.reported_cycles: set[frozenset] = set()

    def lookup_path(self, dotted: str):
        path = tuple(int(p) if p.lstrip("-").isdigit() else p for p in dotted.split("."))
        node = self.tree
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                raise KeyError(dotted) from None
        return self.resolve(path)

    def resolve(self, path: tuple):
        """The final value at `path`, resolving it (and what it references) first."""
        value = self._get(path)
        if path in self.done or not isinstance(value, str):
            return value
        if path in self.stack:
            cycle = self.stack[self.stack.index(path) :] + [path]
            key = frozenset(cycle)
            if key not in self.reported_cycles:
                self.reported_cycles.add(key)
                names = " -> ".join(path_str(p) for p in cycle)
                self.errors.error(
                    "E-REF-CYCLE",
                    f"reference cycle: {names}",
                    self.doc.origin(path),
                    path_str(path),
                    "break the cycle by writing a number in one of these places",
                )
            raise _Cycle()
        self.stack.append(path)
        try:
            value = self._evaluate(path, value)
        finally:
            self.stack.pop()
        self._set(path, value)
        self.done.add(path)
        return value

    def _evaluate(self, path: tuple, text: str):
        whole = expr.is_whole_reference(text)
        if whole is not None:
            try:
                return self.lookup_path(whole)
            except KeyError:
                raise self._expr_error(path, text, expr.references(text)[0], whole) from None
        if not self._is_int_field(path):
            return text
        try:
            return expr.evaluate(text, self.lookup_path)
        except expr.ExprError as e:
            origin = self.doc.origin(path)
            if origin.is_file or origin.source.startswith("cli:"):
                origin = origin.shifted(e.start, e.end)
            self.errors.error(e.code, e.message, origin, path_str(path), e.hint)
            raise _Reported() from None

    def _expr_error(self, path, text, ref, dotted):
        origin = self.doc.origin(path)
        if origin.is_file:
            origin = origin.shifted(ref.start, ref.end)
        self.errors.error(
            "E-EXPR-REF",
            f"unknown reference '${{{dotted}}}'",
            origin,
            path_str(path),
            "references are absolute paths such as ${models.large.d_model}",
        )
        return _Reported()

    def _is_int_field(self, path: tuple) -> bool:
        tp = field_type(path)
        return tp is not None and _is_int(tp)

    def _get(self, path):
        node = self.tree
        for part in path:
            node = node[part]
        return node

    def _set(self, path, value):
        node = self.tree
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value


class _Reported(Exception):
    """An error already added to the collector."""


class _Cycle(_Reported):
    pass


def field_type(path: tuple):
    """The annotated type of the spec field at `path`, or None if it is not a field."""
    tp = model.Spec
    for part in path:
        cls = dataclass_of(tp)
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        if cls is None and union and str in typing.get_args(tp):  # Decode.draft
            cls = model.NgramDraft
        if cls is not None:
            match = [f for f in fields(cls) if yaml_name(f) == part]
            if not match:
                return None
            tp = hints(cls)[match[0].name]
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    return tp


def resolve(doc: Doc, errors: Collector) -> Doc:
    """Evaluates every reference and expression in place (on a copy)."""
    doc = fill_defaults(doc)
    resolver = _Resolver(doc, errors)

    def walk(node, path):
        if isinstance(node, dict):
            for key in list(node):
                walk(node[key], path + (key,))
        elif isinstance(node, list):
            for i in range(len(node)):
                walk(node[i], path + (i,))
        elif isinstance(node, str):
            try:
                resolver.resolve(path)
            except _Reported:
                pass

    walk(doc.tree, ())
    _check_ranges(doc, errors)
    return doc


def _check_ranges(doc: Doc, errors: Collector) -> None:
    """Bounds of integer fields that came from expressions (the schema saw strings). A value
    the spec left to its default (d_ff from d_model) is reported only when no given value is:
    the cause is the given one."""
    given, derived = Collector(errors.stage), Collector(errors.stage)

    def walk(cls, node, path):
        if not isinstance(node, dict):
            return
        for f in fields(cls):
            key = yaml_name(f)
            if key not in node:
                continue
            value, sub, tp = node[key], path + (key,), hints(cls)[f.name]
            inner = dataclass_of(tp)
            if inner is not None:
                walk(inner, value, sub)
            elif typing.get_origin(tp) in (list, dict) and dataclasses.is_dataclass(
                typing.get_args(tp)[-1]
            ):
                items = value.items() if isinstance(value, dict) else enumerate(value)
                for k, v in items:
                    walk(typing.get_args(tp)[-1], v, sub + (k,))
            elif _is_int(tp) and isinstance(value, int) and not isinstance(value, bool):
                lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum", model.INT_MAX)
                if (lo is not None and value < lo) or value > hi:
                    low = lo is not None and value < lo
                    out = derived if doc.origins.get(sub) is DEFAULT else given
                    out.error(
                        "E-VALUE-RANGE",
                        f"{key} evaluates to {value}: must be "
                        + (f"at least {lo}" if low else f"at most {hi}"),
                        doc.origin(sub),
                        path_str(sub),
                        f.metadata.get("hint")
                        or f"change the expression or the values it reads so that {key} is "
                        + (f">= {lo}" if low else f"<= {hi}"),
                    )

    walk(model.Spec, doc.tree, ())
    for d in given.diagnostics or derived.diagnostics:
        errors.add(d)


def to_spec(tree: dict) -> model.Spec:
    """Builds the typed spec from a resolved, validated tree."""
    return _build(model.Spec, tree)


def _build(cls, node: dict):
    kwargs = {}
    for f in fields(cls):
        key = yaml_name(f)
        if key in node:
            kwargs[f.name] = _value(hints(cls)[f.name], node[key])
    return cls(**kwargs)


def _value(tp, value):
    if value is None:
        return None
    inner = dataclass_of(tp)
    if inner is not None and isinstance(value, dict):
        return _build(inner, value)
    origin = typing.get_origin(tp)
    if origin is list:
        item = typing.get_args(tp)[0]
        return [_value(item, v) for v in value]
    if origin is dict:
        item = typing.get_args(tp)[1]
        return {k: _value(item, v) for k, v in value.items()}
    if isinstance(value, dict):  # Decode.draft given as a mapping
        return _build(model.NgramDraft, value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
