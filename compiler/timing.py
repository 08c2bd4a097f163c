"""The one timing rule of every benchmark: a call is timed until its result is ready, and a
program's first call (it compiles and warms up) is never timed."""

from __future__ import annotations

import time

import jax


def timed_call(fn, *args):
    """(result, seconds) of one call, blocked until the result is ready."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args))
    return result, time.perf_counter() - start


def timings(fn, *args, repeats: int):
    """(result of the last call, [seconds of each of `repeats` calls]) after one untimed
    warm-up call."""
    result = jax.block_until_ready(fn(*args))
    seconds = []
    for _ in range(repeats):
        result, s = timed_call(fn, *args)
        seconds.append(s)
    return result, seconds
