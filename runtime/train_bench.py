"""`python -m runtime.train_bench SPEC [OVERRIDES...]`: what a teacher cache saves, per train
stage that has one: the train step with the frozen model run live, the same step reading a
stored batch, and the one-off teacher pass that fills a stored batch, side by side (median
of n calls each, interleaved, after a warm-up; the spec's initial weights and batch shapes).

With the cache a stage costs `steps * cached step`, plus `batches * pass` once to fill the
store (shared by the stages that agree on model, data and k); without it `steps * live
step`. A stage whose objective sets draft_vocab also times its cached step with the whole
output layer. A machine line names the CPU's features and how fast memory streams, since
only numbers from one run compare.

`--sync STAGE` instead times that stage's steps/s two ways, interleaved: pulling the loss to
the host after every step (what the training loop did before it queued metrics), and pulling
the queued metrics once per run of steps (what it does now, `runtime.train`).
`--scale STAGE` times that stage's step under each `train[i].scale` setting: compile seconds,
step seconds, XLA's temp bytes next to `compiler.memory`'s estimate.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from functools import partial

import jax
import numpy as np

from compiler.decode.bench import machine_line
from compiler.memory import activation_bytes
from compiler.sharding import Sharder
from compiler.timing import timed_call
from compiler.train import init_train_state, make_train_step
from compiler.train.teacher import cached_model, make_teacher_pass

from . import run


def bench_stage(prog, stage, params: dict, repeats: int) -> dict:
    """{"live", "cached", "pass"}: median seconds of each call; with an objective.draft_vocab
    also "all ids", the cached step with the whole output layer."""
    live = dataclasses.replace(stage, teacher_cache=None)
    rng = np.random.default_rng(0)
    vocab = prog.model(stage.objective.model).vocab
    tokens = rng.integers(0, vocab, (stage.batch, stage.seq_len + 1)).astype(np.int32)
    teacher_pass = jax.jit(make_teacher_pass(prog, stage))
    model = cached_model(prog, stage)
    stored = {"tokens": tokens, **teacher_pass(params[model], tokens)}
    steps = {"live": (jax.jit(make_train_step(prog, live)), tokens),
             "cached": (jax.jit(make_train_step(prog, stage)), stored)}  # fmt: skip
    if stage.objective.draft_vocab:  # what the cut output layer saves
        whole = dataclasses.replace(stage.objective, draft_vocab=0)
        whole = dataclasses.replace(stage, objective=whole)
        steps["all ids"] = (jax.jit(make_train_step(prog, whole)), stored)
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


def bench_sync(prog, stage, params: dict, steps: int, repeats: int) -> dict:
    """{"per step", "queued"}: the best steps/s over `repeats` runs of `steps` steps."""
    vocab = prog.model(stage.objective.model).vocab
    tokens = np.random.default_rng(0).integers(0, vocab, (stage.batch, stage.seq_len + 1))
    tokens = tokens.astype(np.int32)
    step = jax.jit(make_train_step(prog, stage), donate_argnums=0)
    state = init_train_state(prog, stage, params)
    state, _ = step(state, tokens, jax.random.PRNGKey(0))  # compile
    rates: dict[str, list[float]] = {"per step": [], "queued": []}
    for _ in range(repeats):
        for mode in rates:
            start, pending = time.perf_counter(), []
            for i in range(steps):
                state, m = step(state, tokens, jax.random.PRNGKey(i))
                if mode == "per step":
                    float(m["loss"])  # a device-to-host copy waits for the step
                else:
                    pending.append(m)
            jax.device_get((pending, state["step"]))
            rates[mode].append(steps / (time.perf_counter() - start))
    return {mode: max(r) for mode, r in rates.items()}


SCALES = {
    "as specified": {},
    "remat full": {"remat": "full"},
    "scan_layers": {"scan_layers": True},
    "scan_layers + remat full": {"scan_layers": True, "remat": "full"},
    "grad_accum 4": {"grad_accum": 4},
    "attention fused": {"attention": "fused"},
}


def bench_scale(prog, stage, params: dict, repeats: int) -> dict:
    """{setting: (compile s, median step s, XLA temp bytes, estimated bytes)}."""
    tokens = np.zeros((stage.batch, stage.seq_len + 1), np.int32)
    sh = Sharder.for_compile(prog)
    out = {}
    for name, change in SCALES.items():
        st = dataclasses.replace(stage, scale=dataclasses.replace(stage.scale, **change))
        if stage.batch % st.scale.grad_accum:
            continue
        state = init_train_state(prog, st, params)
        start = time.perf_counter()
        step = jax.jit(make_train_step(prog, st)).lower(state, tokens, jax.random.PRNGKey(0))
        step = step.compile()
        compile_s = time.perf_counter() - start
        call = partial(step, state, tokens, jax.random.PRNGKey(0))
        seconds = [timed_call(call)[1] for _ in range(repeats)]
        grads = sum(x.nbytes for x in jax.tree.leaves(state["params"]))
        temp = step.memory_analysis().temp_size_in_bytes
        estimate = activation_bytes(prog, st, sh) + grads
        out[name] = (compile_s, statistics.median(seconds), temp, estimate)
    return out


def _stage_named(r, name: str):
    stage = next((s for s in r.prog.train if s.name == name), None)
    if stage is None:
        print(f"no train stage '{name}': the stages are {[s.name for s in r.prog.train]}")
    return stage


def _print_scale(r, name: str, repeats: int) -> int:
    stage = _stage_named(r, name)
    if stage is None:
        return 2
    rows = bench_scale(r.prog, stage, run.initial_params(r), repeats)
    print(f"# {r.prog.name}: stage {name}, {stage.batch}x{stage.seq_len} tokens, median of "
          f"{repeats} steps, {jax.devices()[0].platform}")  # fmt: skip
    print(f"# machine: {machine_line()}")
    print("| scale | compile (s) | step (s) | XLA temp (MB) | estimate (MB) |")
    print("|---|---|---|---|---|")
    for setting, (compile_s, step_s, temp, estimate) in rows.items():
        print(f"| {setting} | {compile_s:.1f} | {step_s:.3f} | {temp / 1e6:.0f} | "
              f"{estimate / 1e6:.0f} |")  # fmt: skip
    return 0


def _print_sync(r, name: str, steps: int, repeats: int) -> int:
    stage = _stage_named(r, name)
    if stage is None:
        return 2
    rates = bench_sync(r.prog, stage, run.initial_params(r), steps, repeats)
    print(f"# {r.prog.name}: stage {name}, {steps} steps per run, best of {repeats}, "
          f"{jax.devices()[0].platform}")  # fmt: skip
    print(f"# machine: {machine_line()}")
    print("| stage | loss pulled every step (steps/s) | metrics queued (steps/s) | ratio |")
    print("|---|---|---|---|")
    ratio = rates["queued"] / rates["per step"]
    print(f"| {name} | {rates['per step']:.3f} | {rates['queued']:.3f} | {ratio:.3f}x |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.train_bench", description=__doc__)
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--run-dir", help="where models with init from a checkpoint find it")
    p.add_argument("--sync", metavar="STAGE", help="time STAGE's steps with and without a "
                   "per-step device-to-host sync instead")  # fmt: skip
    p.add_argument("--steps", type=int, default=20, help="steps per run with --sync")
    p.add_argument("--scale", metavar="STAGE", help="time STAGE's step under each scale "
                   "setting (remat, scan_layers, grad_accum, fused attention) instead")  # fmt: skip
    args = p.parse_args(argv)
    r = run.open_run(args.spec, args.overrides, args.run_dir, log=lambda *a: None)
    if args.sync:
        return _print_sync(r, args.sync, args.steps, args.repeats)
    if args.scale:
        return _print_scale(r, args.scale, args.repeats)
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
        "| steps, live (min) | steps, cached (min) | store fill (min) "
        "| cached step, all ids (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for stage in stages:
        t = bench_stage(r.prog, stage, params, args.repeats)
        minutes = [stage.steps * t["live"], stage.steps * t["cached"],
                   stage.teacher_cache.batches * t["pass"]]  # fmt: skip
        print(f"| {stage.name} | {t['live'] * 1e3:.1f} | {t['cached'] * 1e3:.1f} | "
              f"{t['live'] / t['cached']:.2f}x | {t['pass'] * 1e3:.1f} | "
              + " | ".join(f"{m / 60:.1f}" for m in minutes)
              + (f" | {t['all ids'] * 1e3:.1f} |" if "all ids" in t else " | - |"))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
