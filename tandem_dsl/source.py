"""Stage 1, load: YAML text -> a plain tree plus the origin of every value.

The tree is made of dicts, lists and scalars. `Doc.origins` maps a path (a tuple of
keys and indices) to where the value came from; `Doc.key_origins` maps a mapping
entry's path to the span of its key, for "unknown key" errors.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor

from .diagnostics import Collector, Origin, did_you_mean


class SpecLoader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-3` as a float (YAML 1.2; PyYAML 1.1 keeps a string)."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

Path_ = tuple  # a path into the tree: ("models", "large", "d_model") or ("wiring", 0, "block")


def path_str(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Doc:
    tree: dict
    origins: dict = field(default_factory=dict)  # path -> Origin of the value
    key_origins: dict = field(default_factory=dict)  # path -> Origin of the mapping key
    files: list = field(default_factory=list)  # every file read, in order

    def origin(self, path: Path_) -> Origin:
        """The origin of `path`, or of its nearest located ancestor."""
        path = tuple(path)
        while path:
            origin = self.origins.get(path)
            if origin is not None and origin.source != "default":
                return origin
            path = path[:-1]
        return self.origins.get((), Origin(self.files[0] if self.files else "<spec>"))

    def value_origin(self, path: Path_) -> Origin:
        """Where the value itself came from (`default` included): for provenance."""
        return self.origins.get(tuple(path)) or self.origin(path)

    def key_origin(self, path: Path_) -> Origin:
        return self.key_origins.get(tuple(path)) or self.origin(path)

    def get(self, path: Path_, default=None):
        node = self.tree
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return default
        return node


def _origin(source: str, node: yaml.Node) -> Origin:
    start, end = node.start_mark, node.end_mark
    col, end_col = start.column + 1, end.column + 1
    if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"'):
        col, end_col = col + 1, end_col - 1  # point at the text inside the quotes
    return Origin(source, start.line + 1, col, end.line + 1, end_col)


def _scalar(node: yaml.ScalarNode):
    return SafeConstructor().construct_object(node, deep=True)


def _convert(source: str, node, path, doc: Doc, errors: Collector):
    doc.origins[path] = _origin(source, node)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            key_origin = _origin(source, key_node)
            if not isinstance(key, str):
                errors.error(
                    "E-YAML-KEY", "mapping keys must be strings", key_origin, path_str(path)
                )
                continue
            if key in out:
                errors.error(
                    "E-YAML-DUPKEY",
                    f"duplicate key '{key}'",
                    key_origin,
                    path_str(path + (key,)),
                    "remove one of the two entries",
                )
            doc.key_origins[path + (key,)] = key_origin
            out[key] = _convert(source, value_node, path + (key,), doc, errors)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(source, v, path + (i,), doc, errors) for i, v in enumerate(node.value)]
    return _scalar(node)


def parse_yaml(text: str, source: str, errors: Collector) -> Doc | None:
    doc = Doc(tree={}, files=[source])
    try:
        node = yaml.compose(text, Loader=SpecLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        errors.error(
            "E-YAML-SYNTAX",
            f"invalid YAML: {e.problem or e.context}",
            Origin(source, line, col, line, col + 1),
            hint="check indentation, colons and quotes on this line or the one above",
        )
        return None
    if node is None:
        errors.error("E-YAML-EMPTY", "the spec file is empty", Origin(source, 1, 1, 1, 2))
        return None
    if not isinstance(node, yaml.MappingNode):
        errors.error(
            "E-YAML-ROOT", "a spec must be a mapping at the top level", _origin(source, node)
        )
        return None
    doc.tree = _convert(source, node, (), doc, errors)
    return doc


def load_file(path: str | Path, errors: Collector, _stack: tuple = ()) -> Doc | None:
    """Loads a spec file and merges its `include:` files (in order, then the file on top)."""
    path = Path(path)
    source = str(path)
    if path.resolve() in _stack:
        cycle = " -> ".join(str(p) for p in (*_stack, path.resolve()))
        errors.error("E-INCLUDE-CYCLE", f"include cycle: {cycle}", Origin(source))
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        errors.error("E-FILE-MISSING", f"spec file not found: {path}", Origin(source))
        return None
    except (OSError, UnicodeDecodeError) as e:
        errors.error("E-FILE-READ", f"cannot read spec file {path}: {e}", Origin(source))
        return None
    doc = parse_yaml(text, source, errors)
    if doc is None:
        return None
    includes = doc.tree.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        return doc  # the schema stage reports the wrong type
    base = None
    for i, inc in enumerate(includes):
        if not isinstance(inc, str):
            continue
        inc_path = path.parent / inc
        inc_origin = doc.origin(("include", i) if ("include", i) in doc.origins else ("include",))
        if not inc_path.exists():
            errors.error(
                "E-INCLUDE-MISSING",
                f"included file not found: {inc_path}",
                inc_origin,
                "include",
                "include paths are relative to the including file",
            )
            continue
        if inc_path.resolve() in (*_stack, path.resolve()):
            cycle = " -> ".join(str(p) for p in (*_stack, path.resolve(), inc_path.resolve()))
            errors.error("E-INCLUDE-CYCLE", f"include cycle: {cycle}", inc_origin, "include")
            continue
        inc_doc = load_file(inc_path, errors, (*_stack, path.resolve()))
        if inc_doc is not None:
            inc_doc.tree.pop("include", None)
            base = inc_doc if base is None else merge(base, inc_doc)
    doc.tree.pop("include", None)
    return doc if base is None else merge(base, doc)


def merge(base: Doc, top: Doc) -> Doc:
    """Deep-merges `top` over `base`: mappings merge key by key, anything else is replaced."""
    out = Doc(copy.deepcopy(base.tree), dict(base.origins), dict(base.key_origins))
    out.files = base.files + [f for f in top.files if f not in base.files]

    def walk(dst: dict, src: dict, path):
        for key, value in src.items():
            sub = path + (key,)
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                walk(dst[key], value, sub)
            else:
                _drop_below(out, sub)
                dst[key] = copy.deepcopy(value)
                _copy_below(top, out, sub)
        out.origins[path] = top.origins.get(path, out.origins.get(path))

    walk(out.tree, top.tree, ())
    return out


def _drop_below(doc: Doc, path) -> None:
    n = len(path)
    for table in (doc.origins, doc.key_origins):
        for p in [p for p in table if p[:n] == path]:
            del table[p]


def _copy_below(src: Doc, dst: Doc, path) -> None:
    n = len(path)
    for s_table, d_table in ((src.origins, dst.origins), (src.key_origins, dst.key_origins)):
        for p, o in s_table.items():
            if p[:n] == path:
                d_table[p] = o


# --- CLI overrides ---------------------------------------------------------------------


def _split_override(text: str):
    """'a.b=1' -> ('set', 'a.b', '1'); '+a.b=1' -> ('add', ...); '~a.b' -> ('del', 'a.b', None)."""
    if text.startswith("~"):
        return "del", text[1:], None, 1
    op, offset = ("add", 1) if text.startswith("+") else ("set", 0)
    if "=" not in text:
        return None
    key, value = text[offset:].split("=", 1)
    return op, key, value, offset


def _parse_key(key: str):
    parts = []
    for part in key.split("."):
        if not part:
            return None
        parts.append(int(part) if part.lstrip("-").isdigit() else part)
    return tuple(parts)


def apply_overrides(doc: Doc, overrides: list[str], errors: Collector, fields=None) -> Doc:
    """Applies `a.b=1`, `+a.new=2`, `~a.b` left to right; values are parsed as YAML.

    `fields(path)` lists the spec fields allowed under `path` (a mapping): `a.b=1` may set
    such a field even when the file leaves it to its default.
    """
    fields = fields or (lambda path: [])
    for i, text in enumerate(overrides, start=1):
        src = f"cli:{i}"
        whole = Origin(src, 1, 1, 1, len(text) + 1, text)
        split = _split_override(text)
        if split is None:
            errors.error(
                "E-OVERRIDE-SYNTAX",
                f"cannot read override '{text}'",
                whole,
                hint="write key.path=value, +new.key=value or ~key.path",
            )
            continue
        op, key, value_text, offset = split
        key_origin = Origin(src, 1, 1 + offset, 1, 1 + offset + len(key), text)
        path = _parse_key(key)
        if path is None:
            errors.error(
                "E-OVERRIDE-SYNTAX", f"bad key path '{key}'", key_origin, hint="use dots: a.b.c"
            )
            continue
        parent = doc.get(path[:-1])
        last = path[-1]
        exists = _has(parent, last)
        known = isinstance(parent, dict) and last in fields(path[:-1])
        if op == "set" and known and not exists:
            op = "add"
        if not isinstance(parent, dict | list) or (op != "add" and not exists):
            choices = [*parent.keys(), *fields(path[:-1])] if isinstance(parent, dict) else []
            hint = did_you_mean(str(last), choices) if choices else None
            if op == "set" and isinstance(parent, dict):
                hint = hint or f"to add a new key write +{key}={value_text}"
            errors.error(
                "E-OVERRIDE-KEY",
                f"override '{text}': no key '{path_str(path)}' in the spec",
                key_origin,
                path_str(path),
                hint,
            )
            continue
        if op == "add" and exists:
            errors.error(
                "E-OVERRIDE-EXISTS",
                f"override '{text}': key '{path_str(path)}' already exists",
                key_origin,
                path_str(path),
                f"to change it write {key}={value_text}",
            )
            continue
        _drop_below(doc, path)
        if op == "del":
            del parent[last]
            continue
        value_origin = Origin(src, 1, len(text) - len(value_text) + 1, 1, len(text) + 1, text)
        try:
            value = yaml.load(value_text, Loader=SpecLoader) if value_text.strip() else ""
        except yaml.YAMLError:
            errors.error(
                "E-OVERRIDE-VALUE",
                f"override '{text}': value is not valid YAML",
                value_origin,
                path_str(path),
                "quote strings that contain ':' or '{'",
            )
            continue
        if isinstance(parent, list) and op == "add" and last == len(parent):
            parent.append(value)
        else:
            parent[last] = value
        _set_origins(doc, path, value, value_origin)
    return doc


def _has(parent, key) -> bool:
    if isinstance(parent, dict):
        return key in parent
    if isinstance(parent, list):
        return isinstance(key, int) and -len(parent) <= key < len(parent)
    return False


def _set_origins(doc: Doc, path, value, origin: Origin) -> None:
    doc.origins[path] = origin
    doc.key_origins[path] = origin
    if isinstance(value, dict):
        for k, v in value.items():
            _set_origins(doc, path + (k,), v, origin)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _set_origins(doc, path + (i,), v, origin)
