"""What `tandemc run` prints: progress bars, summary tables, comparisons."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

console = Console(highlight=False, soft_wrap=True)


def stage_progress(stage):
    """A progress callback for one stage: step, loss, tokens/s and ETA on one bar."""
    progress = Progress(
        TextColumn(f"[bold]{stage.name:<10}[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = None

    def update(step, total, loss, tokens_per_s):
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task(stage.name, total=total, completed=step - 1, loss=loss, tps=0)
        progress.update(task, completed=step, loss=loss, tps=tokens_per_s)
        if step >= total:
            progress.stop()

    return update


def stage_row(result) -> dict:
    m = result.metrics
    return {
        "stage": result.name,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "tokens_per_s": round(result.tokens_per_s),
        "skipped": result.skipped,
        **{k: round(v, 4) for k, v in m.items() if k in ("loss", "accuracy", "agreement")},
    }


def print_train_summary(results) -> None:
    table = Table(title="training")
    for col in ("stage", "steps", "time", "tok/s", "val loss", "val acc", "agreement"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for r in results:
        m = r.metrics
        table.add_row(
            r.name,
            str(r.steps),
            "done before" if r.skipped else f"{r.seconds:.0f} s",
            "-" if r.skipped else f"{r.tokens_per_s:,.0f}",
            f"{m['loss']:.3f}" if "loss" in m else "-",
            f"{m['accuracy']:.3f}" if "accuracy" in m else "-",
            f"{m['agreement']:.3f}" if "agreement" in m else "-",
        )
    console.print(table)


def print_generation(r, prompts, g) -> None:
    for prompt, text in zip(prompts, g.texts, strict=False):
        line = Text(prompt, style="dim")  # user text: never read as markup
        line.append(text)
        console.print(line)
    s = g.stats
    console.print(
        f"{s['tokens']} tokens in {g.seconds * 1000:.0f} ms "
        f"({s['tokens_per_s']:,.0f} tok/s{'' if g.timed else ', including compile'}), "
        f"tau {s['tau']:.2f}, large calls/token {s['large_calls_per_token']:.2f}, "
        f"small calls/token {s['small_calls_per_token']:.2f}; mat-muls: {s['backend']}"
    )
    if s.get("lookup_rounds"):  # hybrid drafting
        console.print(f"rounds drafted by prompt lookup: {s['lookup_rounds']} of {s['rounds']}")


def print_eval(rows: dict) -> None:
    table = Table(title="evaluation (validation split)")
    for col in ("stage", "loss", "accuracy", "agreement"):
        table.add_column(col)
    for name, m in rows.items():
        table.add_row(
            name, *(f"{m[k]:.4f}" if k in m else "-" for k in ("loss", "accuracy", "agreement"))
        )
    console.print(table)


def print_comparison(r, prompts, c: dict) -> None:
    d = r.prog.decode
    console.print(
        f"\n[bold]{r.spec.name}[/bold]: autoregressive {d.target} vs {c['policy']} "
        f"(draft {d.draft}, gamma {d.gamma}), "
        + ("greedy" if d.sampling.greedy else f"T={d.sampling.temperature}")
        + f", {len(prompts)} prompt(s) x {d.max_new_tokens} tokens"
    )
    table = Table()
    for col in ("decoding", "tokens/s", "speedup", "tau", "M_L calls/token", "M_S calls/token"):
        table.add_column(col, justify="right" if col != "decoding" else "left")
    for name, s, speed in (
        ("autoregressive", c["baseline"], 1.0),
        (c["policy"], c["ours"], c["speedup"]),
    ):
        table.add_row(
            name,
            f"{s['tokens_per_s']:,.0f}",
            f"{speed:.2f}x",
            f"{s['tau']:.2f}" if s["rounds"] else "-",
            f"{s['large_calls_per_token']:.3f}",
            f"{s['small_calls_per_token']:.3f}",
        )
    console.print(table)
    console.print(
        f"identical output: {'yes' if c['identical'] else 'NO'}  (tau counts the bonus token); "
        f"mat-muls: {c['ours']['backend']}"
    )
    ours = c["ours"]
    if ours.get("lookup_rounds"):  # hybrid drafting
        console.print(
            f"rounds drafted by prompt lookup: {ours['lookup_rounds']} of {ours['rounds']}"
        )
    console.print("[dim]sample:[/dim]", markup=True)
    console.print(prompts[0] + c["text"][0], markup=False)


def _prompt_counts(out: dict) -> str:
    """'26 prompts (12 code, 14 chat)' for a bench or acceptance result."""
    kinds = [p["kind"] for p in out["prompts"]]
    counts = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
    return f"{len(kinds)} prompts ({counts})"


def print_acceptance(out: dict) -> None:
    from runtime.acceptance import markdown

    console.print(
        f"\n[bold]{out['spec']}[/bold]: greedy drafts the target accepts on its own "
        f"continuations of {_prompt_counts(out)}, {out['max_new_tokens']} new tokens, "
        "by teacher forcing (no decode loop, no timing)"
    )
    console.print(markdown(out), markup=False)
    console.print(
        "tau counts the correction token; d = distance from the frontier (d=1: a round's "
        "first draft); a lookup round drafts decode.lookup_gamma tokens (else gamma)"
    )


def print_bench(r, out: dict) -> None:
    from runtime.bench import markdown

    console.print(
        f"\n[bold]{out['spec']}[/bold]: {_prompt_counts(out)}, "
        f"batch 1, {out['max_new_tokens']} new tokens, greedy, "
        f"fastest of {out['repeats']} interleaved runs, on {out['device']}"
    )
    console.print(markdown(out), markup=False)
    console.print(f"tau counts the bonus token; table, plot and raw numbers in {r.run_dir}/bench.*")
