"""Stage configs recorded by an older tandem-dsl (before a setting existed) read as today's
default for it, so adding a setting never invalidates the stages already trained."""

from __future__ import annotations

import copy
from pathlib import Path

from compiler.build import build_ir
from runtime.stage_config import differences, stage_config, upgrade
from tandem_dsl import api

SPEC = Path(__file__).resolve().parents[2] / "specs/quickstart.yaml"


def _older(config: dict) -> dict:
    """The config as recorded before the newer settings existed."""
    old = copy.deepcopy(config)
    old["stage"].pop("teacher_cache")
    old["stage"]["objective"].pop("draft_vocab")
    for m in old["models"].values():
        for key in ("embed_trainable", "head_dim", "qkv_bias", "rope_scaling"):
            m.pop(key)
        m["init"].pop("copy_layers")
    for w in old["wiring"]:
        w.pop("fuse")
        w.pop("predict")
        if w.get("projection"):
            w["projection"].pop("init")
    old["data"].pop("text_field")
    return old


def test_an_older_record_reads_as_todays_defaults():
    spec = api.load(SPEC)
    prog = build_ir(spec)
    for i in range(len(prog.train)):
        config = stage_config(spec, prog, i)
        assert differences(upgrade(_older(config)), config) == []


def test_a_changed_setting_still_differs_after_the_upgrade():
    spec = api.load(SPEC, ["+train.1.teacher_cache={top_k: 8}"])
    prog = build_ir(spec)
    config = stage_config(spec, prog, 1)
    plain = stage_config(api.load(SPEC), build_ir(api.load(SPEC)), 1)
    changes = differences(upgrade(_older(plain)), config)
    assert changes == ['stage.teacher_cache: null -> {"batches": 120, "top_k": 8, "noise": 0.0}']
