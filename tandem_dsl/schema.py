"""Stage 2, validate: the JSON Schema, generated from `tandem_dsl.model`, and its errors.

Draft 2020-12, `additionalProperties: false` everywhere. Integer fields also accept an
expression string ("4 * ${models.small.d_model}"), evaluated in the resolve stage.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing

import jsonschema

from . import model
from .diagnostics import Collector, did_you_mean
from .source import Doc, path_str

EXPRESSION = {
    "type": "string",
    "pattern": r"(\$\{|[0-9])",
    "description": 'An integer expression, e.g. "4 * ${models.small.d_model}".',
}


BOUNDS = {"minimum": "minimum", "maximum": "maximum", "exclusive_minimum": "exclusiveMinimum"}


def yaml_name(f: dataclasses.Field) -> str:
    return f.metadata.get("yaml", f.name)


def fields(cls) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def has_default(f: dataclasses.Field) -> bool:
    return (
        f.default is not dataclasses.MISSING
        or f.default_factory is not dataclasses.MISSING
        or "default_expr" in f.metadata
        or "default_fn" in f.metadata
    )


@functools.cache
def hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _type_schema(tp, meta: dict, defs: dict) -> dict:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        branches = [_type_schema(a, meta, defs) for a in options]
        if type(None) in args:
            branches.append({"type": "null"})
        return branches[0] if len(branches) == 1 else {"anyOf": branches}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], {}, defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1], {}, defs)}
    if dataclasses.is_dataclass(tp):
        _define(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    bounds = {key: meta[k] for k, key in BOUNDS.items() if k in meta}
    if tp is int:
        bounds.setdefault("maximum", model.INT_MAX)
        return {"anyOf": [{"type": "integer", **bounds}, {"$ref": "#/$defs/expression"}]}
    if tp is float:
        return {"type": "number", **bounds}
    if tp is bool:
        return {"type": "boolean"}
    if tp is str:
        return {"type": "string", "enum": meta["enum"]} if "enum" in meta else {"type": "string"}
    raise TypeError(f"no schema for {tp}")


def _define(cls, defs: dict) -> dict:
    if cls.__name__ in defs:
        return defs[cls.__name__]
    node = {"type": "object", "additionalProperties": False, "properties": {}}
    defs[cls.__name__] = node
    required = []
    for f in fields(cls):
        prop = _type_schema(hints(cls)[f.name], dict(f.metadata), defs)
        prop = {**prop, "description": f.metadata["doc"]}
        if f.default is not dataclasses.MISSING and f.default is not None:
            prop["default"] = f.default
        node["properties"][yaml_name(f)] = prop
        if not has_default(f):
            required.append(yaml_name(f))
    if required:
        node["required"] = required
    return node


@functools.cache
def spec_schema() -> dict:
    defs: dict = {"expression": EXPRESSION}
    root = dict(_define(model.Spec, defs))
    del defs["Spec"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://tandem-dsl.dev/schema/spec-v1.json",
        "title": "tandem-dsl spec",
        **root,
        "$defs": defs,
    }


@functools.cache
def _validator():
    # JSON Schema counts 2.0 as an integer and NaN as a number; a spec does not.
    types_ = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {
            "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda _, v: (
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ),
        }
    )
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=types_)
    return cls(spec_schema())


def _leaf(error):
    """The most specific error inside anyOf branches (int-or-expression, X-or-null)."""
    while error.validator == "anyOf" and error.context:
        branches = error.validator_value
        if {"$ref": "#/$defs/expression"} in branches:
            if isinstance(error.instance, str):
                return error  # an int field given a string that is no expression
            context = [e for e in error.context if e.relative_schema_path[0] == 0]
        else:
            context = [e for e in error.context if e.validator_value != "null"]
            deeper = [e for e in context if e.validator != "type" or e.relative_path]
            if isinstance(error.instance, dict) and deeper:  # {kind: ngram, n: 0}: the n
                context = deeper
        if not context:
            return error
        error = max(context, key=jsonschema.exceptions.relevance)
    return error


def validate(doc: Doc, errors: Collector) -> None:
    """Appends one diagnostic per schema error (all of them, not just the first), and one per
    bad model or projection name."""
    validate_names(doc, errors)
    for raw in _validator().iter_errors(doc.tree):
        error = _leaf(raw)
        path = tuple(error.absolute_path)
        where = path_str(path) or "<top level>"
        kind = error.validator
        if kind == "additionalProperties":
            allowed = list(error.schema.get("properties", {}))
            for key in error.instance:
                if key not in allowed:
                    errors.error(
                        "E-SCHEMA-UNKNOWN-KEY",
                        f"unknown key '{key}' in {where}",
                        doc.key_origin(path + (key,)),
                        path_str(path + (key,)),
                        did_you_mean(key, allowed) or f"allowed keys: {', '.join(allowed)}",
                    )
        elif kind == "required":
            missing = error.message.split("'")[1]
            hint = "add `tandem: 1` as the first line" if missing == "tandem" else None
            errors.error(
                "E-SCHEMA-MISSING",
                f"missing required key '{missing}' in {where}",
                doc.key_origin(path) if path else doc.origin(path),
                path_str(path + (missing,)),
                hint or f"add `{missing}:` ({_doc_of(error.schema, missing)})",
            )
        elif kind == "enum":
            options = error.validator_value
            errors.error(
                "E-SCHEMA-ENUM",
                f"{error.instance!r} is not one of {', '.join(map(str, options))}",
                doc.origin(path),
                where,
                did_you_mean(str(error.instance), options)
                or f"write one of: {', '.join(map(str, options))}",
            )
        elif kind in ("minimum", "maximum", "exclusiveMinimum"):
            word = {"minimum": "at least", "maximum": "at most"}.get(kind, "more than")
            errors.error(
                "E-SCHEMA-RANGE",
                f"{error.instance!r} is out of range: must be {word} {error.validator_value}",
                doc.origin(path),
                where,
                _range_hint(error.schema),
            )
        elif kind == "anyOf" and isinstance(error.instance, str):
            errors.error(
                "E-SCHEMA-TYPE",
                f"{error.instance!r} is not an integer or an integer expression",
                doc.origin(path),
                where,
                'write an integer, or an expression such as "2 * ${models.small.n_layers}"',
            )
        else:
            expected = error.validator_value if kind == "type" else error.message
            errors.error(
                "E-SCHEMA-TYPE",
                _type_message(error.instance, expected) if kind == "type" else error.message,
                doc.origin(path),
                where,
                _type_hint(error.instance, expected),
            )


def validate_names(doc: Doc, errors: Collector) -> None:
    """Model and projection names, before default expressions (`${models.<name>.d_model}`)
    are built from them."""
    for table in ("models", "projections"):
        entries = doc.tree.get(table)
        for name in entries if isinstance(entries, dict) else ():
            if not model.valid_name(name):
                path = (table, name)
                errors.error(
                    "E-CHECK-NAME",
                    model.bad_name_message(name),
                    doc.key_origin(path),
                    path_str(path),
                    model.NAME_HINT,
                )


def _type_message(value, expected) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    return f"{value!r} is not of type {expected}"


def _range_hint(schema: dict) -> str:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    lo_bracket = "[" if "minimum" in schema else "("
    hi = schema.get("maximum")
    if lo is not None and hi is not None:
        return f"use a value in {lo_bracket}{lo}, {hi}]"
    if lo is not None:
        return f"use a value {'>=' if lo_bracket == '[' else '>'} {lo}"
    return f"use a value <= {hi}"


def _type_hint(value, expected) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "write a finite number"
    if expected == "integer" and isinstance(value, float) and value.is_integer():
        return f"write {int(value)} (an integer, without the decimal point or exponent)"
    if expected in ("integer", "number") and isinstance(value, str):
        return "write a number without quotes"
    if expected == "boolean":
        return "write true or false"
    return {
        "integer": "write an integer",
        "number": "write a number",
        "object": "write a mapping, e.g. {key: value} (see docs/spec-reference.md)",
        "array": "write a list, e.g. [a, b]",
        "string": "write text; quote it if YAML reads it as something else",
    }.get(expected, f"write a value of type {expected}")


def _doc_of(schema: dict, key: str) -> str:
    return schema.get("properties", {}).get(key, {}).get("description", "required")
