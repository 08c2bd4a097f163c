"""`tandemc run SPEC train-router` and `tandemc run SPEC bench-rules`.

train-router: run the trained tandem (Tandem + SPEED, a fixed block of max_gamma drafts) on
prompts cut from the training split, record the router's features and the TV / rejection
labels at every drafted position (`compiler.router.collect`), hold out a validation split, fit
the MLP with BCE toward TV, and report loss, AUC (router and the confidence baseline) and
calibration bins. Stage directory `<run dir>/router/`: the collected data (`data.npz`, reused
on resume), checkpoints (`step_*/`, `runtime.checkpoint`), `final.json` with the report.

bench-rules: every stop rule on the same prompts (validation split) in one process, side by
side: autoregressive M_L, fixed gamma (several), confidence thresholds, the +2/-1 heuristic,
the router with the paper's threshold rule and with the cost-aware expected-gain rule (costs
measured here, now, at this batch size), and prompt lookup.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from compiler.decode.programs import make_generate
from compiler.decode.rules import (
    RULES,
    ConfidenceRule,
    FixedRule,
    HeuristicRule,
    MarginRule,
    RouterRule,
)
from compiler.ir import AdaptiveIR
from compiler.router import ROUTER
from compiler.router.collect import RouterData, collect, collect_config, concat
from compiler.router.fit import fit, split
from compiler.timing import timed_call

from . import checkpoint
from .stop_rule import STAGE, _adaptive, _template, load_router, measure_costs


def _prompts(r, split_name: str, n_rows: int, prompt_len: int, seed: int = 0) -> np.ndarray:
    from compiler.loss_mask import token_ids

    from .corpus import SpecData
    from .data import TokenStream

    data = SpecData(r.spec, r.tokenizer)
    docs = data.train_docs if split_name == "train" else data.val_docs
    stream = TokenStream(docs, r.tokenizer, seq_len=prompt_len - 1, batch=n_rows,
                         seed=seed, loop=False, window=1, max_batches=1)  # fmt: skip
    # clean ids: JSONL chat data flags its context tokens (`compiler.loss_mask`)
    return token_ids(np.asarray(next(iter(stream)), np.int32))  # [n_rows, prompt_len]


def train_router(r, batches: int = 12, rows: int = 8, prompt_len: int = 64, rounds: int = 24,
                 steps: int = 1500, val_fraction: float = 0.2) -> dict:  # fmt: skip
    """Collect, fit, checkpoint, report. Completed stages are skipped (final.json)."""
    from .run import trained_params

    d, a = _adaptive(r)
    stage_dir = r.run_dir / STAGE
    info = checkpoint.finished(stage_dir)
    if info is not None:
        r.log(f"{STAGE}: done ({stage_dir / 'final.json'}); delete the directory to retrain")
        return info
    stage_dir.mkdir(parents=True, exist_ok=True)
    params = trained_params(r, require=True)
    data_file = stage_dir / "data.npz"
    if data_file.exists():
        with np.load(data_file) as z:
            data = RouterData(*(z[f] for f in RouterData._fields))
        r.log(f"{STAGE}: reusing {len(data.tv)} collected positions from {data_file}")
    else:
        # drafts up to max_gamma (the spec's, or the default when the spec has no adaptive
        # section): the router must see every position the adaptive loop can reach
        cfg = collect_config(r.prog, dataclasses.replace(d, adaptive=a), max_new=rounds * 4)
        parts, t0 = [], time.perf_counter()
        for i in range(batches):
            prompt = _prompts(r, "train", rows, prompt_len, seed=1000 + i)
            lens = np.full((rows,), prompt_len, np.int32)
            parts.append(collect(cfg, params, prompt, lens, jax.random.key(i), rounds, a.top_k))
            n = sum(len(p.tv) for p in parts)
            r.log(f"{STAGE}: collect {i + 1}/{batches} batches, {n} positions, "
                  f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
        data = concat(parts)
        tmp = stage_dir / ".data.tmp.npz"
        np.savez(tmp, **data._asdict())
        tmp.replace(data_file)
    train, val = split(data, val_fraction)
    n_in = data.x.shape[1]
    meta = {"shape_hash": checkpoint.shape_hash({ROUTER: _template(n_in, a.hidden)}),
            "top_k": a.top_k, "hidden": a.hidden, "activation": a.activation}  # fmt: skip
    init, start = None, 0
    last = checkpoint.latest(stage_dir)
    if last is not None:
        tree, m = checkpoint.restore(last, {ROUTER: _template(n_in, a.hidden)})
        init, start = tree[ROUTER], m["step"]
        r.log(f"{STAGE}: resuming from {last.name}")

    def save(step, router):
        checkpoint.save(stage_dir, step, {ROUTER: router}, meta)

    def progress(step, total, loss):
        r.log(f"{STAGE}: step {step}/{total} bce {loss:.4f}")

    res = fit(train, val, a.hidden, a.activation, steps, init=init, start_step=start,
              checkpoint=save, progress=progress)  # fmt: skip
    ckpt = checkpoint.latest(stage_dir)
    if ckpt is None or checkpoint.read_meta(ckpt)["step"] != steps:
        ckpt = checkpoint.save(stage_dir, steps, {ROUTER: res.router}, meta)
    out = {"checkpoint": ckpt.name, "steps": steps, "positions": len(data.tv),
           "train_positions": len(train.tv), "val_positions": len(val.tv),
           "acceptance_by_position": _by_position(data), **res.report}  # fmt: skip
    checkpoint.write_json_atomic(stage_dir / "final.json", out)
    print_router_report(r, out)
    return out


def _by_position(data: RouterData) -> list[float]:
    return [float(1 - data.reject[data.position == i].mean())
            for i in np.unique(data.position)]  # fmt: skip


def print_router_report(r, rep: dict) -> None:
    v = rep["val"]
    r.log(f"router: {rep['train_positions']} train / {rep['val_positions']} validation positions; "
          f"validation BCE {v['bce']:.4f} (train {rep['train']['bce']:.4f}), mean TV "
          f"{v['mean_tv']:.3f}, rejection rate {v['reject_rate']:.3f}")  # fmt: skip
    r.log(f"AUC for rejection: router {v['auc_router']:.3f}, confidence (1 - top p) "
          f"{v['auc_confidence']:.3f}")  # fmt: skip
    r.log(
        "calibration (validation): predicted acceptance bin | n | mean predicted | observed "
        "acceptance | 1 - TV"
    )
    for b in v["calibration"]:
        r.log(f"  {b['bin']} | {b['n']:6d} | {b['predicted_accept']:.3f} | "
              f"{b['observed_accept']:.3f} | {b['one_minus_tv']:.3f}")  # fmt: skip


# --- benchmark ------------------------------------------------------------------------------


def rule_table(r, router: dict | None, costs: dict, gammas, conf, max_gamma: int):
    """name -> (DecodeIR, stop_rule or None[, verify buckets])."""
    d, a = _adaptive(r)
    base = dataclasses.replace(d, eos_id=-1, adaptive=None, draft_ngram=0, lookup=0)
    ad = dataclasses.replace(base, policy="adaptive",
                             adaptive=AdaptiveIR(rule="fixed", max_gamma=max_gamma))  # fmt: skip
    rules = {"autoregressive M_L": (dataclasses.replace(base, policy="autoregressive",
                                                        draft=None), None)}  # fmt: skip
    for g in gammas:
        rules[f"fixed gamma={g}"] = (dataclasses.replace(base, policy="speed", gamma=g), None)
    for t in conf:
        rules[f"confidence >= {t}"] = (ad, ConfidenceRule(t))
    for t in conf:
        rules[f"margin >= {t}"] = (ad, MarginRule(t))
    rules["+2/-1 heuristic"] = (ad, HeuristicRule(4, max_gamma))
    if router is not None:
        for t in sorted({a.threshold, 0.5}):
            rules[f"router threshold {t}"] = (ad, RouterRule(d.draft, a.top_k, t, a.activation))
        capped = dataclasses.replace(d, adaptive=dataclasses.replace(a, max_gamma=max_gamma))
        rules["router expected_gain"] = (ad, RULES["expected_gain"](capped, costs))
    # overhead checks: the adaptive loop (per-step rule, bucketed verify) with a fixed rule,
    # and the paper's rule with the verify pass always max_gamma + 1 tokens wide
    rules["adaptive loop, fixed 6 drafts"] = (ad, FixedRule(min(6, max_gamma)))
    if router is not None:
        rules[f"router threshold {a.threshold}, no buckets"] = (
            ad, RouterRule(d.draft, a.top_k, a.threshold, a.activation), ())  # fmt: skip
    lookup = dataclasses.replace(base, policy="speed", draft=None, draft_ngram=3, gamma=4)
    rules["prompt lookup n=3, gamma=4"] = (lookup, None)
    return rules


def bench_rules(r, batch: int = 1, prompt_len: int = 64, repeats: int = 3,
                gammas=(2, 3, 4, 6, 8), conf=(0.6, 0.8)) -> dict:  # fmt: skip
    from .run import decode_params, trained_params

    d, a = _adaptive(r)
    max_gamma = min(a.max_gamma, 16)
    trained_params(r, require=True)  # the error that names the missing stages
    params, backend = decode_params(r, d)
    params = dict(params)
    r.log(f"# decode backend {backend}")
    router = load_router(r)
    if router is None:
        r.log("no trained router (run `tandemc run SPEC train-router`): router rules skipped")
    else:
        params[ROUTER] = router
    prompt = jnp.asarray(_prompts(r, "validation", batch, prompt_len))
    lens = jnp.full((batch,), prompt_len, jnp.int32)
    key = jax.random.key(d.sampling.seed)
    costs = measure_costs(r, params, batch, prompt_len, max_gamma)
    ratio = costs["small_ms"] / costs["block_ms"][1]
    r.log(
        f"# batch {batch}, prompt {prompt_len} tokens (validation split), "
        f"{d.max_new_tokens} new tokens, greedy, max_gamma {max_gamma}, "
        f"best of {repeats} interleaved runs"
    )
    r.log(f"# measured: M_S step {costs['small_ms']:.3f} ms; verify pass by bucket (drafts: ms) "
          + ", ".join(f"{n}: {v:.3f}" for n, v in costs["block_ms"].items())
          + f"; cost ratio small step / 2-token verify = {ratio:.3f}")  # fmt: skip
    table = rule_table(r, router, costs, gammas, conf, max_gamma)
    args = (params, prompt, lens, key)
    fns, results, best = {}, {}, {}
    for name, (dec, rule, *bk) in table.items():  # compile and warm up every program first
        fns[name] = make_generate(r.prog, dec, stop_rule=rule, buckets=bk[0] if bk else None)
        results[name] = jax.block_until_ready(fns[name](*args))
        best[name] = float("inf")
    for _ in range(repeats):  # then interleave the timed runs: drift hits every rule alike
        for name, fn in fns.items():
            best[name] = min(best[name], timed_call(fn, *args)[1])
    r.log(
        "| rule | tokens/s | speedup | tau | M_L calls/token | M_S calls/token | drafts/round "
        "| greedy == M_L |"
    )
    r.log("|---|---|---|---|---|---|---|---|")
    from .run import decode_stats, token_rows

    rows = {}
    ref_tokens, ref_tps = None, None
    for name, res in results.items():
        s = decode_stats([res], best[name])
        toks = token_rows(res)
        if ref_tokens is None:
            ref_tokens, ref_tps = toks, s["tokens_per_s"]
        row = {
            "tokens_per_s": s["tokens_per_s"],
            "speedup": s["tokens_per_s"] / ref_tps,
            "tau": s["tau"] if s["rounds"] else None,
            "large_calls_per_token": s["large_calls_per_token"],
            "small_calls_per_token": s["small_calls_per_token"],
            "drafts_per_round": s["drafts_per_round"],
            "identical": toks == ref_tokens,
        }
        rows[name] = row
        tau = f"{row['tau']:.2f}" if row["tau"] else "-"
        r.log(f"| {name} | {row['tokens_per_s']:.0f} | {row['speedup']:.2f}x | {tau} "
              f"| {row['large_calls_per_token']:.3f} | {row['small_calls_per_token']:.3f} "
              f"| {row['drafts_per_round']:.2f} | {row['identical']} |")  # fmt: skip
    out = {"batch": batch, "costs": costs, "rules": rows}
    Path(r.run_dir / STAGE / f"bench_b{batch}.json").write_text(json.dumps(out, indent=2))
    return out
