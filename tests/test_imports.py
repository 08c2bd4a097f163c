"""No import cycles among the project's modules (every import counts, also those inside
functions): the dependency direction is tandem_dsl <- compiler <- runtime."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tandem_dsl", "compiler", "runtime")
LAYER = {"tandem_dsl": 0, "compiler": 1, "runtime": 2}


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The project modules that module `name` imports anywhere in its text."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle_from(start: str) -> list[str] | None:
    """A path start -> ... -> start, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycles():
    cycles = [c for name in sorted(GRAPH) if (c := _cycle_from(name))]
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles[:5])


def test_lower_layers_never_import_higher_ones():
    wrong = [
        f"{a} imports {b}"
        for a, deps in GRAPH.items()
        for b in deps
        if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]
    ]
    assert not wrong, wrong


def test_the_graph_sees_imports():  # the parser works: a known edge is there
    assert "runtime.run" in GRAPH["runtime.commands"] and len(GRAPH) > 40
