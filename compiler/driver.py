"""`compile(spec)`: the whole pipeline from a spec file to artifacts, stage by stage.

Each stage is timed and reported through `log(stage, seconds, summary)`, and
`stop_after` ends the pipeline early (load, validate, resolve, check, ir, lower, compile).

Programs are sharded on the spec's mesh: the machine's devices when the mesh fits them, else
abstract devices (`devices=N` or a fixed mesh bigger than the machine), which lower and
export for any platform but are not compiled here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tandem_dsl import api

from .artifacts import CompiledProgram, ProgramDef, lower_program, write_atomic, write_program
from .build import build_ir, format_ir
from .errors import InputError
from .plan import make_plan, sharding_summary
from .sharding import Sharder
from .stages import EMITS


@dataclass
class CompileResult:
    spec: object = None
    ir: object = None
    plan: dict = field(default_factory=dict)
    programs: dict = field(default_factory=dict)  # name -> CompiledProgram
    files: list = field(default_factory=list)


def _quiet(stage: str, seconds: float, summary: str) -> None:
    pass


def compile_spec(
    spec_path,
    out_dir: str | Path | None = None,
    overrides=(),
    programs: list[str] | None = None,
    platforms: tuple[str, ...] = ("cpu",),
    emit: tuple[str, ...] = EMITS,
    stop_after: str = "compile",
    log: Callable[[str, float, str], None] = _quiet,
    devices: int | None = None,
) -> CompileResult:
    """Compiles a spec (a file, a typed spec or a SpecBuilder: `tandem_dsl.api.checked`);
    raises tandem_dsl SpecError for bad specs, ValueError for bad
    program names or an impossible mesh. `devices`: compile for that many devices (abstract
    ones when the machine has fewer)."""
    from .programs import programs_for

    result = CompileResult()
    start = time.perf_counter()
    loaded = api.checked(spec_path, overrides)
    result.spec = loaded.spec
    where = spec_path if isinstance(spec_path, str | Path) else f"spec '{loaded.spec.name}'"
    log("check", time.perf_counter() - start, f"{where}: load, validate, resolve, check ok")
    if stop_after in ("load", "check"):
        return result

    start = time.perf_counter()
    prog = result.ir = build_ir(loaded.spec)
    result.plan = make_plan(prog)
    log(
        "ir", time.perf_counter() - start, f"{len(prog.models)} models, {len(prog.wirings)} wirings"
    )
    start = time.perf_counter()
    sh = Sharder.for_compile(prog, devices)  # ShardingError (a ValueError) names the devices
    result.plan["sharding"] = sharding_summary(prog, sh)
    log("shard", time.perf_counter() - start, sh.describe())
    if prog.decode is not None:
        from .decode.backend import describe

        start = time.perf_counter()
        backends = describe(platforms, prog.decode.backend, sh.n_devices)
        result.plan["decode_backend"] = backends
        log("backend", time.perf_counter() - start,
            "decode mat-muls: " + "; ".join(f"{p}: {b}" for p, b in backends.items()))  # fmt: skip
    out = Path(out_dir) if out_dir else None
    emit_set = set(emit)
    if out is not None and "spec" in emit_set:
        result.files.append(out / "spec.resolved.yaml")
        write_atomic(result.files[-1], api.to_yaml(loaded.spec))
        result.files.append(out / "ir.txt")
        write_atomic(result.files[-1], format_ir(prog) + "\n")
    if stop_after == "ir":
        return _finish_plan(result, out, emit_set)

    defs = programs_for(prog, sh)
    if programs:
        known = {d.name for d in defs}
        unknown = [p for p in programs if p not in known]
        if unknown:
            raise InputError(
                f"unknown program(s) {', '.join(unknown)}; this spec has {', '.join(sorted(known))}"
            )
        defs = [d for d in defs if d.name in programs]
    for d in defs:
        if sh.abstract:
            c = lower_abstract(d, platforms, sh.n_devices)
        else:
            c = lower_program(d, platforms, compile_local=stop_after != "lower")
        result.programs[d.name] = c
        cost = {**c.cost, "seconds": c.seconds, "doc": d.doc, "analytic_flops": d.analytic_flops}
        result.plan["programs"][d.name] = cost
        flops = f", {c.cost['flops']:.3g} FLOPs" if "flops" in c.cost else ""
        log(
            "export" if sh.abstract else "compile" if c.cost else "lower",
            sum(c.seconds.values()),
            f"{d.name}: {d.doc}{flops}",
        )
        if out is not None:
            result.files += write_program(out, c, emit_set)
    return _finish_plan(result, out, emit_set)


def lower_abstract(p: ProgramDef, platforms: tuple[str, ...], n_devices: int) -> CompiledProgram:
    """Lowers and exports a program whose shardings live on abstract devices (a mesh bigger
    than this machine): the StableHLO is the exported module's; XLA compile needs the real
    devices, so the cost is the shardings' own per-device figures (see the plan)."""
    import jax

    from .artifacts import _register_namedtuples

    out = CompiledProgram(p.name, "")
    start = time.perf_counter()
    _register_namedtuples(p.args)
    tree = {}

    def flat(*a):  # outputs as their flat list of leaves, as `lower_program` exports them
        result = p.fn(*a)
        tree["out"] = jax.tree.structure(result)
        return jax.tree.leaves(result)

    jitted = jax.jit(flat, donate_argnums=p.donate)
    out.stablehlo = jitted.trace(*p.args).lower(lowering_platforms=platforms).as_text()
    out.seconds["lower"] = time.perf_counter() - start
    start = time.perf_counter()
    exported = jax.export.export(jitted, platforms=platforms)(*p.args)  # reuses the trace
    out.exported[",".join(platforms)] = bytes(exported.serialize())
    out.cost["out_tree"] = str(tree["out"])
    out.cost["cost_unavailable"] = f"abstract mesh of {n_devices} devices: not compiled here"
    out.seconds["export"] = time.perf_counter() - start
    return out


def _finish_plan(result: CompileResult, out: Path | None, emit: set[str]) -> CompileResult:
    if out is not None and "plan" in emit:
        result.files.append(out / "plan.json")
        write_atomic(result.files[-1], json.dumps(result.plan, indent=2) + "\n")
    return result
