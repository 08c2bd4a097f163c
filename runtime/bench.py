"""`tandemc run SPEC bench` for a spec with a `bench:` section: every decoding method of the
target side by side, in one process, on the same held-out prompts, batch 1.

Rows: the target alone (autoregressive), prompt lookup (n-gram drafts copied from the context),
standard SPEED with an independent drafter at every gamma, the spec's drafter (the Tandem
small model) at every gamma, and both drafters again with hybrid drafting (`decode.lookup`:
prompt lookup where the context matches, the drafter elsewhere; with the spec's `lookup_min`
and `lookup_gamma`, and the prompt-lookup row drafts lookup_gamma tokens too). Prompts: code
cut from held-out corpus files (the validation split, so no model trained on them), chat messages
wrapped in the tokenizer's chat template, and the lines of `bench.prompt_file` (JSONL,
`runtime.prompts`), each prompt of a class ("code", "chat", or a line's "kind") that the
table gives a speedup column.
Each method is compiled and warmed up first; then the timed runs are interleaved (every method
on every prompt, `repeats` times) so machine drift hits all methods alike, and the fastest run
of each (method, prompt) counts. Each run is followed by the method's prefill alone (its
prompt pass, compiled apart), so the table also gives the speedup net of the prompt, which
costs every method about the same. Then the pieces are timed inside compiled loops (one M_S
step of each drafter, the verify pass at each gamma) to give every SPEED row its ceiling: the
speedup it would reach if every draft were accepted. Writes bench.json, bench.md and
bench.png to the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from compiler.ir import DecodeIR
from compiler.timing import timed_call

from .errors import UserError
from .prompts import chat_prompt, code_before_def, read_prompt_file
from .tokenizer import prompt_ids


def code_prompts(r, n: int, max_tokens: int) -> list[str]:
    """n prompts from held-out corpus files: the code before a function's `def` line and the
    line itself (the model continues with the body), as many whole lines as fit in max_tokens;
    one prompt per file, files in a fixed order, the def line in the middle of its file."""
    from .corpus import SpecData
    from .data import document_keys

    if n == 0:
        return []
    docs = SpecData(r.spec, r.tokenizer).val_docs
    if not docs:
        raise UserError("bench.code_prompts needs held-out files: set data.val_fraction > 0")
    out = []
    for _, path in sorted(zip(document_keys(docs), docs, strict=True)):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        defs = [i for i, line in enumerate(lines) if line.lstrip().startswith("def ") and i > 8]
        if not defs:
            continue
        prompt = code_before_def(r.tokenizer, lines, defs[len(defs) // 2], max_tokens)
        if prompt:
            out.append(prompt)
        if len(out) == n:
            return out
    raise UserError(f"only {len(out)} held-out files hold a function; lower bench.code_prompts")


def file_prompts(r, path: str, max_tokens: int) -> list[tuple[str, str]]:
    """(kind, text) of every line of a prompt file (`runtime.prompts.read_prompt_file`), each
    checked to fit the prompt budget."""
    field = ("bench", "prompt_file")
    out = []
    for p in read_prompt_file(path, field):
        text = p.text(r.tokenizer, field)
        n = len(prompt_ids(r.tokenizer, text))
        if n > max_tokens:
            raise UserError(
                f"{p.where}: the prompt has {n} tokens, at most {max_tokens} fit beside "
                f"decode.max_new_tokens and the longest draft in shapes.max_len {r.prog.max_len}",
                field=field,
                hint="raise shapes.max_len, or shorten the prompt",
            )
        out.append((p.kind, text))
    return out


def bench_prompts(r, widest: DecodeIR) -> list[tuple[str, str]]:
    """(kind, text) of the bench's prompts: `bench.code_prompts` held-out code prompts, the
    chat messages and the prompt file's lines, each short enough for `widest` (the decode
    settings with the longest gamma)."""
    b = r.spec.bench
    budget = min(256, r.prog.max_len - widest.max_new_tokens - widest.gamma - 2)
    prompts = [("code", p) for p in code_prompts(r, b.code_prompts, budget)]
    prompts += [("chat", chat_prompt(r.tokenizer, m)) for m in b.chat_prompts]
    if getattr(b, "prompt_file", None):
        prompts += file_prompts(r, b.prompt_file, widest.prompt_budget(r.prog.max_len))
    return prompts


def kinds_of(prompts) -> list[str]:
    """The prompt classes, in the order they first appear."""
    return list(dict.fromkeys(k for k, _ in prompts))


def methods(
    d: DecodeIR, gammas, drafter: str | None, lookup_n: int, tandem: bool = True
) -> dict[str, DecodeIR]:
    """Row name -> decode settings. The first row is the baseline. `tandem`: decode.draft is
    a Tandem model (else its rows are plain "SPEED" rows)."""
    speed = "Tandem + SPEED" if tandem else "SPEED"
    from .run import autoregressive

    base = dataclasses.replace(d, policy="speed", adaptive=None, draft_ngram=0, lookup=0)
    out = {"autoregressive": autoregressive(d)}
    look_g = d.lookup_gamma or 4  # prompt lookup drafts as many as the hybrid's lookup rounds
    if lookup_n:
        out[f"prompt lookup n={lookup_n} gamma={look_g}"] = dataclasses.replace(
            base, draft=None, draft_ngram=lookup_n, gamma=look_g
        )
    for g in gammas if drafter else ():
        out[f"standard SPEED ({drafter}) gamma={g}"] = dataclasses.replace(
            base, draft=drafter, gamma=g
        )
    for g in gammas:
        out[f"{speed} ({d.draft}) gamma={g}"] = dataclasses.replace(base, gamma=g)
    if lookup_n:  # hybrid drafting: prompt lookup where it matches, the drafter elsewhere
        least = min(d.lookup_min, lookup_n)
        hybrid = dataclasses.replace(base, lookup=lookup_n, lookup_min=least)
        look = f"lookup n={lookup_n}" + (f" from {least}" if least else "")
        look += f" x{d.lookup_gamma}" if d.lookup_gamma else ""
        for g in gammas if drafter else ():
            out[f"standard SPEED + {look} ({drafter}) gamma={g}"] = dataclasses.replace(
                hybrid, draft=drafter, gamma=g
            )
        for g in gammas:
            out[f"{speed} + {look} ({d.draft}) gamma={g}"] = dataclasses.replace(hybrid, gamma=g)
    return out


def run_bench(r) -> dict:
    from compiler.decode.bench import machine_line
    from compiler.sharded_programs import generate_program, prefill_program
    from compiler.sharding import Sharder

    from .run import decode_params, encode_prompts, with_eos

    b, d = r.spec.bench, r.prog.decode
    if d.draft is None:
        raise UserError("the bench compares drafters: decode.draft must name a model")
    d = with_eos(r, d)
    widest = dataclasses.replace(d, gamma=max([*b.gammas, 4]))
    prompts = bench_prompts(r, widest)
    table = methods(d, b.gammas, b.drafter, b.prompt_lookup, r.prog.is_tandem(d.draft))
    tokens, lens = encode_prompts(r, [p for _, p in prompts], widest)  # one width: one compile
    params, backend = {}, None
    for name, dec in table.items():  # packed once per model when the backend is the kernel
        params[name], backend = decode_params(r, dec)
    machine = machine_line()
    r.log(f"bench: {machine}; decode backend {backend}")
    sh = Sharder.for_run(r.prog)
    key = jax.random.key(d.sampling.seed)
    fns, prefills, results = {}, {}, {}
    r.log(f"bench: {len(table)} methods x {len(prompts)} prompts, compiling ...")
    for name, dec in table.items():
        t = time.perf_counter()
        fns[name] = generate_program(r.prog, dec, sh, batch=1, packed=backend.packed)
        prefills[name] = prefill_program(r.prog, dec, sh, batch=1, packed=backend.packed)
        for fn in (fns[name], prefills[name]):
            jax.block_until_ready(fn(params[name], tokens[:1], lens[:1], key))
        r.log(f"bench: {name}: compiled and warmed up in {time.perf_counter() - t:.1f} s")
    best = {(m, i): float("inf") for m in table for i in range(len(prompts))}
    best_prefill = dict(best)
    for rep in range(b.repeats):
        for i in range(len(prompts)):
            args = (jnp.asarray(tokens[i : i + 1]), jnp.asarray(lens[i : i + 1]), key)
            for name, fn in fns.items():
                results[name, i], seconds = timed_call(fn, params[name], *args)
                best[name, i] = min(best[name, i], seconds)
                seconds = timed_call(prefills[name], params[name], *args)[1]
                best_prefill[name, i] = min(best_prefill[name, i], seconds)
        r.log(f"bench: timed run {rep + 1}/{b.repeats} done")
    rows = _rows(table, prompts, results, best, best_prefill)
    ar = rows["autoregressive"]
    r.log(f"bench: the prompts' prefill is {ar['prefill_seconds']:.2f} s of autoregressive's "
          f"{ar['seconds']:.2f} s")  # fmt: skip
    drafters = [d.draft, *([b.drafter] if b.drafter else [])]
    costs = measured_costs(r, d, b.gammas, drafters, tokens.shape[1])
    r.log(
        f"bench: measured M_L step {costs['ar_step_ms']:.1f} ms; M_S step (ms) "
        + ", ".join(f"{k}: {v:.2f}" for k, v in costs["step_ms"].items())
        + "; verify pass by gamma (ms) "
        + ", ".join(f"{k}: {v:.1f}" for k, v in costs["verify_ms"].items())
    )
    _add_ceilings(rows, table, costs)
    out = {
        "spec": r.spec.name,
        "device": jax.devices()[0].device_kind,
        "machine": machine,
        "backend": str(backend),
        "max_new_tokens": d.max_new_tokens,
        "repeats": b.repeats,
        "prompts": [{"kind": k, "text": p} for k, p in prompts],
        "costs": costs,
        "rows": rows,
    }
    _save(r.run_dir, out)
    return out


def measured_costs(r, d: DecodeIR, gammas, drafters, prompt_len: int) -> dict:
    """{"ar_step_ms": M_L over 1 token, "step_ms": {drafter: one M_S step}, "verify_ms":
    {gamma: M_L over gamma + 1 tokens}} (M_L passes with the Tandem memory write), batch 1,
    each timed inside a compiled loop (`compiler.router.costs.measure`), one after the other
    so that they share the machine's state (its speed drifts over a long benchmark)."""
    from compiler.decode.programs import loop_config
    from compiler.router.costs import measure

    from .run import decode_params

    out = {"ar_step_ms": None, "step_ms": {}, "verify_ms": {}}
    for i, name in enumerate(drafters):
        dec = dataclasses.replace(
            d, policy="speed", draft=name, gamma=max(gammas), adaptive=None, lookup=0
        )
        cfg = loop_config(r.prog, dec)
        params = decode_params(r, dec)[0]
        # the verify passes once (the first drafter's config); the others only need the step
        cfg = dataclasses.replace(cfg, buckets=(0, *sorted(gammas)) if i == 0 else (0,))
        c = measure(cfg, params, 1, prompt_len)
        out["step_ms"][name] = c["small_ms"]
        if i == 0:
            out["ar_step_ms"] = c["block_ms"][0]
            out["verify_ms"] = {int(k): v for k, v in c["block_ms"].items() if k > 0}
    return out


def _add_ceilings(rows: dict, table: dict, costs: dict) -> None:
    """row["ceiling"]: the speedup of a SPEED row if all its drafts were accepted,
    (gamma + 1) t_AR / (gamma t_step + t_verify), all from the measured costs (not for hybrid
    rows: their rounds drafted by lookup take no drafter steps)."""
    t_ar = costs["ar_step_ms"]
    for name, dec in table.items():
        if dec.lookup:
            continue
        step = costs["step_ms"].get(dec.draft)
        if dec.policy == "speed" and step is not None and dec.gamma in costs["verify_ms"]:
            g = dec.gamma
            rows[name]["ceiling"] = (g + 1) * t_ar / (g * step + costs["verify_ms"][g])


def _rows(table, prompts, results, best, best_prefill) -> dict:
    from .run import decode_stats, token_rows

    base = next(iter(table))
    ref = {i: token_rows(results[base, i]) for i in range(len(prompts))}
    rows = {}
    for name in table:
        sec = [best[name, i] for i in range(len(prompts))]
        s = decode_stats([results[name, i] for i in range(len(prompts))], sum(sec))
        row = {
            "tokens": s["tokens"],
            "seconds": sum(sec),
            "prefill_seconds": sum(best_prefill[name, i] for i in range(len(prompts))),
            "tokens_per_s": s["tokens_per_s"],
            "tau": s["tau"] if s["rounds"] else None,
            "large_calls_per_token": s["large_calls_per_token"],
            "small_calls_per_token": s["small_calls_per_token"],
            "identical": all(token_rows(results[name, i]) == ref[i] for i in range(len(prompts))),
        }
        if table[name].lookup:  # hybrid: the share of rounds drafted by prompt lookup
            row["lookup_share"] = s["lookup_rounds"] / max(s["rounds"], 1)
        for kind in kinds_of(prompts):  # per-kind speedups: total time ratio on those prompts
            idx = [i for i, (k, _) in enumerate(prompts) if k == kind]
            if idx:
                row[f"speedup_{kind}"] = sum(best[base, i] for i in idx) / sum(sec[i] for i in idx)
        rows[name] = row
    for row in rows.values():
        row["speedup"] = rows[base]["seconds"] / row["seconds"]
        # None where timing noise puts a prefill above its whole run (tiny models)
        nets = _net(rows[base]), _net(row)
        row["decode_speedup"] = nets[0] / nets[1] if min(nets) > 0 else None
    for name, row in rows.items():  # Tandem vs standard SPEED at the same gamma (and lookup)
        if name.startswith("Tandem"):
            g, hybrid = name.rsplit("gamma=", 1)[1], "+ lookup" in name
            std = [
                v
                for k, v in rows.items()
                if k.startswith("standard") and k.endswith(f"={g}") and ("+ lookup" in k) == hybrid
            ]
            if std:
                row["gain_over_standard"] = std[0]["seconds"] / row["seconds"]
    return rows


def _net(row: dict) -> float:
    """A row's seconds net of its prompts' prefill (the fastest run of each, timed apart)."""
    return row["seconds"] - row["prefill_seconds"]


def markdown(out: dict) -> str:
    """The table as Markdown (bench.md, and what docs/BENCHMARKS.md quotes)."""
    kinds = kinds_of((p["kind"], p["text"]) for p in out["prompts"])
    head = ["method", "tokens/s", "speedup", *[f"speedup {k}" for k in kinds]]
    head += ["speedup net of prefill"]
    head += ["vs standard SPEED", "tau", "M_L calls/token", "M_S calls/token"]
    head += ["ceiling (all accepted)"]
    hybrid = any("lookup_share" in row for row in out["rows"].values())
    head += ["rounds by lookup"] if hybrid else []
    head += ["greedy == M_L"]
    lines = [f"machine: {out['machine']}; decode backend: {out['backend']}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in out["rows"].items():
        cells = [name, f"{row['tokens_per_s']:.1f}", f"{row['speedup']:.2f}x"]
        cells += [f"{row[f'speedup_{k}']:.2f}x" for k in kinds]
        net = row["decode_speedup"]
        cells += [f"{net:.2f}x" if net else "-"]
        gain = row.get("gain_over_standard")
        cells += [f"{gain:.2f}x" if gain else "-", f"{row['tau']:.2f}" if row["tau"] else "-"]
        cells += [f"{row['large_calls_per_token']:.3f}", f"{row['small_calls_per_token']:.3f}"]
        cells += [f"{row['ceiling']:.2f}x" if "ceiling" in row else "-"]
        if hybrid:
            cells += [f"{row['lookup_share']:.0%}" if "lookup_share" in row else "-"]
        cells += ["yes" if row["identical"] else "NO"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save(run_dir: Path, out: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench.json").write_text(json.dumps(out, indent=2))
    (run_dir / "bench.md").write_text(markdown(out))
    _plot(run_dir / "bench.png", out["rows"])


def _plot(path: Path, rows: dict) -> None:
    """Speedup and tau vs gamma for each drafter; autoregressive and prompt lookup as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[str, list] = {}
    for name, row in rows.items():
        if "gamma=" in name and not name.startswith("prompt lookup"):
            label, g = name.rsplit(" gamma=", 1)
            series.setdefault(label, []).append((int(g), row["speedup"], row["tau"]))
    for label, pts in series.items():
        g, s, t = zip(*sorted(pts), strict=True)
        ax_s.plot(g, s, marker="o", label=label)
        ax_t.plot(g, t, marker="o", label=label)
    for name, row in rows.items():
        if name.startswith("prompt lookup"):
            ax_s.axhline(row["speedup"], ls="--", color="gray", label=name)
    ax_s.axhline(1.0, ls=":", color="black", label="autoregressive")
    ax_s.set(xlabel="gamma", ylabel="speedup over autoregressive", title="wall-clock speedup")
    ax_t.set(xlabel="gamma", ylabel="tau (tokens per M_L call)", title="tau")
    ax_s.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
