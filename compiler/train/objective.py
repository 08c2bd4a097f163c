"""What a training stage computes: which models take part, and the loss.

Objectives (ObjectiveIR.kind):
- ce on a model without a Tandem wiring: language modelling (e.g. the large model from
  scratch, or a small model alone).
- ce on a Tandem small model: Tandem-CE. The large (memory) model runs once causally over
  the sequence (stop_gradient on its hiddens when frozen), then `tandem_forward` with the
  training frontier from the wiring's block settings.
- distil: (1 - w) * CE + w * CE(softmax(z_teacher / τ), p_model). The teacher defaults to
  the Tandem memory model; an independent drafter (wiring kind none) names its teacher.
  When the teacher is the memory model its logits come from the same large pass.

With a teacher cache (TrainStageIR.teacher_cache) the train step's batch is a dict: the
tokens and what the frozen model wrote for them (`compiler.train.teacher`), read instead of
running it; evaluation still runs it.

With TrainStageIR.loss_mask (set by the runtime when the stage's data can carry them: chat
JSONL) the tokens may carry a no-loss flag (`compiler.loss_mask`; chat data trains on the
assistant's replies only): every model reads the clean ids, and the loss and its metrics (CE,
distillation, accuracy, agreement) are means over the counted target positions. Without it
the program is exactly the unmasked one (plain text trains bit for bit as it always did).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from compiler import loss_mask
from compiler.errors import IRInvariantError
from compiler.ir import DecoderIR, ObjectiveIR, ProgramIR, TrainStageIR, WiringIR
from compiler.nn import (
    cut_head,
    decoder_forward,
    tandem_forward_and_prediction,
    training_frontier,
)
from compiler.train.losses import (
    TopK,
    accuracy,
    agreement,
    cross_entropy,
    distil_loss,
    within_vocab,
)
from tandem_dsl import rules


@dataclass(frozen=True)
class Objective:
    """One objective kind: whether its loss reads a teacher's logits, and the loss
    (objective, logits, targets (clean ids), teacher logits or None, weights [B, T] (1: the
    position counts, 0: it does not; None: every position counts; pass them on to the
    `losses` functions)) -> (loss, named parts)."""

    uses_teacher: bool
    loss: Callable[[ObjectiveIR, jax.Array, jax.Array, jax.Array | None, jax.Array | None], tuple]


def _ce(obj, logits, targets, reference, weights):
    loss = cross_entropy(logits, targets, weights)
    return loss, {"ce": loss}


def _distil(obj, logits, targets, reference, weights):
    return distil_loss(logits, targets, reference, obj.weight, obj.temperature, weights)


# The spec names the kinds (tandem_dsl.model.OBJECTIVE_KINDS); each has one entry here.
OBJECTIVES: dict[str, Objective] = {"ce": Objective(False, _ce), "distil": Objective(True, _distil)}


@dataclass(frozen=True)
class StagePlan:
    """The resolved roles of one stage."""

    stage: TrainStageIR
    model: DecoderIR  # whose outputs the loss is on
    wiring: WiringIR | None  # its Tandem wiring (kind tandem), else None
    memory: DecoderIR | None  # the large model it reads
    teacher: DecoderIR | None  # distillation teacher
    trainable: tuple[str, ...]

    @property
    def learnable(self) -> set[str]:
        """Params the loss can send gradients to (`tandem_dsl.rules.learnable`)."""
        w = self.wiring
        reads = [] if w is None else [(w.query, w.memory, w.projection and w.projection.name)]
        return rules.learnable(self.model.name, reads)

    @property
    def reference(self) -> DecoderIR | None:
        """Whose argmax the eval agreement compares with: the teacher, else the memory."""
        return self.teacher or self.memory

    @property
    def cached(self) -> DecoderIR | None:
        """The frozen model the stage's teacher cache stores (None without a cache)."""
        if self.stage.teacher_cache is None:
            return None
        memory, teacher = self.memory and self.memory.name, self.teacher and self.teacher.name
        name = rules.cached_model(memory, teacher)
        return self.memory if name == memory else self.teacher

    def frozen(self, name: str) -> bool:
        return name not in self.trainable


def fixed_embeddings(prog: ProgramIR) -> set[str]:
    """Models whose token table (and tied head) training leaves as it started."""
    return {m.name for m in prog.models if not m.embed_trainable}


def plan_stage(prog: ProgramIR, stage: TrainStageIR) -> StagePlan:
    obj = stage.objective
    names = {m.name for m in prog.models}
    if obj.model not in names:
        raise IRInvariantError(
            f"stage {stage.name!r}: objective model {obj.model!r} is not a model"
        )
    if obj.kind not in OBJECTIVES:
        raise IRInvariantError(f"stage {stage.name!r}: unknown objective kind {obj.kind!r}")
    model = prog.model(obj.model)
    wiring = prog.wiring_of(obj.model)
    if wiring is not None and wiring.kind == "none":
        wiring = None
    memory = prog.model(wiring.memory) if wiring is not None else None
    teacher = None
    if OBJECTIVES[obj.kind].uses_teacher:
        teacher_name = obj.teacher or (memory.name if memory is not None else None)
        if teacher_name is None:
            raise IRInvariantError(
                f"stage {stage.name!r}: {obj.kind} on {obj.model!r} needs a teacher "
                "(the model is not wired to a large model)"
            )
        if teacher_name not in names:
            raise IRInvariantError(f"stage {stage.name!r}: teacher {teacher_name!r} is not a model")
        teacher = prog.model(teacher_name)
    plan = StagePlan(stage, model, wiring, memory, teacher, tuple(stage.trainable))
    if not stage.trainable:
        raise IRInvariantError(f"stage {stage.name!r}: nothing is trainable")
    unused = [n for n in stage.trainable if n not in plan.learnable]
    if unused:
        raise IRInvariantError(
            f"stage {stage.name!r}: trainable {unused} get no gradient from the objective "
            f"(it can train {sorted(plan.learnable)}; a distillation teacher is only a target)"
        )
    if stage.batch % stage.scale.grad_accum:
        raise IRInvariantError(
            f"stage {stage.name!r}: batch {stage.batch} does not split into "
            f"{stage.scale.grad_accum} micro-batches"
        )
    if stage.teacher_cache is not None:
        problem = rules.teacher_cache(
            memory and memory.name, teacher and teacher.name, stage.trainable
        )
        if problem:
            raise IRInvariantError(f"stage {stage.name!r}: teacher_cache: {problem}")
    return plan


def forward(
    plan: StagePlan, params: dict, inputs: jax.Array, frontier_rng, block=None, stored=None
):
    """inputs [B, T] -> (logits [B, T, V], reference logits [B, T, V] (a TopK when stored) or
    None, the wiring's memory-prediction loss or None). The student's V is the objective's
    draft_vocab when that is set.

    params: every model/projection by name; frozen ones must already be stop_gradient-ed.
    frontier_rng: for a sampled block length / random offset (None: the fixed grid).
    block: evaluate on the fixed grid with this γ instead of the wiring's settings.
    stored: the cached model's outputs for these inputs (`compiler.train.teacher`), used
    instead of running it.
    """
    b, t = inputs.shape
    scale = plan.stage.scale
    student = params[plan.model.name]
    if plan.stage.objective.draft_vocab:  # logits [B, T, draft_vocab]
        student = cut_head(student, plan.stage.objective.draft_vocab)
    memory_logits = prediction = None
    if plan.wiring is not None:
        w = plan.wiring
        if stored is not None:
            hiddens = stored_hiddens(plan, stored, frontier_rng)
        else:
            memory_logits, hiddens = decoder_forward(
                params[plan.memory.name], plan.memory, inputs, scale=scale
            )
        if plan.frozen(plan.memory.name):
            hiddens = jax.lax.stop_gradient(hiddens)
        if block is not None:
            frontier = training_frontier(b, t, block)
        else:
            frontier = training_frontier(b, t, w.block, w.block_max, w.random_offset, frontier_rng)
        proj = params.get(w.projection.name)
        depth = block or w.block_max
        logits, prediction = tandem_forward_and_prediction(
            student, proj, plan.model, w, hiddens, inputs, frontier, scale, depth
        )
    else:
        logits = decoder_forward(student, plan.model, inputs, scale=scale)[0]
    reference = None
    if stored is not None:
        reference = TopK(stored["top_values"], stored["top_indices"])
    elif plan.teacher is not None:
        if plan.memory is not None and plan.teacher == plan.memory:
            reference = memory_logits
        else:
            reference = decoder_forward(
                params[plan.teacher.name], plan.teacher, inputs, scale=scale
            )[0]
    elif memory_logits is not None:
        reference = memory_logits
    if reference is not None:
        reference = jax.lax.stop_gradient(reference)
    return logits, reference, prediction


def hidden_key(layer: int) -> str:
    """A stored batch's key for the hiddens entering `layer` (string keys: jax.export)."""
    return f"hidden_{layer}"


def stored_hiddens(plan: StagePlan, stored: dict, rng) -> dict:
    """The cached model's stored hiddens {layer: [B, T, D] f32}, with the cache's feature noise
    when training (rng given): uniform, a fraction of each vector's RMS (EAGLE's)."""
    noise = plan.stage.teacher_cache.noise
    hiddens = {}
    for key, h in stored.items():
        if not key.startswith(hidden_key("")):
            continue
        layer = int(key.removeprefix(hidden_key("")))
        h = h.astype(jnp.float32)
        if noise and rng is not None:
            u = jax.random.uniform(jax.random.fold_in(rng, 1 + layer), h.shape, h.dtype, -1, 1)
            h = h + noise * jnp.sqrt(jnp.mean(h * h, axis=-1, keepdims=True)) * u
        hiddens[layer] = h
    return hiddens


def loss_and_metrics(
    plan: StagePlan, logits, reference, targets, prediction=None
) -> tuple[jax.Array, dict]:
    """targets: as in the batch (with their no-loss flags under `stage.loss_mask`).
    prediction: the memory-prediction loss (`compiler.nn.tandem.prediction_loss`), added with
    the wiring's `predict` weight."""
    obj = plan.stage.objective
    weights = None
    if plan.stage.loss_mask:
        weights = loss_mask.counted(targets).astype(jnp.float32)
        targets = loss_mask.token_ids(targets)
    metrics = {"accuracy": accuracy(logits, targets, weights)}
    view = (targets, weights, reference)
    if obj.draft_vocab:  # the metrics still score every position: a target past it is a miss
        view = within_vocab(obj.draft_vocab, *view)
    loss_targets, loss_weights, loss_reference = view
    loss, parts = OBJECTIVES[obj.kind].loss(obj, logits, loss_targets, loss_reference, loss_weights)
    metrics.update(parts)
    if reference is not None:
        metrics["agreement"] = agreement(logits, reference, weights)
    if prediction is not None:
        metrics["prediction"] = prediction
        loss = loss + plan.wiring.predict * prediction
    metrics["loss"] = loss
    return loss, metrics


def make_loss_fn(prog: ProgramIR, stage: TrainStageIR, block: int | None = None):
    """loss_fn(params, batch, rng) -> (loss, metrics). batch: tokens [B, T + 1] (with no-loss
    flags under `stage.loss_mask`, `compiler.loss_mask`), or with a teacher cache the stored
    batch that `compiler.train.teacher` describes.

    params holds every model/projection by name; those not in stage.trainable are wrapped
    in stop_gradient, so even a gradient taken w.r.t. all params is zero for them, and so
    are the token tables of models with embed_trainable False.
    """
    plan = plan_stage(prog, stage)
    fixed_tables = fixed_embeddings(prog)

    def loss_fn(params: dict, batch: jax.Array, rng) -> tuple[jax.Array, dict]:
        params = {k: (jax.lax.stop_gradient(v) if plan.frozen(k) else v) for k, v in params.items()}
        for name in fixed_tables & params.keys():
            params[name] = dict(params[name], embed=jax.lax.stop_gradient(params[name]["embed"]))
        stored = None
        if isinstance(batch, dict):
            stored, batch = batch, batch["tokens"]
        inputs, targets = batch[:, :-1], batch[:, 1:]
        if stage.loss_mask:  # the models read clean ids; the loss reads the flags
            inputs = loss_mask.token_ids(inputs)
        logits, reference, prediction = forward(plan, params, inputs, rng, block, stored)
        return loss_and_metrics(plan, logits, reference, targets, prediction)

    return loss_fn
