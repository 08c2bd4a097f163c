"""What a train stage's result depends on, recorded with it, so that a stage is never reused
after something it depends on changed (the run-directory rules, `docs/guide.md`).

A stage's config: the stage itself (objective, trainable, optimizer, batch, sequence length,
seed; not its step count, logging or checkpoint cadence), every model it reads (its shape and
where its weights start), the wiring and projection of those models, the data and tokenizer,
and the step count and config of each earlier stage that trains something it reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from compiler.ir import ProgramIR, TrainStageIR

# Settings that may change when an unfinished stage resumes (to recover from a diverged loss):
# the optimizer's. Everything else must match.
RESUMABLE_CHANGES = ("stage.optimizer.",)
# Not part of the result: the length and cadence, and how a step runs (`scale`: remat, micro-
# batches, ... may change to fit memory, and a finished stage serves whatever they are).
# `loss_mask` follows from the data (recorded below): whether its tokens can carry no-loss flags.
NOT_RESULT = ("steps", "eval_every", "eval_batches", "checkpoint_every", "scale", "loss_mask")


def reads(prog: ProgramIR, stage: TrainStageIR) -> set[str]:
    """Every model and projection whose parameters the stage's loss reads."""
    names = set(stage.trainable)
    obj = stage.objective
    names |= {n for n in (obj.model, obj.teacher) if n}
    for w in prog.wirings:
        if w.query in names and w.kind == "tandem":
            names.add(w.memory)
            if w.projection is not None:
                names.add(w.projection.name)
    return names


def stage_config(spec, prog: ProgramIR, index: int) -> dict:
    """The config of train stage `index` (plain JSON values)."""
    stage = prog.train[index]
    read = reads(prog, stage)
    stage_part = {
        k: v for k, v in dataclasses.asdict(stage).items() if k not in NOT_RESULT + ("name",)
    }
    models = {}
    for m in prog.models:
        if m.name in read:
            init = dataclasses.asdict(spec.models[m.name].init)
            models[m.name] = {**_weight_shape(dataclasses.asdict(m)), "init": init}
    wirings = [dataclasses.asdict(w) for w in prog.wirings if w.query in read]
    before = {}
    for earlier in prog.train[:index]:
        if set(earlier.trainable) & read:
            before[earlier.name] = {
                "steps": earlier.steps,
                "config": fingerprint(stage_config(spec, prog, prog.train.index(earlier))),
            }
    config = {
        "stage": stage_part,
        "models": models,
        "wiring": wirings,
        "data": dataclasses.asdict(spec.data),
        "tokenizer": dataclasses.asdict(spec.tokenizer),
        "after": before,
    }
    return json.loads(json.dumps(config, default=str))  # tuples -> lists, as read back


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _weight_shape(model: dict) -> dict:
    """A model's IR fields that its weights depend on: all but the decode cache length
    (max_len), which shapes only a learned position table."""
    return {k: v for k, v in model.items() if k != "max_len" or model.get("pos") == "learned"}


def upgrade(recorded: dict) -> dict:
    """A config recorded by an older tandem-dsl, in today's form: it listed max_len for
    every model, and it had no settings that default to what it did: new model fields
    (`_new_model_fields`), copied layers, a projection's init, a teacher cache, the JSONL
    text field, an objective's draft vocabulary, a wiring's feature input and memory prediction."""
    models = {
        name: {**_new_model_fields(m), **_weight_shape(m)}
        for name, m in recorded.get("models", {}).items()
    }
    for m in models.values():
        if "init" in m:
            m["init"] = {"copy_layers": [], **m["init"]}
    wirings = [
        {"fuse": None, "predict": None, **_with_projection_init(w)}
        for w in recorded.get("wiring", [])
    ]
    stage = {"teacher_cache": None, **recorded.get("stage", {})}
    if "objective" in stage:
        stage["objective"] = {"draft_vocab": 0, **stage["objective"]}
    out = {**recorded, "stage": stage, "models": models, "wiring": wirings}
    if "data" in recorded:
        out["data"] = {"text_field": "text", **recorded["data"]}
    return out


def _new_model_fields(model: dict) -> dict:
    """Model fields added later, at what older models had: a frozen-table option, and the head
    width, q/k/v biases and RoPE scaling of the Llama 3 / Qwen2 families."""
    out = {"embed_trainable": True, "rope_scaling": None, "qkv_bias": False}
    if "d_model" in model and "n_heads" in model:
        out["head_dim"] = model["d_model"] // model["n_heads"]
    return out


def _with_projection_init(wiring: dict) -> dict:
    proj = wiring.get("projection")
    if proj is None:
        return wiring
    return {**wiring, "projection": {"init": "random", **proj}}


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'path: old -> new' for every leaf that differs."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def only_resumable(changes: list[str]) -> bool:
    return all(c.startswith(RESUMABLE_CHANGES) for c in changes)
