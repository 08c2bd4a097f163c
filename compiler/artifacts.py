"""Stages 6-7, lower and compile: programs -> StableHLO, XLA cost, serialized exports.

Everything is traced from abstract shapes (`jax.ShapeDtypeStruct`): no parameter is ever
allocated, so a pod-sized spec compiles on a laptop.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jax


@dataclass(frozen=True)
class ProgramDef:
    """A named jittable function with the abstract arguments it is compiled for."""

    name: str
    fn: Callable
    args: tuple  # pytrees of jax.ShapeDtypeStruct
    donate: tuple[int, ...] = ()
    doc: str = ""
    analytic_flops: float | None = None  # from the IR formulas, to set beside XLA's count


@dataclass
class CompiledProgram:
    name: str
    stablehlo: str
    cost: dict = field(default_factory=dict)
    exported: dict[str, bytes] = field(default_factory=dict)  # platforms label -> bytes
    seconds: dict[str, float] = field(default_factory=dict)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Writes via a temp file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cost(compiled) -> dict:
    """XLA's cost and memory analysis; missing pieces are reported, not fatal."""
    out: dict = {}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        out["flops"] = float(cost.get("flops", float("nan")))
        out["bytes_accessed"] = float(cost.get("bytes accessed", float("nan")))
    except Exception as e:  # backends without a cost model
        out["cost_unavailable"] = f"{type(e).__name__}: {e}"
    try:
        mem = compiled.memory_analysis()
        for key in ("argument", "output", "temp", "alias", "generated_code"):
            out[f"{key}_bytes"] = int(getattr(mem, f"{key}_size_in_bytes"))
    except Exception as e:
        out["memory_unavailable"] = f"{type(e).__name__}: {e}"
    return out


_REGISTERED: set[type] = set()


def _register_namedtuples(tree) -> None:
    """Lets jax.export serialize pytrees with NamedTuple nodes (e.g. optax states)."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        cls = type(tree)
        if cls not in _REGISTERED:
            _REGISTERED.add(cls)
            jax.export.register_namedtuple_serialization(
                cls, serialized_name=f"{cls.__module__}.{cls.__qualname__}"
            )
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list | tuple):
        for item in tree:
            _register_namedtuples(item)


def lower_program(
    p: ProgramDef, platforms: tuple[str, ...] = ("cpu",), compile_local: bool = True
) -> CompiledProgram:
    """Lowers to StableHLO, compiles for this machine (cost), exports for `platforms`."""
    import time

    jitted = jax.jit(p.fn, donate_argnums=p.donate)
    out = CompiledProgram(p.name, "")
    start = time.perf_counter()
    lowered = jitted.trace(*p.args).lower()
    out.stablehlo = lowered.as_text()
    out.seconds["lower"] = time.perf_counter() - start
    if compile_local:
        start = time.perf_counter()
        out.cost = _cost(lowered.compile())
        out.seconds["compile"] = time.perf_counter() - start
    start = time.perf_counter()
    _register_namedtuples(p.args)
    # Outputs are exported as their flat list of leaves (order: jax.tree.leaves), so any
    # result type deserializes; `out_tree` records the structure.
    flat = jax.jit(lambda *a: jax.tree.leaves(p.fn(*a)))
    exported = jax.export.export(flat, platforms=platforms)(*p.args)
    out.cost["out_tree"] = str(jax.tree.structure(jax.eval_shape(p.fn, *p.args)))
    out.exported[",".join(platforms)] = bytes(exported.serialize())
    out.seconds["export"] = time.perf_counter() - start
    return out


def write_program(out_dir: Path, c: CompiledProgram, emit: set[str]) -> list[Path]:
    written = []
    if "stablehlo" in emit:
        written.append(out_dir / f"{c.name}.stablehlo.mlir")
        write_atomic(written[-1], c.stablehlo)
    if "cost" in emit:
        written.append(out_dir / f"{c.name}.cost.json")
        write_atomic(written[-1], json.dumps({**c.cost, "seconds": c.seconds}, indent=2))
    if "exported" in emit:
        for label, data in c.exported.items():
            written.append(out_dir / f"{c.name}.{label.replace(',', '-')}.jax_exported")
            write_atomic(written[-1], data)
    return written


def load_exported(path: str | Path):
    """A serialized program back as a `jax.export.Exported`: `.call(*args)` returns the
    program's outputs as a flat list (`jax.tree.leaves` order)."""
    return jax.export.deserialize(bytearray(Path(path).read_bytes()))
