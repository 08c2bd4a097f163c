"""The teacher cache's compiled side: what a stage's frozen model writes for each training
batch, and the batch a cached train step reads.

A stored batch is a flat dict (the store keeps one file per entry):
  tokens         int32 [B, T + 1]   the training tokens (with their no-loss flags under
                                    `stage.loss_mask`: the cached step masks its loss too)
  top_values     float32 [B, T, k]  the model's k largest logits per position, descending
  top_indices    int32 [B, T, k]    their token ids
  hidden_<layer> bfloat16 [B, T, D] the residual stream entering each wired layer (every
                 layer any Tandem wiring reads from this model, so the stages that share the
                 store all find theirs)

The stage trains on these instead of running the model: the hiddens feed the Tandem
projections, the top-k logits the distillation target (`losses.TopK`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from compiler import loss_mask
from compiler.ir import ProgramIR, TrainStageIR
from compiler.nn import decoder_forward
from compiler.train.losses import top_k
from compiler.train.objective import hidden_key, plan_stage

HIDDEN_DTYPE = jnp.bfloat16  # 16 bits, with float32's range: no overflow to guard against


def cached_model(prog: ProgramIR, stage: TrainStageIR) -> str:
    plan = plan_stage(prog, stage)
    if plan.cached is None:
        raise ValueError(f"stage {stage.name!r} has no teacher cache")
    return plan.cached.name


def stored_layers(prog: ProgramIR, model: str) -> tuple[int, ...]:
    """Every layer input of `model` that some Tandem wiring reads (attends to or fuses)."""
    layers = set()
    for w in prog.wirings:
        if w.kind == "tandem" and w.memory == model:
            layers |= {src for src in w.layer_map if src is not None}
            layers |= {w.fuse} if w.fuse is not None else set()
    return tuple(sorted(layers))


def stored_k(prog: ProgramIR, stage: TrainStageIR) -> int:
    """Logits kept per token: top_k, or the whole vocabulary when that is smaller."""
    return min(stage.teacher_cache.top_k, prog.model(cached_model(prog, stage)).vocab)


def make_teacher_pass(prog: ProgramIR, stage: TrainStageIR):
    """fn(model params, tokens [B, T + 1]) -> the stored batch for them (without `tokens`)."""
    cfg = prog.model(cached_model(prog, stage))
    layers = stored_layers(prog, cfg.name)
    k = stored_k(prog, stage)

    def teacher_pass(params: dict, tokens: jax.Array) -> dict:
        inputs = tokens[:, :-1]
        if stage.loss_mask:  # the model reads clean ids (`compiler.loss_mask`)
            inputs = loss_mask.token_ids(inputs)
        logits, hiddens = decoder_forward(params, cfg, inputs)
        top = top_k(logits, k)
        return {
            "top_values": top.values,
            "top_indices": top.indices,
            **{hidden_key(layer): hiddens[layer].astype(HIDDEN_DTYPE) for layer in layers},
        }

    return teacher_pass


def stored_batch_shapes(prog: ProgramIR, stage: TrainStageIR) -> dict:
    """{name: jax.ShapeDtypeStruct} of one stored batch (tokens included)."""
    b, t = stage.batch, stage.seq_len
    cfg = prog.model(cached_model(prog, stage))
    k = stored_k(prog, stage)
    return {
        "tokens": jax.ShapeDtypeStruct((b, t + 1), jnp.int32),
        "top_values": jax.ShapeDtypeStruct((b, t, k), jnp.float32),
        "top_indices": jax.ShapeDtypeStruct((b, t, k), jnp.int32),
        **{
            hidden_key(layer): jax.ShapeDtypeStruct((b, t, cfg.d_model), HIDDEN_DTYPE)
            for layer in stored_layers(prog, cfg.name)
        },
    }
