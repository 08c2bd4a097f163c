"""`python -m runtime.train_bench SPEC [OVERRIDES...]`: what a teacher cache saves, per train
stage that has one: the train step with the frozen model run live, the same step reading a
stored batch, and the one-off teacher pass that fills a stored batch, side by side (median
of n calls each, interleaved, after a warm-up; the spec's initial weights and batch shapes).

With the cache a stage costs `steps * cached step`, plus `batches * pass` once to fill the
store (shared by the stages that agree on model, data and k); without it `steps * live
step`. A machine line names the CPU's features
and how fast memory streams, since only numbers from one run compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import jax
import numpy as np

from compiler.decode.bench import machine_line
from compiler.timing import timed_call
from compiler.train import init_train_state, make_train_step
from compiler.train.teacher import cached_model, make_teacher_pass

from . import run


def bench_stage(prog, stage, params: dict, repeats: int) -> dict:
    """{"live", "cached", "pass"}: median seconds of each call."""
    live = dataclasses.replace(stage, teacher_cache=None)
    rng = np.random.default_rng(0)
    vocab = prog.model(stage.objective.model).vocab
    tokens = rng.integers(0, vocab, (stage.batch, stage.seq_len + 1)).astype(np.int32)
    teacher_pass = jax.jit(make_teacher_pass(prog, stage))
    model = cached_model(prog, stage)
    stored = {"tokens": tokens, **teacher_pass(params[model], tokens)}
    steps = {"live": (jax.jit(make_train_step(prog, live)), tokens),
             "cached": (jax.jit(make_train_step(prog, stage)), stored)}  # fmt: skip
    state = init_train_state(prog, stage, params)
    calls = {name: (lambda fn=fn, b=b: fn(state, b, jax.random.PRNGKey(0))[1])
             for name, (fn, b) in steps.items()}  # fmt: skip
    calls["pass"] = lambda: teacher_pass(params[model], tokens)
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        jax.block_until_ready(call())  # compile and warm up
    for _ in range(repeats):
        for name, call in calls.items():
            seconds[name].append(timed_call(call)[1])
    return {name: statistics.median(s) for name, s in seconds.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.train_bench", description=__doc__)
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--run-dir", help="where models with init from a checkpoint find it")
    args = p.parse_args(argv)
    r = run.open_run(args.spec, args.overrides, args.run_dir, log=lambda *a: None)
    stages = [s for s in r.prog.train if s.teacher_cache is not None]
    if not stages:
        print(f"{args.spec}: no train stage has a teacher_cache")
        return 2
    params = run.initial_params(r)
    print(f"# {r.prog.name}: train step with the frozen model live vs from a teacher cache, "
          f"median of {args.repeats} after warm-up, {jax.devices()[0].platform}")  # fmt: skip
    print(f"# machine: {machine_line()}")
    print(
        "| stage | live step (ms) | cached step (ms) | speedup | teacher pass (ms) "
        "| steps, live (min) | steps, cached (min) | store fill (min) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for stage in stages:
        t = bench_stage(r.prog, stage, params, args.repeats)
        minutes = [stage.steps * t["live"], stage.steps * t["cached"],
                   stage.teacher_cache.batches * t["pass"]]  # fmt: skip
        print(f"| {stage.name} | {t['live'] * 1e3:.1f} | {t['cached'] * 1e3:.1f} | "
              f"{t['live'] / t['cached']:.2f}x | {t['pass'] * 1e3:.1f} | "
              + " | ".join(f"{m / 60:.1f}" for m in minutes) + " |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
