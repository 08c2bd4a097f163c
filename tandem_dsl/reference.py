"""The spec reference page (`docs/spec-reference.md`), generated from the typed spec."""

from __future__ import annotations

import dataclasses
import typing

from . import model
from .schema import fields, has_default, hints, yaml_name


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of name -> {_type_name(args[1])}"
    if args:
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return {int: "integer (or expression)", float: "number", bool: "boolean", str: "string"}[tp]


def _default(f: dataclasses.Field) -> str:
    if "default_expr" in f.metadata:
        return f"`{f.metadata['default_expr']}`"
    if "default_fn" in f.metadata:
        return "derived"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "see section" if dataclasses.is_dataclass(value) else f"`{value!r}`"
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`" if f.default is not None else "`null`"
    return "**required**"


def _sections():
    seen, order = set(), [model.Spec]
    while order:
        cls = order.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        for tp in hints(cls).values():
            stack = [tp]
            while stack:
                t = stack.pop()
                if dataclasses.is_dataclass(t):
                    order.append(t)
                stack.extend(typing.get_args(t))


def markdown() -> str:
    out = [
        "# Spec reference",
        "",
        "Generated from `tandem_dsl/model.py` by `tandemc schema --format md`; do not edit.",
        f"Spec language version: {model.SPEC_VERSION}. Integer fields also take expressions",
        '(`"4 * ${models.small.d_model}"`); `${a.b}` alone substitutes any value.',
        'Fields marked "(or from the weights)" are read from the weight file of a model whose',
        "`init.from` is `gguf` or `safetensors` when the spec leaves them out; a value stated",
        "there must agree with the file.",
    ]
    for cls in _sections():
        out += [
            "",
            f"## {cls.__name__}",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for f in fields(cls):
            meta = f.metadata
            extra = ""
            if "enum" in meta:
                extra = " One of: " + ", ".join(f"`{v}`" for v in meta["enum"]) + "."
            bounds = [
                f"min {meta['minimum']}" if "minimum" in meta else "",
                f"> {meta['exclusive_minimum']}" if "exclusive_minimum" in meta else "",
                f"max {meta['maximum']}" if "maximum" in meta else "",
            ]
            bounds = ", ".join(b for b in bounds if b)
            if bounds:
                extra += f" ({bounds})"
            required = _default(f) if has_default(f) else "**required**"
            if meta.get("from_weights"):
                required += " (or from the weights)"
            out.append(
                f"| `{yaml_name(f)}` | {_type_name(hints(cls)[f.name])} | {required} | "
                f"{meta['doc']}{extra} |"
            )
    return "\n".join(out) + "\n"
