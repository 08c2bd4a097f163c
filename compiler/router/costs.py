"""Cost calibration for the cost-aware stop rule: time the compiled pieces the generate loop is
made of, on this machine, at the batch size that will run - one M_S step, and the verify pass
(M_L block + M_S memory write) for every bucket - and express them as the tables
`ExpectedGainRule` takes."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from compiler.decode.programs import programs_for
from compiler.decode.rules import ExpectedGainRule
from compiler.decode.state import LoopConfig
from compiler.nn import init_cache


def _median_ms(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def measure(cfg: LoopConfig, params: dict, batch: int, prompt_len: int, repeats: int = 20) -> dict:
    """{"small_ms": one M_S step, "block_ms": {drafts n: verify pass of n + 1 tokens}} for the
    buckets of cfg (every n in 1..G when it has none)."""
    progs = programs_for(cfg)
    s = cfg.cache_len(prompt_len)
    start = jnp.full((batch,), prompt_len, jnp.int32)
    caches = {"large": init_cache(cfg.target, batch, s), "small": init_cache(cfg.draft, batch, s)}

    def small():
        tok = jnp.zeros((batch, 1), jnp.int32)
        logits, caches["small"] = progs.small_step(params, caches["small"], tok, start)
        jax.block_until_ready(logits)

    def block(n):
        def run():
            tok = jnp.zeros((batch, n + 1), jnp.int32)
            count = jnp.full((batch,), n + 1, jnp.int32)
            logits, caches["large"], caches["small"] = progs.large_block(
                params, caches["large"], caches["small"], tok, start, count
            )
            jax.block_until_ready(logits)

        return run

    sizes = cfg.buckets or tuple(range(1, cfg.gamma + 1))
    return {
        "batch": batch,
        "small_ms": _median_ms(small, repeats),
        "block_ms": {n: _median_ms(block(n), repeats) for n in sizes if n > 0},
    }


def block_costs(costs: dict, gamma: int) -> tuple[float, ...]:
    """Cost of the verify pass that holds n drafts, n = 0..gamma: its bucket's time."""
    sizes = sorted(int(n) for n in costs["block_ms"])
    table = {int(n): float(v) for n, v in costs["block_ms"].items()}
    out = []
    for n in range(gamma + 1):
        fit = next(b for b in sizes if b >= max(n, 1))
        out.append(table[fit])
    return tuple(out)


def expected_gain_rule(costs: dict, draft: str, top_k: int, gamma: int,
                       activation: str = "gelu") -> ExpectedGainRule:  # fmt: skip
    return ExpectedGainRule(draft, top_k, round(float(costs["small_ms"]), 4),
                            tuple(round(c, 4) for c in block_costs(costs, gamma)),
                            activation)  # fmt: skip
