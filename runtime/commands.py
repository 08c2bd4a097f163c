"""The `tandemc` verbs that need JAX: `compile` (and, later, `run`). JAX is imported lazily."""

from __future__ import annotations

import argparse


def cmd_compile(args) -> int:
    from rich.console import Console

    from compiler.build import format_ir
    from compiler.driver import EMITS, compile_spec
    from compiler.plan import format_plan
    from runtime.cli import UserError

    console = Console(highlight=False, soft_wrap=True)
    emit = tuple(args.emit.split(",")) if args.emit else EMITS
    bad = [e for e in emit if e not in EMITS]
    if bad:
        raise UserError(f"unknown --emit {', '.join(bad)}; choose from {', '.join(EMITS)}")

    def log(stage, seconds, summary):
        console.print(f"[bold]{stage:>8}[/bold] {seconds * 1000:8.1f} ms  {summary}")

    try:
        result = compile_spec(
            args.spec,
            args.out,
            args.overrides,
            programs=args.program,
            platforms=tuple(args.platforms.split(",")),
            emit=emit,
            stop_after=args.stop_after,
            log=log,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if result.ir is not None:
        console.print(format_ir(result.ir))
        console.print(format_plan(result.plan))
    if args.out:
        console.print(f"wrote {len(result.files)} files to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from compiler.driver import STAGES

    p = sub.add_parser("compile", help="lower a spec to jitted programs and write artifacts")
    p.add_argument("spec", help="the spec file (YAML)")
    p.add_argument("overrides", nargs="*", help="overrides: a.b=1  +a.new=2  ~a.b")
    p.add_argument("-o", "--out", help="output directory for the artifacts")
    p.add_argument("--program", action="append", help="compile only this program (repeatable)")
    p.add_argument(
        "--emit", help="comma-separated: spec,plan,stablehlo,cost,exported (default all)"
    )
    p.add_argument(
        "--platforms", default="cpu", help="export for these platforms, e.g. cpu,tpu,cuda"
    )
    p.add_argument("--stop-after", choices=STAGES, default="compile", help="stop after a stage")
    p.set_defaults(fn=cmd_compile)
