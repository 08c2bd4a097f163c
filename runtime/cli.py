"""`tandemc`: the command line.

User errors print diagnostics and exit 2 without a traceback (`--debug` shows one).
`check`, `render` and `schema` never import JAX, so they stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from runtime.errors import UserError
from tandem_dsl.diagnostics import SpecError

EXIT_USER_ERROR = 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tandem-dsl")
    except PackageNotFoundError:
        return "0.0.0+local"


def cmd_check(args) -> int:
    from tandem_dsl import api

    start = time.perf_counter()
    spec = api.load(args.spec, args.overrides)
    parts = ", ".join(f"{n} ({m.n_layers}L d{m.d_model})" for n, m in spec.models.items())
    decode = f"decode {spec.decode.policy}" if spec.decode else "no decode"
    print(
        f"ok: {args.spec}: '{spec.name}': models {parts}; {len(spec.wiring)} wiring, "
        f"{len(spec.train)} train stage(s), {decode} [{time.perf_counter() - start:.2f}s]"
    )
    return 0


def cmd_render(args) -> int:
    from tandem_dsl import api

    if args.resolved or args.provenance:
        loaded = api.load_checked(args.spec, args.overrides)
        doc = loaded.doc
        tree = api.to_tree(loaded.spec) if args.resolved else doc.tree
    else:
        doc = api.load_raw(args.spec, args.overrides)
        tree = doc.tree
    if args.provenance:
        for path, origin, value in api.provenance(doc):
            print(f"{path}: {json.dumps(value)}  # {origin}")
    else:
        sys.stdout.write(api.dump_yaml(tree))
    return 0


def cmd_schema(args) -> int:
    if args.format == "md":
        from tandem_dsl.reference import markdown

        sys.stdout.write(markdown())
    else:
        from tandem_dsl.schema import spec_schema

        print(json.dumps(spec_schema(), indent=2))
    return 0


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the spec file (YAML)")
    p.add_argument(
        "overrides", nargs="*", help="overrides applied left to right: a.b=1  +a.new=2  ~a.b"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandemc", description="Compile and run Tandem Transformer specs."
    )
    parser.add_argument("--version", action="version", version=f"tandemc {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate a spec (exit 0, or diagnostics and exit 2)")
    _add_spec_args(p)
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("render", help="print the merged (or resolved) spec as YAML")
    _add_spec_args(p)
    p.add_argument("--resolved", action="store_true", help="defaults filled, expressions evaluated")
    p.add_argument("--provenance", action="store_true", help="show where every value came from")
    p.set_defaults(fn=cmd_render)

    p = sub.add_parser("schema", help="print the JSON Schema, or the reference page")
    p.add_argument("--format", choices=["json", "md"], default="json")
    p.set_defaults(fn=cmd_schema)

    from runtime import commands, export, pull

    commands.register(sub)
    pull.register(sub)
    export.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after flags (`render SPEC --resolved a.b=1`): argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        field = "overrides" if hasattr(args, "overrides") else "rest"
        if not hasattr(args, field) or any(x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(args, field, [*getattr(args, field), *extra])
    try:
        return args.fn(args)
    except SpecError as e:
        if args.debug:
            raise
        print(e.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except UserError as e:
        if args.debug:
            raise
        hint = f"\n  hint: {e.hint}" if e.hint else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
