"""Tiny IR builders for the compiler tests (float32, d <= 64, <= 3 layers)."""

from __future__ import annotations

import dataclasses

import jax

from compiler.ir import (
    DecoderIR,
    ObjectiveIR,
    OptimizerIR,
    ProgramIR,
    ProjectionIR,
    TrainStageIR,
    WiringIR,
)

VOCAB = 61

# XLA:CPU spends most of these tests compiling (~15 ms per fusion at -O3); the LLVM backend
# at level 0 compiles the same HLO programs about 2x faster and runs them fast enough.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit(fun=None, **kw):
    """jax.jit for tests: the same program, compiled with FAST_COMPILE."""
    if fun is None:
        return lambda f: jit(f, **kw)
    return jax.jit(fun, compiler_options=FAST_COMPILE, **kw)


def large_cfg(**kw) -> DecoderIR:
    base = dict(
        name="large", vocab=VOCAB, d_model=48, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=96,
        max_len=64,
    )  # fmt: skip
    base.update(kw)
    return DecoderIR(**base)


def small_cfg(**kw) -> DecoderIR:
    base = dict(
        name="small", vocab=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=64,
        max_len=64,
    )  # fmt: skip
    base.update(kw)
    return DecoderIR(**base)


def tandem_wiring(
    small: DecoderIR, large: DecoderIR, layer_map, fuse=None, predict=None, depth=2, **proj_kw
) -> WiringIR:
    """depth: the wiring's block and block_max (with predict, what training passes cover)."""
    proj = ProjectionIR(
        name="l2s", kind=proj_kw.pop("kind", "linear"), d_in=large.d_model, d_out=small.d_model,
        **proj_kw,
    )  # fmt: skip
    return WiringIR(
        kind="tandem", query=small.name, memory=large.name, layer_map=tuple(layer_map),
        projection=proj, fuse=fuse, predict=predict, block=depth, block_max=depth,
    )  # fmt: skip


# (small overrides, layer_map, projection overrides and the wiring's fuse / predict): the
# variants the cache-rule test covers (its rounds draft 3 tokens: a predicting wiring covers
# depth 3)
TANDEM_VARIANTS = {
    "linear-all-wired": ({}, (2, 3), {}),
    "fused-input-gqa": (dict(n_kv_heads=2), (1, 3), dict(fuse=3)),
    "predicted-memory-gqa": (dict(n_kv_heads=2), (3, 2), dict(predict=1.0, depth=3)),
    "mlp-shared-bias-partial-gqa": (
        dict(n_kv_heads=2),
        (None, 1),
        dict(kind="mlp", per_layer=False, hidden=40, bias=True),
    ),
    "gpt-style-small": (
        dict(norm="layernorm", mlp="gelu", pos="learned", tie_embeddings=True),
        (3, 0),
        dict(bias=True),
    ),
}


def tandem_variant(name: str):
    """(large, small, wiring) for one of TANDEM_VARIANTS."""
    small_kw, layer_map, proj_kw = TANDEM_VARIANTS[name]
    large = large_cfg()
    small = small_cfg(**small_kw)
    return large, small, tandem_wiring(small, large, layer_map, **dict(proj_kw))


def program(models, wirings=(), stages=(), batch=2, max_len=64) -> ProgramIR:
    return ProgramIR(
        name="test", models=tuple(models), wirings=tuple(wirings), train=tuple(stages),
        decode=None, batch=batch, max_len=max_len,
    )  # fmt: skip


def stage(objective: ObjectiveIR, trainable, *, lr=3e-3, steps=30, seq_len=16, batch=4, **opt):
    return TrainStageIR(
        name="stage", objective=objective, trainable=tuple(trainable),
        optimizer=OptimizerIR(lr=lr, warmup=0, schedule="constant", **opt),
        steps=steps, batch=batch, seq_len=seq_len,
    )  # fmt: skip


def replace(obj, **kw):
    return dataclasses.replace(obj, **kw)
