"""Building specs from Python: the same tree as a YAML file, through the same pipeline.

    spec = (
        SpecBuilder("my-tandem")
        .model("large", d_model=256, n_layers=4, n_heads=4)
        .model("small", d_model=128, n_layers=2, n_heads=2)
        .projection("l2s", from_="large", to="small")
        .wire(query="small", memory="large", via="l2s", block=2)
        .decode(policy="speed", target="large", draft="small", gamma=4)
        .build()
    )

Every value remembers the Python line that set it (`python:FILE:LINE`), so diagnostics
point at the builder call.
"""

from __future__ import annotations

import copy
import sys

from . import api, model
from .diagnostics import Origin
from .source import Doc


def _caller() -> Origin:
    frame = sys._getframe(2)
    return Origin(f"python:{frame.f_code.co_filename}:{frame.f_lineno}")


def _keys(fields: dict) -> dict:
    """Python keyword-safe names back to YAML keys (`from_` -> `from`)."""
    return {k.rstrip("_") if k.endswith("_") else k: v for k, v in fields.items()}


class SpecBuilder:
    def __init__(self, name: str, version: int = model.SPEC_VERSION):
        self.doc = Doc(tree={"tandem": version, "name": name}, files=["<python>"])
        self._mark((), self.doc.tree, _caller())

    def _mark(self, path: tuple, value, origin: Origin) -> None:
        self.doc.origins[path] = origin
        if path:
            self.doc.key_origins[path] = origin
        if isinstance(value, dict):
            for k, v in value.items():
                self._mark(path + (k,), v, origin)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self._mark(path + (i,), v, origin)

    def _put(self, path: tuple, value, origin: Origin) -> SpecBuilder:
        node = self.doc.tree
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
        if isinstance(node, list) and path[-1] == len(node):
            node.append(value)
        else:
            node[path[-1]] = value
        self._mark(path, value, origin)
        return self

    def _append(self, section: str, item: dict, origin: Origin) -> SpecBuilder:
        items = self.doc.tree.setdefault(section, [])
        self._put((section, len(items)), item, origin)
        return self

    def model(self, name: str, **fields) -> SpecBuilder:
        return self._put(("models", name), _keys(fields), _caller())

    def projection(self, name: str, **fields) -> SpecBuilder:
        return self._put(("projections", name), _keys(fields), _caller())

    def wire(self, **fields) -> SpecBuilder:
        return self._append("wiring", _keys(fields), _caller())

    def stage(self, **fields) -> SpecBuilder:
        return self._append("train", _keys(fields), _caller())

    def decode(self, **fields) -> SpecBuilder:
        return self._put(("decode",), _keys(fields), _caller())

    def set(self, dotted: str, value) -> SpecBuilder:
        """Sets any value by dotted path, e.g. set("shapes.max_len", 1024)."""
        path = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
        return self._put(path, value, _caller())

    def tree(self) -> dict:
        return copy.deepcopy(self.doc.tree)

    def to_yaml(self) -> str:
        """The spec as written (expressions kept); `tandemc check` accepts it as a file."""
        return api.dump_yaml(self.tree())

    def build(self, overrides=()) -> model.Spec:
        """Validates, resolves and checks; raises SpecError with python:FILE:LINE origins."""
        return self.checked(overrides).spec

    def checked(self, overrides=()) -> api.Loaded:
        """`build`, with the resolved document (values and the Python line of each): what
        `api.checked` and `runtime.run.open_run` take from a builder."""
        doc = Doc(self.tree(), dict(self.doc.origins), dict(self.doc.key_origins), ["<python>"])
        return api.finish(doc, overrides)
