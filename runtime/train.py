"""The training loop: one spec stage, resumable, with eval, metrics, plots and checkpoints.

Layout of a stage directory (`<run dir>/<stage name>/`):
  step_<N>/        checkpoints (the last two are kept), written atomically
  metrics.jsonl    one JSON object per logged train step and per evaluation
  curves.png       loss and accuracy against steps
  final.json       written last: the stage is complete and is skipped next time
  diverged/        checkpoints set aside after the loss became NaN or infinite

Every checkpoint and final.json record the stage's config (`runtime.stage_config`). A finished
stage is reused only when the config is unchanged; with more steps it continues from its last
checkpoint; any other change is refused with the fields that differ. An unfinished stage
resumes only with the same config, except for optimizer settings (to recover from a diverged
loss with a lower learning rate).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp

from compiler.ir import ProgramIR, TrainStageIR
from compiler.sharded_programs import stored_batch_shardings, train_step_program
from compiler.sharding import Sharder
from compiler.train import all_params, init_train_state

from . import checkpoint
from .errors import UserError
from .stage_config import differences, only_resumable, upgrade


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class StageResult:
    name: str
    params: dict  # every model and projection after the stage
    steps: int
    metrics: dict = field(default_factory=dict)  # the last evaluation
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    skipped: bool = False


def _floats(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()}


def evaluate(eval_step, state, batches) -> dict:
    totals: dict[str, float] = {}
    for batch in batches:
        for k, v in _floats(eval_step(state, batch)).items():
            totals[k] = totals.get(k, 0.0) + v
    return {k: v / max(len(batches), 1) for k, v in totals.items()}


def plot_curves(metrics_path: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val loss")
    ax_acc.plot([r["step"] for r in val], [r["accuracy"] for r in val], "o-", label="val accuracy")
    if val and "agreement" in val[0]:
        ax_acc.plot(
            [r["step"] for r in val], [r["agreement"] for r in val], "s-", label="agreement"
        )
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


@contextmanager
def _closing(batches):
    try:
        yield
    finally:
        if hasattr(batches, "close"):
            batches.close()


def train_stage(
    prog: ProgramIR,
    stage: TrainStageIR,
    params: dict,
    stage_dir: Path,
    train_batches: Callable[[dict | None], object],
    val_batches: Callable[[], list],
    progress=None,
    log_every: int = 10,
    stop_after_steps: int | None = None,
    meta: dict | None = None,
    config: dict | None = None,
    log=print,
) -> StageResult:
    """Trains `stage` from `params` (or its last checkpoint) and returns every parameter.

    train_batches(position) -> an iterator of [B, T+1] batches (with a teacher cache, stored
    batches: `compiler.train.teacher`) starting at a saved data position (None: the
    beginning) with a `.state()` method; val_batches() -> a fixed list.
    `stop_after_steps` ends early without marking the stage complete (for tests of resume).
    `meta` (e.g. the resolved spec) is recorded in every checkpoint, and `config` (what the
    result depends on, `runtime.stage_config`) decides what may be reused.
    The state lives on the spec's mesh (`compiler.sharding`): batches split over `data`,
    parameters and optimizer state over `model` per the rules; one device is a 1x1 mesh.
    """
    final = stage_dir / "final.json"
    template = init_train_state(prog, stage, params)
    shape_hash = checkpoint.shape_hash(template)
    info = checkpoint.finished(stage_dir)
    if info is not None:
        _same_config(stage, stage_dir, info.get("config"), config, log, finished=True)
        if info["steps"] > stage.steps:
            raise UserError(
                f"stage '{stage.name}' in {stage_dir} has {info['steps']} steps, the spec asks "
                f"for {stage.steps}: delete {stage_dir} to retrain it with fewer, or set steps "
                f"back to {info['steps']}"
            )
        if info["steps"] == stage.steps:
            state, _ = checkpoint.restore(stage_dir / info["checkpoint"], template)
            return StageResult(
                stage.name, all_params(state), info["steps"], info["metrics"], skipped=True
            )
        log(f"{stage.name}: continuing from step {info['steps']} to {stage.steps}")
        final.unlink(missing_ok=True)  # with several processes, the first one does

    sh = Sharder.for_run(prog)
    state, position, step = None, None, 0
    last = checkpoint.latest(stage_dir)
    if last is not None:
        recorded = checkpoint.read_meta(last).get("config")
        _same_config(stage, stage_dir, recorded, config, log, finished=False)
        # straight onto the mesh: each process reads only its shards
        state, meta = checkpoint.restore(last, template, sh.train_state(prog, stage, template))
        position, step = meta["data"], meta["step"]
        _drop_metrics_after(stage_dir / "metrics.jsonl", step)
    train_step, eval_step, state_sh, batch_sh = train_step_program(prog, stage, sh, template)
    train_sh = stored_batch_shardings(prog, stage, sh) if stage.teacher_cache else batch_sh
    # Fresh global arrays: the train step donates its state, the caller's params stay valid.
    state = sh.put(template, state_sh) if state is None else state
    rng = jax.random.PRNGKey(stage.seed)
    val = [sh.put(b, batch_sh) for b in val_batches()]
    batches = train_batches(position)
    metrics_file = stage_dir / "metrics.jsonl"
    stage_dir.mkdir(parents=True, exist_ok=True)

    def save(at: int) -> Path:
        info = {**(meta or {}), "data": batches.state(), "shape_hash": shape_hash}
        info.update(stage=stage.name, config=config)
        return checkpoint.save(stage_dir, at, state, info)

    last_metrics: dict = {}
    # Throughput is measured from the end of the first step on (it includes the compile).
    start, start_step, tokens = time.perf_counter(), step, 0
    timed_from, timed_tokens = None, 0
    end = stage.steps if stop_after_steps is None else min(stage.steps, stop_after_steps)
    pending: list[tuple[int, dict]] = []  # metrics still on the device, pulled at a sync
    shared = checkpoint.is_primary()  # process 0 writes the stage directory's files
    with open(metrics_file if shared else os.devnull, "a") as log, _closing(batches):
        while step < end:
            # a batch holds every row or only this process's (`Sharder.local_batch_rows`)
            batch = sh.put_batch(next(batches), train_sh, stage.batch)
            # fold_in(step): the same noise at a step whether or not the run was resumed.
            state, m = train_step(state, batch, jax.random.fold_in(rng, step))
            step += 1
            if stage.teacher_cache:  # a stored batch: the tokens and the teacher's outputs
                batch = batch["tokens"]
            tokens += batch.shape[0] * (batch.shape[1] - 1)
            pending.append((step, m))
            evaluate_now = val and (step % stage.eval_every == 0 or step == stage.steps)
            save_now = step % stage.checkpoint_every == 0 or step == end
            if not (step % log_every == 0 or step in (1, end) or evaluate_now or save_now):
                continue  # no device-to-host copy: the next steps queue behind this one
            for at, row in jax.device_get(pending):  # one sync for the steps since the last
                loss = float(row["loss"])
                if not math.isfinite(loss):
                    probe = val[0] if val else batch  # data.val_fraction 0: no held-out data

                    def good(path: Path, start_loss: float, probe=probe) -> bool:
                        restored, _ = checkpoint.restore(path, template, state_sh)
                        value = float(eval_step(restored, probe)["loss"])
                        sane = math.isfinite(value) and value <= start_loss
                        return sane and _sane_weights(restored["params"], template["params"])

                    raise _diverged(prog, stage, stage_dir, loss, at, good)
                if at % log_every == 0 or at in (1, end):  # step 1: the starting loss
                    log.write(json.dumps({"kind": "train", "step": at, **_floats(row)}) + "\n")
            log.flush()
            pending.clear()
            if timed_from is None:
                timed_from, timed_tokens = time.perf_counter(), tokens
            if progress is not None:
                elapsed = time.perf_counter() - timed_from
                progress(step, stage.steps, loss, (tokens - timed_tokens) / max(elapsed, 1e-9))
            if evaluate_now:
                last_metrics = evaluate(eval_step, state, val)
                log.write(json.dumps({"kind": "eval", "step": step, **last_metrics}) + "\n")
                log.flush()
            if save_now:
                save(step)
    seconds = time.perf_counter() - start
    timed = time.perf_counter() - timed_from if timed_from is not None else 0.0
    result = StageResult(
        stage.name,
        all_params(state),
        step,
        last_metrics,
        seconds,
        (tokens - timed_tokens) / timed if timed > 0 and step > start_step + 1 else 0.0,
    )
    if step == stage.steps:
        if shared:
            plot_curves(metrics_file, stage_dir / "curves.png", f"{prog.name}: {stage.name}")
        info = {
            "steps": step,
            "metrics": last_metrics,
            "checkpoint": checkpoint.latest(stage_dir).name,
            "shape_hash": shape_hash,
            "config": config,
        }
        checkpoint.write_json_atomic(final, info)
    return result


def _same_config(stage, stage_dir: Path, recorded, config, log, finished: bool) -> None:
    """Refuses to reuse or resume a stage trained with another config (see the module doc)."""
    if config is None:
        return
    if recorded is None:
        log(
            f"warning: {stage_dir} records no config (written by an older tandem-dsl): reused "
            "as it is; delete it to retrain under the current rules"
        )
        return
    changes = differences(upgrade(recorded), config)
    if not changes:
        return
    listed = "\n  ".join(changes[:12]) + ("\n  ..." if len(changes) > 12 else "")
    if not finished and only_resumable(changes):
        log(f"{stage.name}: resuming with changed optimizer settings:\n  {listed}")
        return
    what = "was trained" if finished else "was started"
    raise UserError(
        f"stage '{stage.name}' in {stage_dir} {what} with other settings:\n  {listed}\n"
        "Its result is not reused.",
        hint=f"to train it again with these settings, delete {stage_dir} (and the stages after "
        "it that read what it trains), or use another --run-dir",
    )


def _drop_metrics_after(path: Path, step: int) -> None:
    """Resuming at `step`: the rows logged after the checkpoint are logged again."""
    if not path.exists() or not checkpoint.is_primary():
        return
    rows = [line for line in path.read_text().splitlines() if line]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    if len(kept) < len(rows):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


def _start_loss(stage_dir: Path) -> float:
    """The first logged training loss of the stage (inf when there is none)."""
    path = stage_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        if row.get("kind") == "train" and math.isfinite(row.get("loss", math.inf)):
            return row["loss"]
    return math.inf


def _sane_weights(params, start) -> bool:
    """Finite, and no array's RMS grown past 10x its value at the stage's start (or past 1
    when it started near 0): weights that blew up can still give a finite loss."""
    for now, then in zip(jax.tree.leaves(params), jax.tree.leaves(start), strict=True):
        rms_now = float(jnp.sqrt(jnp.mean(jnp.square(now.astype(jnp.float32)))))
        rms_then = float(jnp.sqrt(jnp.mean(jnp.square(then.astype(jnp.float32)))))
        if not math.isfinite(rms_now) or rms_now > max(10 * rms_then, 1.0):
            return False
    return True


def _diverged(prog, stage, stage_dir: Path, loss: float, step: int, is_good):
    """Sets aside the checkpoints whose weights are already bad (see `_sane_weights`, and a
    validation loss not finite or above the stage's starting loss), so that running the same
    command again resumes from the last good one, with a lower learning rate."""
    start = _start_loss(stage_dir)
    found = sorted(stage_dir.glob("step_*"), reverse=True)
    good = next((c for c in found if is_good(c, start)), None)
    aside = stage_dir / "diverged"
    for c in found if checkpoint.is_primary() else ():
        if good is None or c.name > good.name:
            aside.mkdir(exist_ok=True)
            if (aside / c.name).exists():
                shutil.rmtree(aside / c.name)
            c.replace(aside / c.name)
    where = f"it resumes from {good.name}" if good else "the stage starts over"
    index = prog.train.index(stage)
    return TrainingDiverged(
        f"stage '{stage.name}': loss is {loss} at step {step}. Checkpoints written after the "
        f"loss went bad are set aside in {aside}.",
        field=("train", index, "optimizer", "lr"),
        hint=f"lower the learning rate (e.g. train.{index}.optimizer.lr="
        f"{stage.optimizer.lr / 10:g}) or raise warmup and run the same command again: {where}",
    )
