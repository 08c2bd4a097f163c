"""`tandemc export`: a spec's trained model as a Hugging Face folder or a GGUF file.

    from runtime import export
    export.export("specs/baseline-speed.yaml", model="small", fmt="hf", out="out/drafter")

Any model that runs alone can be exported: the large model, or an independent drafter
(wiring `kind: none`). A Tandem small model cannot: its layers attend to the large model's
hidden states. The weights are the final checkpoint of the last stage that trains the model
(in the run directory), or, for a model no stage trains, its initial weights (`init`).
JAX is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def export(
    spec_path,
    overrides=(),
    *,
    model: str,
    fmt: str,
    out: str | Path,
    run_dir: str | Path | None = None,
    log=print,
) -> dict:
    """Writes model `model` of the spec (a file, a typed spec or a SpecBuilder) as `fmt` ("hf"
    or "gguf") to `out`; returns what was written: {"model", "format", "weights" (where they
    came from), "files", "tokenizer"}."""
    from compiler.build import build_ir
    from tandem_dsl import api

    from . import run
    from .errors import UserError
    from .weights import EXPORT_FORMATS, export_weights

    if fmt not in EXPORT_FORMATS:
        raise UserError(
            f"unknown export format {fmt!r}", hint=f"--format {' or '.join(EXPORT_FORMATS)}"
        )
    loaded = api.checked(spec_path, overrides)
    spec, prog = loaded.spec, build_ir(loaded.spec)
    run_dir = Path(run_dir) if run_dir else Path("runs") / spec.name
    out = Path(out).expanduser()
    with run.located(loaded.doc):
        _check_exportable(spec, prog, model)
        stage = _training_stage(prog, model)
        _check_weights_exist(spec, prog, model, stage, run_dir)
        _check_out(out, fmt)
        r = run.open_run(spec_path, overrides, run_dir, log=log)
        params, source = _weights(r, model, stage)
    try:
        files, tokenizer = export_weights(fmt, out, r.prog.model(model), params, r.tokenizer)
    except ValueError as e:
        raise UserError(str(e)) from None
    return {
        "model": model,
        "format": fmt,
        "weights": source,
        "files": files,
        "tokenizer": tokenizer,
    }


def _exportable_names(spec, prog) -> list[str]:
    from .weights.layout import llama_problems

    tandem = {w.query for w in spec.wiring if w.kind == "tandem"}
    return [m.name for m in prog.models if m.name not in tandem and not llama_problems(m)]


def _check_exportable(spec, prog, name: str) -> None:
    """UserError unless `name` is a Llama model that runs alone (it reads no other model)."""
    from .errors import UserError
    from .weights.layout import llama_problems

    names = [m.name for m in prog.models]
    others = [n for n in _exportable_names(spec, prog) if n != name]
    instead = f"export {' or '.join(repr(n) for n in others)} instead" if others else ""
    if name not in names:
        raise UserError(
            f"the spec has no model '{name}' (its models: {', '.join(names)})",
            hint=f"--model one of {', '.join(others)}" if others else None,
        )
    for i, w in enumerate(spec.wiring):
        if w.query == name and w.kind == "tandem":
            raise UserError(
                f"model '{name}' is a Tandem small model: every wired layer attends to the "
                f"hidden states of model '{w.memory}', which no other tool computes, so it "
                "cannot run outside tandem-dsl and is not exported",
                field=("wiring", i),
                hint=(instead + ": " if instead else "")
                + "the large model, or an independent drafter (wiring kind: none), runs alone, "
                "e.g. as transformers' assistant_model or llama.cpp's draft model",
            )
    problems = llama_problems(prog.model(name))
    if problems:
        raise UserError(
            f"model '{name}' is not a Llama decoder ({'; '.join(problems)}); both export "
            "formats hold Llama models only",
            field=("models", name),
        )


def _training_stage(prog, name: str):
    """(index, stage) of the last train stage that trains `name`, or None."""
    stages = [(i, s) for i, s in enumerate(prog.train) if name in s.trainable]
    return stages[-1] if stages else None


def _check_weights_exist(spec, prog, name: str, stage, run_dir: Path) -> None:
    """Before any loading: the model was trained (its last stage finished) or imported."""
    from . import checkpoint
    from .errors import UserError, at_field

    if stage is not None:
        index, s = stage
        with at_field(("train", index)):
            if checkpoint.finished(run_dir / s.name) is None:
                raise UserError(
                    f"model '{name}' is trained by stage '{s.name}', which has not finished "
                    f"in {run_dir} (no {run_dir / s.name / 'final.json'})",
                    hint="run `tandemc run SPEC train` first, or pass the run directory that "
                    "holds it with --run-dir",
                )
    elif spec.models[name].init.from_ == "random":
        raise UserError(
            f"model '{name}' has random weights: no train stage trains it and it is not "
            "imported, so there is nothing to export",
            field=("models", name),
            hint="train it in a stage, or start it from a file (init: {from: gguf | "
            "safetensors | checkpoint})",
        )
    saved = Path(spec.tokenizer.path) if spec.tokenizer.path else run_dir / "tokenizer.json"
    if spec.tokenizer.kind == "bpe" and not saved.exists():
        raise UserError(  # open_run would train a new one, which the model never saw
            f"the run's BPE tokenizer {saved} does not exist",
            field=("tokenizer",),
            hint="pass the run directory the model was trained in with --run-dir",
        )


def _check_out(out: Path, fmt: str) -> None:
    from .errors import UserError
    from .run import ensure_writable

    if fmt == "hf":
        ensure_writable(out, "output folder", "--out")
    elif out.is_dir():
        raise UserError(f"--out {out} is a folder", hint="give the path of the .gguf file to write")
    else:
        ensure_writable(out.parent, "folder of the output file", "--out")


def _weights(r, name: str, stage) -> tuple[dict, str]:
    """The model's params and where they came from."""
    import jax

    from compiler import nn

    from . import checkpoint, run
    from .errors import at_field

    if stage is None:
        init = r.spec.models[name].init
        return run.initial_params(r)[name], f"init from {init.from_} {init.path}"
    index, s = stage
    with at_field(("train", index)):
        info = checkpoint.finished(r.run_dir / s.name)
        run._check_trained(r, index, info)  # trained with the spec's current settings
        ckpt = r.run_dir / s.name / info["checkpoint"]
        cfg = r.prog.model(name)
        template = jax.eval_shape(lambda key: nn.init_decoder(cfg, key), jax.random.PRNGKey(0))
        return checkpoint.load_subtree(ckpt, name, template), f"checkpoint {ckpt}"


def cmd_export(args) -> int:
    result = export(
        args.spec,
        args.overrides,
        model=args.model,
        fmt=args.format,
        out=args.out,
        run_dir=args.run_dir,
    )
    print(f"exported model '{result['model']}' ({result['weights']}) as {result['format']}:")
    for f in result["files"]:
        print(f"  {f}")
    print(f"  tokenizer: {result['tokenizer']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained model as a Hugging Face folder or a GGUF file",
        description="Write one model of the spec (the large model, or an independent drafter; "
        "not a Tandem small model, which reads the large model's hidden states) as a Hugging "
        "Face Llama folder (config.json, model.safetensors, tokenizer files) or a llama GGUF "
        "file. Its weights: the final checkpoint of the last stage that trains it, or its "
        "imported initial weights.",
    )
    p.add_argument("spec", help="the spec file (YAML)")
    p.add_argument("overrides", nargs="*", help="overrides: a.b=1  +a.new=2  ~a.b")
    p.add_argument("--model", required=True, help="the model to export (a key of models)")
    p.add_argument(
        "--format", required=True, metavar="hf|gguf", help="a Hugging Face folder, or a GGUF file"
    )
    p.add_argument("-o", "--out", required=True, help="the folder (hf) or .gguf file to write")
    p.add_argument("--run-dir", help="where the trained checkpoints are (default runs/<name>)")
    p.set_defaults(fn=cmd_export)
