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


class SpecLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader that also reads `3e-3` as a float (YAML 1.2; PyYAML 1.1 keeps a string).
    libyaml's parser where PyYAML has it: a 1 MiB hostile file parses in a second, not 30."""


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


# Bounds on what one spec may expand to, so hostile YAML fails fast: aliases can make a small
# file expand exponentially ("billion laughs"), or refer to themselves.
MAX_VALUES = 100_000  # values after aliases and merge keys are expanded
MAX_DEPTH = 64  # nesting of mappings and sequences
MAX_FILE_BYTES = 1 << 20
MERGE = "tag:yaml.org,2002:merge"


SIZE_HINT = (
    "a spec is a few hundred values: check for aliases (*name) that refer to themselves or "
    "repeat each other"
)


class TooLarge(Exception):
    """The YAML expands past MAX_VALUES or MAX_DEPTH (at `node`)."""

    def __init__(self, what: str, node):
        super().__init__(what)
        self.what, self.node = what, node


def _scalar(node: yaml.ScalarNode):
    return SafeConstructor().construct_object(node, deep=True)


def _known_tag(node) -> bool:
    return node.tag in SafeConstructor.yaml_constructors or node.tag == MERGE


def convert(
    source: str, node, path, doc: Doc, errors: Collector, budget: list | None = None, at=None
):
    """A composed YAML node -> plain values, recording origins (`at` for all of them when
    given: an override's value); raises TooLarge."""
    budget = budget if budget is not None else [MAX_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        raise TooLarge(f"more than {MAX_VALUES} values once aliases are expanded", node)
    if len(path) > MAX_DEPTH:
        raise TooLarge(f"nesting deeper than {MAX_DEPTH} levels", node)
    doc.origins[path] = at or _origin(source, node)
    if not _known_tag(node):
        errors.error(
            "E-YAML-TAG",
            f"unknown YAML tag '{node.tag}'",
            doc.origins[path],
            path_str(path),
            "specs are plain YAML: remove the tag (tags never run code here)",
        )
        return None
    if isinstance(node, yaml.MappingNode):
        out, merged = {}, []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:  # `<<: *base`: keys of base that are not set here
                value = convert(source, value_node, path, doc, errors, budget, at)
                for m in value if isinstance(value, list) else [value]:
                    if not isinstance(m, dict):
                        errors.error(
                            "E-YAML-MERGE",
                            "a merge key (<<) takes a mapping or a list of mappings",
                            at or _origin(source, value_node),
                            path_str(path),
                            "write `<<: *anchor` where the anchor names a mapping",
                        )
                        continue
                    merged.append(m)
                continue
            plain_key = isinstance(key_node, yaml.ScalarNode) and _known_tag(key_node)
            key = _scalar(key_node) if plain_key else None
            key_origin = at or _origin(source, key_node)
            if not isinstance(key, str):
                errors.error(
                    "E-YAML-KEY",
                    "mapping keys must be strings",
                    key_origin,
                    path_str(path),
                    "spec keys are names such as d_model; quote a key that YAML reads otherwise",
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
            out[key] = convert(source, value_node, path + (key,), doc, errors, budget, at)
        for m in merged:
            for key, value in m.items():
                out.setdefault(key, value)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            convert(source, v, path + (i,), doc, errors, budget, at)
            for i, v in enumerate(node.value)
        ]
    try:
        return _scalar(node)
    except (yaml.YAMLError, ValueError, TypeError):  # e.g. `!!int abc`
        errors.error(
            "E-YAML-TAG",
            f"'{node.value}' cannot be read as {node.tag}",
            doc.origins[path],
            path_str(path),
            "remove the explicit tag",
        )
        return None


def _compose_bounded(text: str):
    """yaml.compose, but RecursionError at once for nesting deeper than MAX_DEPTH (the event
    pass is iterative, the composer recursive and slow to reach Python's recursion limit), and
    TooLarge for more than MAX_VALUES scalars."""
    depth, values = 0, 0
    for event in yaml.parse(text, Loader=SpecLoader):
        values += isinstance(event, yaml.ScalarEvent)
        if values > MAX_VALUES:  # more before any alias is expanded: no need to build it
            raise TooLarge(f"more than {MAX_VALUES} values", event)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecursionError
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.compose(text, Loader=SpecLoader)


def compose(text: str, source: str, errors: Collector, at: Origin | None = None):
    """YAML text -> its node (None for an empty document), or False after reporting an error
    (at `at` when given)."""
    try:
        return _compose_bounded(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        errors.error(
            "E-YAML-SYNTAX",
            f"invalid YAML: {e.problem or e.context}",
            at or Origin(source, line, col, line, col + 1),
            hint="check indentation, colons and quotes on this line or the one above",
        )
    except TooLarge as e:
        errors.error(
            "E-YAML-SIZE",
            f"the YAML is too large: {e.what}",
            at or _origin(source, e.node),
            hint=SIZE_HINT,
        )
    except RecursionError:
        errors.error(
            "E-YAML-DEPTH",
            f"the YAML nests too deeply (at most {MAX_DEPTH} levels)",
            at or Origin(source, 1, 1, 1, 2),
            hint="a spec nests a few levels; check for unclosed [ or {",
        )
    return False


def to_plain(source: str, node, path, doc: Doc, errors: Collector, at: Origin | None = None):
    """`convert` with its bounds reported as errors (at `at` when given); None on failure."""
    try:
        return convert(source, node, path, doc, errors, at=at)
    except (TooLarge, RecursionError) as e:
        what = e.what if isinstance(e, TooLarge) else f"nesting deeper than {MAX_DEPTH} levels"
        origin = at or (_origin(source, e.node) if isinstance(e, TooLarge) else Origin(source))
        errors.error(
            "E-YAML-SIZE",
            f"the YAML is too large: {what}",
            origin,
            path_str(path),
            SIZE_HINT,
        )
        return None


def parse_yaml(text: str, source: str, errors: Collector) -> Doc | None:
    doc = Doc(tree={}, files=[source])
    node = compose(text, source, errors)
    if node is False:
        return None
    if node is None:
        errors.error(
            "E-YAML-EMPTY",
            "the spec file is empty",
            Origin(source, 1, 1, 1, 2),
            hint="start from specs/quickstart.yaml, or see docs/spec-reference.md",
        )
        return None
    if not isinstance(node, yaml.MappingNode):
        errors.error(
            "E-YAML-ROOT",
            "a spec must be a mapping at the top level",
            _origin(source, node),
            hint="write keys such as `tandem: 1`, `name:` and `models:` at the top level",
        )
        return None
    tree = to_plain(source, node, (), doc, errors)
    if tree is None:
        return None
    doc.tree = tree
    return doc


def _read_spec(path: Path, errors: Collector, where: Origin) -> str | None:
    """The text of a spec file: a regular UTF-8 file of at most MAX_FILE_BYTES (a FIFO or a
    device could block or never end)."""
    try:
        if not path.exists():
            errors.error(
                "E-FILE-MISSING",
                f"spec file not found: {path}",
                where,
                hint="check the path (relative paths start from the current folder)",
            )
            return None
        if not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file"
            errors.error("E-FILE-READ", f"{path} is {kind}", where, hint="give a YAML file")
            return None
        if path.stat().st_size > MAX_FILE_BYTES:
            errors.error(
                "E-FILE-READ",
                f"{path} has {path.stat().st_size} bytes; a spec may have {MAX_FILE_BYTES}",
                where,
                hint="is this the right file?",
            )
            return None
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        errors.error(
            "E-FILE-READ",
            f"{path} is not UTF-8 text (byte {e.start})",
            where,
            hint="is this the right file? specs are YAML text",
        )
    except OSError as e:
        errors.error(
            "E-FILE-READ",
            f"cannot read spec file {path}: {e.strerror or e}",
            where,
            hint="check the file's permissions",
        )
    return None


CYCLE_HINT = "a file cannot include itself, directly or through others: remove one include"


def load_file(
    path: str | Path, errors: Collector, _stack: tuple = (), at: Origin | None = None
) -> Doc | None:
    """Loads a spec file and merges its `include:` files (in order, then the file on top).

    An included file's problems reading it are reported `at` its entry in the including file.
    Includes must stay inside the top-level spec's folder."""
    path = Path(path)
    source = str(path)
    where = at or Origin(source)
    if path.resolve() in _stack:
        cycle = " -> ".join(str(p) for p in (*_stack, path.resolve()))
        errors.error("E-INCLUDE-CYCLE", f"include cycle: {cycle}", where, hint=CYCLE_HINT)
        return None
    text = _read_spec(path, errors, where)
    if text is None:
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
        root = (_stack[0] if _stack else path.resolve()).parent
        if not inc_path.resolve().is_relative_to(root):
            errors.error(
                "E-INCLUDE-OUTSIDE",
                f"included file {inc_path} is outside the spec's folder {root}",
                inc_origin,
                "include",
                "copy the file into the spec's folder (or below it)",
            )
            continue
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
            errors.error(
                "E-INCLUDE-CYCLE", f"include cycle: {cycle}", inc_origin, "include", CYCLE_HINT
            )
            continue
        inc_doc = load_file(inc_path, errors, (*_stack, path.resolve()), inc_origin)
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
        if path[0] == "include":
            errors.error(
                "E-OVERRIDE-KEY",
                f"override '{text}': `include` is read when the file loads, before overrides",
                key_origin,
                "include",
                "list the file under include: in the spec, or merge it into the spec file",
            )
            continue
        _add_missing_parents(doc, path, fields)
        parent = doc.get(path[:-1])
        last = path[-1]
        exists = _has(parent, last)
        known = isinstance(parent, dict) and last in fields(path[:-1])
        if op == "set" and known and not exists:
            op = "add"
        if not isinstance(parent, dict | list) or (op != "add" and not exists):
            hint = _missing_key_hint(doc, path, fields, f"+{key}={value_text}", op == "set")
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
        value = _override_value(value_text, value_origin, path, errors)
        if value is _BAD:
            continue
        if isinstance(parent, list) and op == "add" and last == len(parent):
            parent.append(value)
        else:
            parent[last] = value
        _set_origins(doc, path, value, value_origin)
    return doc


_BAD = object()


def _missing_key_hint(doc: Doc, path: tuple, fields, add: str, may_add: bool) -> str | None:
    """Names what exists at the deepest part of `path` that does."""
    depth = 0
    while depth < len(path) - 1 and _has(doc.get(path[:depth]), path[depth]):
        depth += 1
    node, part, where = doc.get(path[:depth]), path[depth], path_str(path[:depth])
    if isinstance(node, list):
        return (
            f"{where} has {len(node)} entries (index 0 to {len(node) - 1}); append one with "
            f"+{'.'.join(map(str, path[:depth]))}.{len(node)}=..."
        )
    if not isinstance(node, dict):
        return f"{where} is a {type(node).__name__}, not a mapping"
    close = did_you_mean(str(part), [*node.keys(), *fields(path[:depth])])
    if close or depth < len(path) - 1:
        return close or f"{where or 'the spec'} has no '{part}'; keys: {', '.join(map(str, node))}"
    return f"to add a new key write {add}" if may_add else None


def _add_missing_parents(doc: Doc, path: tuple, fields) -> None:
    """`decode.sampling.top_k=5` where the file has no `sampling:`: the spec fields on the
    way are created as empty mappings (only fields the schema knows, only under mappings)."""
    node = doc.tree
    for i, part in enumerate(path[:-1]):
        if isinstance(node, dict) and part not in node and part in fields(path[:i]):
            node[part] = {}
        if not _has(node, part):
            return
        node = node[part]


def _override_value(text: str, origin: Origin, path, errors: Collector):
    """An override's value parsed as YAML, within the same bounds as a file; _BAD on error."""
    if not text.strip():
        return ""
    before = len(errors.diagnostics)
    try:
        node = _compose_bounded(text)
    except TooLarge as e:
        errors.error("E-YAML-SIZE", f"the YAML is too large: {e.what}", origin, hint=SIZE_HINT)
        return _BAD
    except (yaml.YAMLError, RecursionError):
        errors.error(
            "E-OVERRIDE-VALUE",
            f"override '{origin.text}': the value is not valid YAML",
            origin,
            path_str(path),
            "quote strings that contain ':' or '{'",
        )
        return _BAD
    if node is None:
        return None
    value = to_plain(origin.source, node, path, Doc(tree={}), errors, at=origin)
    return _BAD if len(errors.diagnostics) > before else value


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
