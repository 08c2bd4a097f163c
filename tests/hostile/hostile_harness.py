"""Runs one hostile input through `tandemc` in this process and checks what a user sees: exit
code 2, the location (file:line:col, cli:N:col or the argument), a hint, no traceback, in
bounded time and memory. Memory is the growth of this process's resident set, sampled every
5 ms while the command runs; a command that passes twice the limits is interrupted."""

from __future__ import annotations

import _thread
import contextlib
import io
import os
import threading
import time
from dataclasses import dataclass

from runtime.cli import main

LIMIT_S = 5.0
LIMIT_MB = 500.0
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Outcome:
    code: int
    err: str
    out: str
    seconds: float
    grew_mb: float

    @property
    def first_line(self) -> str:
        return (self.err.strip().splitlines() or [""])[0]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def run_cli(argv: list[str]) -> Outcome:
    base = _rss_mb()
    peak = [base]
    done = threading.Event()
    start = time.perf_counter()

    def watch() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_mb())
            if peak[0] - base > 2 * LIMIT_MB or time.perf_counter() - start > 2 * LIMIT_S:
                _thread.interrupt_main()  # the command gets KeyboardInterrupt: exit 130
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:  # argparse's own errors
                code = e.code
    finally:
        done.set()
        watcher.join()
    return Outcome(code, err.getvalue(), out.getvalue(), time.perf_counter() - start,
                   peak[0] - base)  # fmt: skip


def assert_clean(o: Outcome, where: str, code: str | None = None, hint: bool = True) -> None:
    """`where` must be in the first line of the message (a location or the argument)."""
    shown = f"exit {o.code} in {o.seconds:.1f}s, +{o.grew_mb:.0f} MB\n{o.err}{o.out}"
    assert o.code == 2, shown
    assert "Traceback" not in o.err + o.out, shown
    assert where in o.first_line, shown
    if code is not None:
        assert f"[{code}]" in o.first_line, shown
    if hint:
        assert "hint:" in o.err, shown
    assert o.seconds < LIMIT_S and o.grew_mb < LIMIT_MB, shown
