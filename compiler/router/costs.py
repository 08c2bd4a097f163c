"""Cost calibration for the cost-aware stop rule: time the compiled pieces the generate loop is
made of, on this machine, at the batch size that will run - one M_S step, and the verify pass
(M_L block + M_S memory write) for every bucket - and express them as the tables
`ExpectedGainRule` takes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from compiler.decode.drafting import draft_head, small_step
from compiler.decode.loops import large_block
from compiler.decode.state import LoopConfig
from compiler.nn import init_cache, init_small_cache
from compiler.timing import timings


def loop_ms(step, params, carry, n: int, repeats: int) -> float:
    """ms per iteration of `step(params, carry)` run n times inside one jitted fori_loop (no
    per-call dispatch, as inside the generate loop); best of repeats (contended machines).
    params go in as an argument, as in the generate loop: closed over, XLA would fold them
    into constants (precomputing e.g. the transposed output layer) and time another program."""
    fn = jax.jit(lambda p, c: jax.lax.fori_loop(0, n, lambda i, c: step(p, c), c))
    _, seconds = timings(fn, params, carry, repeats=repeats)
    return 1e3 * min(seconds) / n


def measure(cfg: LoopConfig, params: dict, batch: int, prompt_len: int, n: int = 20,
            repeats: int = 5) -> dict:  # fmt: skip
    """{"small_ms": one M_S step, "block_ms": {drafts k: verify pass of k + 1 tokens}} for the
    buckets of cfg (every k in 1..G when it has none; k = 0 is the 1-token pass, an
    autoregressive step), each timed inside a compiled loop."""
    params = draft_head(cfg, params)  # cut once, as `generate` does, not inside the loop
    s = cfg.cache_len(prompt_len)
    start = jnp.full((batch,), prompt_len, jnp.int32)
    large = init_cache(cfg.target, batch, s)
    small = init_small_cache(cfg.draft, cfg.wiring, batch, s)
    acc = jnp.zeros((), jnp.float32)

    def small_step_(params, c):
        cache, acc = c
        tok = jnp.zeros((batch, 1), jnp.int32) + (acc > 1e30).astype(jnp.int32)
        logits, cache = small_step(cfg, params, cache, tok, start)
        return cache, acc + logits[:, 0, 0].sum()  # keep the output live

    def block(k):
        def run(params, c):
            lc, sc, acc = c
            tok = jnp.zeros((batch, k + 1), jnp.int32) + (acc > 1e30).astype(jnp.int32)
            count = jnp.full((batch,), k + 1, jnp.int32)
            logits, lc, sc = large_block(cfg, params, lc, sc, tok, start, count)
            return lc, sc, acc + logits[:, :, 0].sum()

        return run

    sizes = cfg.buckets or tuple(range(1, cfg.gamma + 1))
    return {
        "batch": batch,
        "small_ms": loop_ms(small_step_, params, (small, acc), n, repeats),
        "block_ms": {
            k: loop_ms(block(k), params, (large, small, acc), n, repeats) for k in sizes
        },  # fmt: skip
    }
