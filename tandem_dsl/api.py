"""The pipeline in one place: load -> overrides -> weights -> validate -> resolve -> check.

The weights stage fills in what a spec leaves to its weight files (`from_weights`).

Each stage collects all of its errors and raises one `SpecError` for them.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import from_weights, model
from .checks import run_checks
from .diagnostics import Collector, Origin
from .resolve import dataclass_of, field_type, resolve, to_spec
from .schema import validate, yaml_name
from .source import Doc, apply_overrides, load_file, parse_yaml


@dataclass
class Loaded:
    """A checked spec with its resolved document (values and where each came from)."""

    spec: model.Spec
    doc: Doc


def schema_fields(path: tuple) -> list[str]:
    """The spec fields of the mapping at `path` (empty if it is not a spec object)."""
    tp = field_type(path)
    cls = dataclass_of(tp) if tp is not None else None
    if cls is None and path and path[0] == "decode" and path[-1] == "draft":
        cls = model.NgramDraft
    return [yaml_name(f) for f in dataclasses.fields(cls)] if cls else []


def _version(doc: Doc, errors: Collector) -> None:
    version = doc.tree.get("tandem")
    if isinstance(version, int) and not isinstance(version, bool):
        if version > model.SPEC_VERSION:
            errors.error(
                "E-VERSION",
                f"spec version {version} is newer than this tandem-dsl understands "
                f"(version {model.SPEC_VERSION})",
                doc.origin(("tandem",)),
                "tandem",
                "upgrade tandem-dsl: pip install -U tandem-dsl",
            )
        elif version < 1:
            errors.error(
                "E-VERSION",
                f"spec version {version} does not exist",
                doc.origin(("tandem",)),
                "tandem",
                "write `tandem: 1`",
            )


def finish(doc: Doc, overrides, stop_after: str | None = None) -> Loaded | Doc:
    errors = Collector("override")
    apply_overrides(doc, list(overrides), errors, schema_fields)
    errors.raise_if_any()
    errors = Collector("weights")
    from_weights.fill(doc, errors)
    errors.raise_if_any()
    errors = Collector("validate")
    _version(doc, errors)
    errors.raise_if_any()
    validate(doc, errors)
    errors.raise_if_any()
    errors = Collector("resolve")
    doc = resolve(doc, errors)
    errors.raise_if_any()
    spec = to_spec(doc.tree)
    if stop_after == "resolve":
        return Loaded(spec, doc)
    errors = Collector("check")
    run_checks(spec, doc, errors)
    errors.raise_if_any()
    return Loaded(spec, doc)


def load_checked(path: str | Path, overrides=(), stop_after: str | None = None) -> Loaded:
    """Loads, validates, resolves and checks a spec file. Raises SpecError."""
    errors = Collector("load")
    doc = load_file(path, errors)
    errors.raise_if_any()
    return finish(doc, overrides, stop_after)


def loads_checked(text: str, source: str = "<string>", overrides=()) -> Loaded:
    errors = Collector("load")
    doc = parse_yaml(text, source, errors)
    errors.raise_if_any()
    if doc.tree.get("include"):
        errors.error("E-INCLUDE-STRING", "include: needs a spec file, not a string", Origin(source))
        errors.raise_if_any()
    return finish(doc, overrides)


def checked(source, overrides=()) -> Loaded:
    """A checked spec with its document from any of: a spec file (str or Path), a typed
    `model.Spec` (as `load` returns), a `Loaded`, or a `SpecBuilder`. Each goes through the
    same stages as a file (overrides, weights, validate, resolve, check), so an object is
    held to every rule a file is; SpecError on bad input. A Spec object's values have no
    file or line: its diagnostics name `<spec object 'NAME'>` and the field path."""
    if isinstance(source, str | os.PathLike):
        return load_checked(source, overrides)
    if isinstance(source, model.Spec):  # its resolved tree loads back to an equal spec
        origin = Origin(f"<spec object '{source.name}'>")
        return finish(Doc(to_tree(source), {(): origin}, {}, [origin.source]), overrides)
    if isinstance(source, Loaded):
        doc = source.doc
        doc = Doc(copy.deepcopy(doc.tree), dict(doc.origins), dict(doc.key_origins), doc.files)
        return finish(doc, overrides)
    if callable(getattr(source, "checked", None)):  # a SpecBuilder (it imports this module)
        return source.checked(overrides)
    raise TypeError(
        "a spec is a file path, a tandem_dsl.model.Spec (api.load) or a "
        f"tandem_dsl.builder.SpecBuilder, not {type(source).__name__}"
    )


def load(path: str | Path, overrides=()) -> model.Spec:
    """The typed, checked spec of a file (the main entry point)."""
    return load_checked(path, overrides).spec


def loads(text: str, source: str = "<string>", overrides=()) -> model.Spec:
    return loads_checked(text, source, overrides).spec


def load_raw(path: str | Path, overrides=()) -> Doc:
    """The merged document (includes and overrides applied), before validation."""
    errors = Collector("load")
    doc = load_file(path, errors)
    errors.raise_if_any()
    errors = Collector("override")
    apply_overrides(doc, list(overrides), errors, schema_fields)
    errors.raise_if_any()
    return doc


def to_tree(spec) -> dict:
    """A typed spec (or any part of it) as a plain YAML-ready tree."""
    if dataclasses.is_dataclass(spec):
        return {yaml_name(f): to_tree(getattr(spec, f.name)) for f in dataclasses.fields(spec)}
    if isinstance(spec, dict):
        return {k: to_tree(v) for k, v in spec.items()}
    if isinstance(spec, list | tuple):
        return [to_tree(v) for v in spec]
    return spec


def dump_yaml(tree: dict) -> str:
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=None, width=100)


def to_yaml(spec: model.Spec) -> str:
    """YAML that loads back to an equal spec: `loads(to_yaml(spec)) == spec`."""
    return dump_yaml(to_tree(spec))


def provenance(doc: Doc) -> list[tuple[str, str, object]]:
    """(path, origin label, value) for every leaf value of a document."""
    from .source import path_str

    rows = []

    def walk(node, path):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list) and node and any(isinstance(v, dict) for v in node):
            for i, v in enumerate(node):
                walk(v, path + (i,))
        else:
            rows.append((path_str(path), doc.value_origin(path).label(), node))

    walk(doc.tree, ())
    return rows
