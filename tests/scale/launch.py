"""Starts a command as N JAX processes on this machine, joined the way the README's multi-host
section says: TANDEM_DISTRIBUTED=1, JAX_COORDINATOR_ADDRESS (process 0's host:port, here
127.0.0.1), JAX_NUM_PROCESSES and JAX_PROCESS_ID, with each process's CPU devices set by
XLA_FLAGS. Bounded in time; if one process fails or the time runs out, all are killed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DISTRIBUTED_VARS = ("TANDEM_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                    "JAX_PROCESS_ID")  # fmt: skip


def process_env(devices: int, **extra: str) -> dict[str, str]:
    """One process's environment: CPU only, `devices` virtual devices, the repo importable,
    and only the distributed variables in `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARS}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **extra)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def distributed_env(port: int, n: int, index: int, devices: int) -> dict[str, str]:
    return process_env(
        devices,
        TANDEM_DISTRIBUTED="1",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(n),
        JAX_PROCESS_ID=str(index),
    )


def run_all(commands: list[tuple[list[str], dict[str, str]]], timeout: float) -> list[str]:
    """Runs (argv, env) pairs at once from the repo root; their stdouts, in order. Raises
    AssertionError with every process's stderr tail when one fails or time runs out."""
    with tempfile.TemporaryDirectory() as logs:
        procs, files = [], []
        try:
            for i, (argv, env) in enumerate(commands):
                out = open(Path(logs, f"{i}.out"), "w+")  # files, not pipes: never blocks
                err = open(Path(logs, f"{i}.err"), "w+")
                files.append((out, err))
                procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err))
            deadline = time.monotonic() + timeout
            while any(p.poll() is None for p in procs):
                failed = any(p.returncode not in (None, 0) for p in procs)
                if failed or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        outputs, errors = [], []
        for p, (out, err) in zip(procs, files, strict=True):
            out.seek(0), err.seek(0)
            outputs.append(out.read())
            errors.append(f"--- process {len(errors)} exit {p.returncode}:\n{err.read()[-3000:]}")
            out.close(), err.close()
    if any(p.returncode != 0 for p in procs):
        raise AssertionError(f"timeout {timeout} s or a failure:\n" + "\n".join(errors))
    return outputs


def run_processes(argv: list[str], n: int, devices: int, timeout: float) -> list[str]:
    """`argv` as `n` joined processes of `devices` CPU devices each; their stdouts."""
    port = free_port()
    return run_all([(argv, distributed_env(port, n, i, devices)) for i in range(n)], timeout)


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).parent / script), *args]


def last_json(stdout: str) -> dict:
    """A worker's result: its last stdout line that is a JSON object (Gloo also prints)."""
    return json.loads(next(x for x in reversed(stdout.splitlines()) if x.startswith("{")))
