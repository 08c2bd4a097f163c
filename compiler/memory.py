"""An estimate of a train step's peak memory per device, for `tandemc compile`: does a spec fit
an accelerator, and what do `train[i].scale`'s remat and grad_accum buy?

peak = train state (parameters and optimizer moments, per the sharding rules) + gradients
of the trainable parameters + the activations one micro-batch keeps for the backward pass.

The activations are counted per token of a micro-batch (batch / grad_accum rows over the
mesh's `batch` axis, heads / MLP width / vocabulary over theirs where they divide):
- every layer of a trained stack keeps, without remat, its residual and normed inputs, q/k/v,
  four float32 arrays of attention scores (raw, scaled, masked, probabilities; over T slots,
  2T in a Tandem layer), the attention output and the MLP's gate, up and product; with remat
  "dots" only the matmul outputs, and the layer being recomputed holds its working set on
  top; with remat "full" only its input, and the recomputed layer's working set and part of
  its gradients on top;
- the logits of the trained model in float32, three times (logits, log-softmax, gradient), and
  a distillation reference's twice; the hiddens a Tandem model reads from its large model.

A rough model (XLA's own buffer assignment is the truth where the program compiles here:
`tandemc compile` prints its temp bytes next to this). Checked against XLA:CPU's figures in
tests/compiler/test_memory_estimate.py. XLA:CPU schedules the recomputation of unrolled
layers early, so there remat saves memory only with scan_layers; GPU and TPU schedulers
keep it late.
"""

from __future__ import annotations

import dataclasses
import math

from .ir import DecoderIR, ProgramIR, TrainStageIR
from .sharding import Sharder
from .train.objective import plan_stage

F32 = 4
REMAT_CHOICES = ("none", "dots", "full")


def with_remat(stage: TrainStageIR, remat: str) -> TrainStageIR:
    return dataclasses.replace(stage, scale=dataclasses.replace(stage.scale, remat=remat))


def _split(sh: Sharder, logical: str, dim: int) -> float:
    """dim over the mesh axis a rule maps `logical` to, when it divides (else replicated)."""
    for name, axis in sh.rules:
        if name == logical:
            size = sh.sizes.get(axis, 1) if axis else 1
            return dim / size if dim % size == 0 else dim
    return dim


def _layer_bytes(m: DecoderIR, sh: Sharder, slots: int, remat: str) -> tuple[float, float]:
    """(kept for the backward pass, working set of one layer) per token, in bytes."""
    a = m.dtype_bytes
    heads, kv = _split(sh, "heads", m.n_heads), _split(sh, "kv_heads", m.n_kv_heads)
    mlp = _split(sh, "mlp", m.d_ff)
    qkv = (heads + 2 * kv) * m.head_dim * a
    scores = 4 * heads * slots * F32  # scores, scaled, masked, probabilities
    whole = 4 * m.d_model * a + qkv + scores + heads * m.head_dim * a + 3 * mlp * a
    if remat == "none":
        return whole, 0.0
    if remat == "dots":  # q/k/v, attention and MLP projections (no batch dims)
        return qkv + 2 * m.d_model * a + 2 * mlp * a, whole
    # the layer being recomputed and part of its gradients (XLA:CPU: between 1x and 2x)
    return m.d_model * a, 1.5 * whole


def activation_bytes(prog: ProgramIR, stage: TrainStageIR, sh: Sharder) -> int:
    """What one micro-batch of `stage` keeps live for its backward pass, per device."""
    plan = plan_stage(prog, stage)
    rows = _split(sh, "batch", stage.batch // stage.scale.grad_accum)
    tokens = math.ceil(rows) * stage.seq_len
    model, remat = plan.model, stage.scale.remat
    wired = set() if plan.wiring is None else set(plan.wiring.wired_layers)
    kept, working = 0.0, 0.0
    for layer in range(model.n_layers):
        slots = 2 * stage.seq_len if layer in wired else stage.seq_len
        keep, work = _layer_bytes(model, sh, slots, remat)
        kept, working = kept + keep, max(working, work)
    vocab = _split(sh, "vocab", model.vocab)
    per_token = kept + working + 3 * vocab * F32
    if plan.reference is not None:
        per_token += 2 * _split(sh, "vocab", plan.reference.vocab) * F32
    if plan.memory is not None:  # the large model's hiddens the wired layers read
        per_token += len(wired) * plan.memory.d_model * plan.memory.dtype_bytes
    return int(tokens * per_token)
