"""The `tandemc` verbs that need JAX: `compile` (and, later, `run`). JAX is imported lazily."""

from __future__ import annotations

import argparse


def cmd_compile(args) -> int:
    from rich.console import Console

    from compiler.build import format_ir
    from compiler.driver import EMITS, compile_spec
    from compiler.errors import InputError
    from compiler.plan import format_plan
    from runtime.errors import UserError

    console = Console(highlight=False, soft_wrap=True)
    emit = tuple(args.emit.split(",")) if args.emit else EMITS
    bad = [e for e in emit if e not in EMITS]
    if bad:
        raise UserError(f"unknown --emit {', '.join(bad)}; choose from {', '.join(EMITS)}")
    platforms = tuple(args.platforms.split(","))
    bad = [x for x in platforms if x not in PLATFORMS] or len(set(platforms)) < len(platforms)
    if bad:
        raise UserError(
            f"--platforms {args.platforms}: each of {', '.join(PLATFORMS)} at most once, "
            "comma-separated (e.g. cpu,cuda)"
        )
    if args.devices is not None and args.devices < 1:
        raise UserError(f"--devices {args.devices}: give a device count >= 1")
    if args.out:
        from pathlib import Path

        from runtime.run import ensure_writable

        ensure_writable(Path(args.out), "output folder", "--out")

    def log(stage, seconds, summary):
        console.print(f"[bold]{stage:>8}[/bold] {seconds * 1000:8.1f} ms  {summary}")

    from compiler.sharding import maybe_initialize_distributed

    try:
        maybe_initialize_distributed(args.distributed)
        result = compile_spec(
            args.spec,
            args.out,
            args.overrides,
            programs=args.program,
            platforms=platforms,
            emit=emit,
            stop_after=args.stop_after,
            log=log,
            devices=args.devices,
        )
    except InputError as e:  # any other exception is a compiler bug: its traceback stays
        raise UserError(str(e)) from None
    if result.ir is not None:
        console.print(format_ir(result.ir))
        console.print(format_plan(result.plan))
    if args.out:
        console.print(f"wrote {len(result.files)} files to {args.out}")
    return 0


PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for


def register(sub: argparse._SubParsersAction) -> None:
    from compiler.stages import STAGES

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
    p.add_argument(
        "--devices",
        type=int,
        help="compile for this many devices (abstract ones when the machine has fewer; "
        "default: this machine's, or the spec's fixed mesh when it is bigger)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host: compile on every host's "
        "devices)",
    )
    p.set_defaults(fn=cmd_compile)
    register_run(sub)


RUN_STAGES = (
    "train", "generate", "eval", "bench", "acceptance", "train-router", "bench-rules"
)  # fmt: skip
MAX_PROMPT_BYTES = 1 << 20
DEFAULT_PROMPT = 'def read_config(path):\n    """Read a configuration file and return a dict."""\n'


def _prompts(args) -> list:
    """The prompts of --prompt (strings) and --prompt-file: a `.jsonl` one gives its lines
    (`runtime.prompts.FilePrompt`, rendered once the tokenizer is known), any other file is
    one prompt."""
    from runtime.errors import UserError

    prompts = list(args.prompt or [])
    if args.prompt_file and args.prompt_file.endswith(".jsonl"):
        from runtime.prompts import read_prompt_file

        prompts += read_prompt_file(args.prompt_file)
    elif args.prompt_file:
        try:
            with open(args.prompt_file, "rb") as f:
                data = f.read(MAX_PROMPT_BYTES + 1)  # bounded: /dev/zero is a file too
            if len(data) > MAX_PROMPT_BYTES:
                raise UserError(
                    f"prompt file {args.prompt_file} is larger than {MAX_PROMPT_BYTES >> 20} MiB"
                )
            prompts.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"prompt file {args.prompt_file} is not UTF-8 text") from None
        except OSError as e:
            raise UserError(f"cannot read prompt file {args.prompt_file}: {e.strerror}") from None
    for i, text in enumerate(prompts, 1):
        try:
            if isinstance(text, str):
                text.encode("utf-8")
        except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8
            raise UserError(f"prompt {i} is not valid UTF-8 text") from None
    return prompts or [DEFAULT_PROMPT]


def _json_output(path: str | None):
    """Checks before any work that the --json file can be written; returns write(out)."""
    import json
    import os

    from runtime.errors import UserError

    if path is None:
        return lambda out: None
    folder = os.path.dirname(os.path.abspath(path))
    special = os.path.exists(path) and not os.path.isfile(path)  # /dev/stdout, a pipe
    if os.path.isdir(path) or (
        not special and (not os.path.isdir(folder) or not os.access(folder, os.W_OK))
    ):
        raise UserError(f"cannot write --json {path}: give a file in an existing, writable folder")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"cannot write --json {path}: the file is read-only")

    def write(out: dict) -> None:
        text = json.dumps(out, indent=2)
        try:
            if special:  # written in place, never replaced
                with open(path, "w") as f:
                    f.write(text)
                return
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError as e:  # the results are printed rather than lost
            print(text)
            raise UserError(
                f"could not write --json {path} ({e.strerror or e}); the results are printed above"
            ) from None

    return write


def cmd_run(args) -> int:
    from runtime import report, run

    stage, overrides = None, list(args.rest)
    if overrides and overrides[0] in RUN_STAGES:
        stage = overrides.pop(0)
    elif overrides and not overrides[0].startswith(("+", "~")) and "=" not in overrides[0]:
        from runtime.errors import UserError

        raise UserError(
            f"unknown stage '{overrides[0]}'",
            hint=f"stages: {', '.join(RUN_STAGES)} (or none: train, then compare); overrides "
            "are written key.path=value",
        )
    write_json = _json_output(args.json)
    prompts = _prompts(args)
    r = run.open_run(args.spec, overrides, args.run_dir, log=report.console.print)
    with run.located(r.doc):
        return _run_stage(args, r, stage, prompts, write_json)


def _run_stage(args, r, stage, prompts, write_json) -> int:
    from runtime import report, run

    if stage in ("bench", "train-router", "bench-rules") or (stage is None and r.spec.bench):
        run.ensure_writable(r.run_dir)  # their results go there: fail now, not after the work
    from runtime.prompts import FilePrompt, chat_prompt

    def text(p) -> str:  # --chat wraps plain prompts; a prompt file's chats are rendered as such
        if isinstance(p, FilePrompt) and (p.messages is not None or not args.chat):
            return p.text(r.tokenizer)
        p = p.prompt if isinstance(p, FilePrompt) else p
        return chat_prompt(r.tokenizer, p) if args.chat else p

    prompts = [text(p) for p in prompts]
    out: dict = {"spec": r.spec.name, "run_dir": str(r.run_dir)}
    if stage in (None, "train") and r.prog.train:
        results = run.train(r, progress=report.stage_progress)
        report.print_train_summary(results)
        out["train"] = [report.stage_row(x) for x in results]
    if stage == "generate":
        g = run.generate(r, prompts, repeats=1)  # timed: tok/s is printed
        report.print_generation(r, prompts, g)
        out["generate"] = {"texts": g.texts, "seconds": g.seconds, **g.stats}
    if stage == "train-router":
        from runtime import router

        out["router"] = router.train_router(r)
    if stage == "bench-rules":
        from runtime import router

        out["bench_rules"] = router.bench_rules(r, batch=r.prog.batch)
    if stage == "eval":
        out["eval"] = run.evaluate_stages(r)
        report.print_eval(out["eval"])
    if stage == "acceptance":
        from runtime.acceptance import run_acceptance

        out["acceptance"] = run_acceptance(r)
        report.print_acceptance(out["acceptance"])
    if stage == "bench" or (stage is None and r.prog.decode is not None):
        if r.spec.bench is not None:
            from runtime import bench

            out["bench"] = bench.run_bench(r)
            report.print_bench(r, out["bench"])
        elif r.prog.decode.policy == "autoregressive":
            g = run.generate(r, prompts, repeats=1)  # timed: tok/s is printed
            report.print_generation(r, prompts, g)
            out["generate"] = {"texts": g.texts, "seconds": g.seconds, **g.stats}
        else:
            cmp = run.compare(r, prompts)
            report.print_comparison(r, prompts, cmp)
            out["compare"] = cmp
    write_json(out)
    return 0


def register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="train, generate, evaluate or benchmark what a spec describes",
        description="With no STAGE: train the spec's stages (completed ones are skipped), then "
        "compare autoregressive decoding with the spec's decode policy.",
    )
    p.add_argument("spec", help="the spec file (YAML)")
    p.add_argument(
        "rest",
        nargs="*",
        metavar="[STAGE] OVERRIDES",
        help=f"optional stage ({', '.join(RUN_STAGES)}), then overrides a.b=1 +a.new=2 ~a.b",
    )
    p.add_argument("--prompt", action="append", help="a prompt (repeatable: one batch)")
    p.add_argument(
        "--prompt-file",
        help="read a prompt from a UTF-8 file; a .jsonl file holds one prompt per line: "
        '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]} (rendered '
        "with the tokenizer's chat template)",
    )
    p.add_argument(
        "--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template"
    )
    p.add_argument("--run-dir", help="where checkpoints and reports go (default runs/<name>)")
    p.add_argument("--json", help="write machine-readable results to this file")
    p.set_defaults(fn=cmd_run)
