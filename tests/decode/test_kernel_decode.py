"""Decoding on the packed CPU kernel (`decode.backend: kernel`): greedy SPEED equals greedy
autoregressive decoding, which equals the XLA backend's, for Tandem and independent drafters,
with a cut draft vocabulary, for one row and for ragged batches (prefill and verify blocks of
many rows run on the kernel too)."""

from __future__ import annotations

import dataclasses
import os

import jax
import pytest
from decode_fixtures import copy_large_into_small, decode_ir, generator, params_for, program, rows
from decode_fixtures import prompts as make_prompts

from compiler.decode.backend import choose, prepare

# g++ is on every machine of ours: a kernel that does not build fails here, unless turned off
pytestmark = pytest.mark.skipif(
    os.environ.get("TANDEM_KERNEL") == "off", reason="TANDEM_KERNEL=off"
)
KEY = jax.random.key(0)


def _run(prog, params, decode, lens, p_max):
    toks, lens = make_prompts(len(lens), lens, p_max)
    return generator(prog, decode)(params, toks, lens, KEY)


@pytest.mark.parametrize(
    "kind,gamma,batch,draft_vocab",
    [("tandem", 4, ([6], 6), 0), ("independent", 3, ([3, 7, 1, 5], 8), 0),
     ("tandem", 3, ([3, 7], 7), 40), ("predicted", 3, ([4, 2], 6), 40),
     ("copy", 5, ([5], 5), 0)],
)  # fmt: skip
def test_greedy_speed_on_the_kernel_equals_autoregressive(kind, gamma, batch, draft_vocab):
    prog = program(kind)
    params = params_for(prog)
    if kind == "copy":  # an oracle drafter: every draft accepted, full verify blocks
        params = copy_large_into_small(params)
    speed = dataclasses.replace(decode_ir("speed", gamma=gamma), draft_vocab=draft_vocab)
    ar = decode_ir("autoregressive")
    packed = prepare(params, prog, speed, choose("kernel"))
    ar_xla = _run(prog, params, ar, *batch)
    ar_kernel = _run(prog, packed, ar, *batch)
    sp_kernel = _run(prog, packed, speed, *batch)
    assert rows(sp_kernel) == rows(ar_kernel) == rows(ar_xla)
    if kind == "copy":
        assert float(sp_kernel.stats.round_tokens.sum()) > 2 * float(sp_kernel.stats.rounds.sum())


def test_prepare_packs_each_model_once_and_leaves_xla_params_alone():
    prog = program("tandem")
    params = params_for(prog)
    speed = decode_ir("speed")
    assert prepare(params, prog, speed, choose("xla")) is params
    cache = {}
    a = prepare(params, prog, speed, choose("kernel"), cache)
    b = prepare(params, prog, speed, choose("kernel"), cache)
    assert a["large"] is b["large"] and a["small"] is b["small"] and len(cache) == 2
    assert a["l2s"] is params["l2s"]  # projections stay as trained
