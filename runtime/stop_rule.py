"""The spec's adaptive stop rule for decoding, and the trained router it may read.

`runtime.router` trains the router (`tandemc run SPEC train-router`) into `<run dir>/router/`;
decoding (`runtime.run.generate`) only reads it from there, through `spec_stop_rule`.
"""

from __future__ import annotations

import dataclasses
import json

import jax

from compiler.decode.rules import RULES
from compiler.ir import AdaptiveIR, DecodeIR
from compiler.router import ROUTER, init_router, n_features
from compiler.router.collect import collect_config
from compiler.router.costs import measure
from tandem_dsl.model import STOP_RULES

from . import checkpoint
from .errors import UserError

STAGE = "router"


def _adaptive(r) -> tuple[DecodeIR, AdaptiveIR]:
    d = r.prog.decode
    if d is None or (d.draft is None and d.policy != "adaptive"):
        raise UserError("the router needs a decode section with a draft model (decode.draft)")
    if d.draft is None:
        raise UserError("the router needs a draft model (decode.draft), not prompt lookup")
    return d, d.adaptive or AdaptiveIR()


def _template(n_in: int, hidden: int) -> dict:
    return init_router(jax.random.key(0), n_in, hidden)


def load_router(r) -> dict | None:
    d, a = _adaptive(r)
    info = checkpoint.finished(r.run_dir / STAGE)
    if info is None:
        return None
    n_in = n_features(a.top_k, r.prog.model(d.draft).d_model)
    tree, meta = checkpoint.restore(r.run_dir / STAGE / info["checkpoint"],
                                    {ROUTER: _template(n_in, a.hidden)})  # fmt: skip
    if meta.get("activation", a.activation) != a.activation:
        raise UserError(
            f"the router in {r.run_dir / STAGE} was trained with activation "
            f"{meta['activation']}, the spec says {a.activation}: set decode.adaptive.activation "
            f"back, or delete the directory and run `tandemc run SPEC train-router` again"
        )
    return tree[ROUTER]


def measure_costs(r, params: dict, batch: int, prompt_len: int, max_gamma: int) -> dict:
    """Times one M_S step and the verify pass of every bucket, compiled, on this machine at
    this batch size (`compiler.router.costs`); also written to the router stage directory."""
    from compiler.decode.programs import default_buckets

    d, _ = _adaptive(r)
    adaptive = AdaptiveIR(rule="fixed", max_gamma=max_gamma)
    cfg = collect_config(r.prog, dataclasses.replace(d, policy="adaptive", adaptive=adaptive), 8)
    cfg = dataclasses.replace(cfg, buckets=default_buckets(max_gamma), return_logits=False)
    costs = measure(cfg, params, batch, prompt_len)
    (r.run_dir / STAGE).mkdir(parents=True, exist_ok=True)
    (r.run_dir / STAGE / f"costs_b{batch}.json").write_text(json.dumps(costs, indent=2))
    return costs


def spec_stop_rule(r, decode: DecodeIR, params: dict, batch: int, prompt_len: int):
    """(stop rule, router weights) for the spec's rules that read the router (threshold,
    expected_gain); (None, None) for rules that need no router."""
    a = decode.adaptive
    needs = STOP_RULES[a.rule] if decode.policy == "adaptive" else ()
    if "router" not in needs:
        return None, None
    router = load_router(r)
    if router is None:
        raise UserError(
            f"decode.adaptive.rule {a.rule} needs a trained router: run `tandemc run SPEC "
            "train-router` first (or use rule confidence, heuristic or fixed)"
        )
    costs = None
    if "costs" in needs:
        costs = measure_costs(r, {**params, ROUTER: router}, batch, prompt_len, a.max_gamma)
    return RULES[a.rule](decode, costs), router
