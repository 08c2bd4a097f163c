"""Before a run allocates anything: a lower bound of the memory it needs, against what the
machine has. A spec whose parameters, optimizer state or logits cannot fit is refused with
the value that makes it too big, instead of an out-of-memory abort deep inside XLA.

The bound counts only what must exist at once (every parameter; for a train stage, the
trainable parameters' gradients and optimizer moments and one batch of logits in float32),
so a spec it refuses cannot run; one it accepts may still run short of memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from compiler.ir import ProgramIR
from compiler.plan import param_counts

from .errors import UserError

MOMENTS = {"adamw": 2, "adam": 2, "sgd": 0}


def needs(prog: ProgramIR, train: bool, generated=None) -> list[tuple[int, str, tuple]]:
    """[(bytes, what, spec field)] of the largest single need: the parameters, and with
    `train` each stage's own need on top of them; with `generated` (the spec's
    data.generated) its generation batch's KV cache and prompt logits."""
    dtype_bytes = {m.name: m.dtype_bytes for m in prog.models}
    counts = param_counts(prog)
    params = [
        (n * dtype_bytes.get(name, 4), name, _field(prog, name)) for name, n in counts.items()
    ]
    total = sum(b for b, _, _ in params)
    biggest = max(params, default=(0, "none", ("models",)))
    out = [(total, f"the parameters ({biggest[1]}: {_gb(biggest[0])})", biggest[2])]
    if generated is not None and train:
        m = prog.model(generated.model)
        tokens = generated.prompt_tokens + generated.new_tokens
        cache = generated.batch * tokens * m.kv_cache_bytes_per_token
        logits = generated.batch * generated.prompt_tokens * m.vocab * 4
        what = f"data.generated: KV cache {_gb(cache)}, prompt logits {_gb(logits)}"
        out.append((total + cache + logits, what, ("data", "generated", "batch")))
    if not train:
        return out
    for i, stage in enumerate(prog.train):
        trained = sum(counts[n] for n in stage.trainable if n in counts)
        state = trained * 4 * (1 + MOMENTS.get(stage.optimizer.kind, 2))
        scored = [n for n in (stage.objective.model, stage.objective.teacher) if n]
        vocab = sum(prog.model(n).vocab for n in scored)  # the student's (and teacher's) logits
        logits = stage.batch * stage.seq_len * vocab * 4
        what = f"stage '{stage.name}': optimizer state {_gb(state)}, logits {_gb(logits)}"
        field = ("train", i, "batch") if logits > state else ("train", i, "trainable")
        out.append((total + state + logits, what, field))
    return out


def available_bytes() -> int | None:
    """Free memory where the run's arrays live: the accelerators' limits, or on CPU the
    host's available memory (within a cgroup limit when there is one)."""
    devices = jax.local_devices()
    if devices[0].platform != "cpu":
        limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
        return sum(limits) if all(limits) else None
    values = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                values.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            values.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not values and hasattr(os, "sysconf"):
        values.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(values) if values else None


def check_fits(prog: ProgramIR, train: bool, generated=None) -> None:
    free = available_bytes()
    if free is None:
        return
    nbytes, what, field = max(needs(prog, train, generated))
    if nbytes > free:
        raise UserError(
            f"this run needs at least {_gb(nbytes)} of memory ({what}); "
            f"{_gb(free)} is available here",
            field=field,
            hint="make the model smaller, or lower the stage's batch or seq_len",
        )


def _field(prog: ProgramIR, name: str) -> tuple:
    return ("models", name) if any(m.name == name for m in prog.models) else ("projections", name)


def _gb(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.0f} MiB"
