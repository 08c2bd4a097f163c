"""Train and eval programs: pure, jittable functions of explicit state.

Train state (a dict pytree, checkpointable as is):
  step:      int32 []
  params:    {name: tree} for the stage's trainable models and projections
  frozen:    {name: tree} for every other model / projection (no optimizer state)
  opt_state: the optax state of `params` only

`train_step(state, batch [B, T + 1] int32, rng) -> (state, metrics)` and
`eval_step(state, batch) -> metrics` are returned un-jitted; callers wrap them with
`jax.jit` (donating the state in the train step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from compiler.ir import ProgramIR, TrainStageIR
from compiler.train.objective import fixed_embeddings, make_loss_fn, plan_stage
from compiler.train.optim import make_optimizer, make_schedule


def stage_optimizer(prog: ProgramIR, stage: TrainStageIR) -> optax.GradientTransformation:
    """The stage's optimizer; the token tables of models with embed_trainable False get zero
    updates (and no optimizer state)."""
    opt = make_optimizer(stage.optimizer, stage.steps)
    fixed = fixed_embeddings(prog) & set(stage.trainable)
    if not fixed:
        return opt

    def labels(params: dict) -> dict:
        out = jax.tree.map(lambda _: "train", params)
        for name in fixed & params.keys():
            out[name] = dict(
                out[name], embed=jax.tree.map(lambda _: "fixed", params[name]["embed"])
            )
        return out

    return optax.multi_transform({"train": opt, "fixed": optax.set_to_zero()}, labels)


def all_params(state: dict) -> dict:
    """Every model and projection by name (trainable and frozen together)."""
    return {**state["frozen"], **state["params"]}


def init_train_state(prog: ProgramIR, stage: TrainStageIR, params: dict) -> dict:
    """Split `params` (from `compiler.nn.init_params` or a checkpoint) into trainable and
    frozen parts and build the optimizer state for the trainable part only."""
    plan_stage(prog, stage)  # validates the stage
    missing = [n for n in stage.trainable if n not in params]
    if missing:
        raise ValueError(f"stage {stage.name!r}: no params for trainable {missing}")
    trainable = {k: v for k, v in params.items() if k in stage.trainable}
    frozen = {k: v for k, v in params.items() if k not in stage.trainable}
    opt = stage_optimizer(prog, stage)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": trainable,
        "frozen": frozen,
        "opt_state": opt.init(trainable),
    }


def make_train_step(prog: ProgramIR, stage: TrainStageIR):
    """train_step(state, batch [B, T + 1] int32, rng) -> (state, metrics).

    metrics: loss, ce, accuracy, (distil, agreement when the objective has a teacher or a
    memory model), grad_norm (before clipping), lr.
    """
    loss_fn = make_loss_fn(prog, stage)
    opt = stage_optimizer(prog, stage)
    schedule = make_schedule(stage.optimizer, stage.steps)

    n_micro = stage.scale.grad_accum

    def train_step(state: dict, batch: jax.Array, rng) -> tuple[dict, dict]:
        def grads_of(batch, rng):
            def loss_of_trainable(trainable):
                return loss_fn({**state["frozen"], **trainable}, batch, rng)

            return jax.grad(loss_of_trainable, has_aux=True)(state["params"])

        if n_micro == 1:
            grads, metrics = grads_of(batch, rng)
        else:
            grads, metrics = _accumulated(grads_of, batch, rng, n_micro)
        updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "frozen": state["frozen"],
            "opt_state": opt_state,
        }
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]))
        return new_state, metrics

    return train_step


def _accumulated(grads_of, batch, rng, n: int):
    """The mean (grads, metrics) of `n` micro-batches, run one after another in a lax.scan.

    Micro-batch i is rows i, i + n, ... of the batch (a stored batch: of each of its arrays):
    a reshape [B] -> [B / n, n] keeps each device's rows of a batch split over `data` on that
    device. Micro-batch i gets rng fold_in(rng, i).
    """
    micro = jax.tree.map(lambda a: a.reshape(-1, n, *a.shape[1:]).swapaxes(0, 1), batch)

    def add(total, part_and_index):
        part, i = part_and_index
        summand = grads_of(part, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, total, summand), None

    first = jax.tree.map(lambda a: a[0], micro)
    shapes = jax.eval_shape(grads_of, first, rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(add, zeros, (micro, jnp.arange(n)))
    return jax.tree.map(lambda x: x / n, total)


def make_eval_step(prog: ProgramIR, stage: TrainStageIR, block: int | None = None):
    """eval_step(state, batch [B, T + 1] int32) -> metrics: loss, ce, accuracy and, when the
    objective has a teacher or a Tandem memory model, agreement (argmax equal to its argmax).

    Deterministic: a Tandem model is evaluated on the fixed grid f(t) = floor(t/γ)*γ with
    γ = `block` (default: the wiring's training block), so larger γ can be measured.
    """
    plan = plan_stage(prog, stage)
    if block is None and plan.wiring is not None:
        block = plan.wiring.block
    loss_fn = make_loss_fn(prog, stage, block=block)

    def eval_step(state: dict, batch: jax.Array) -> dict:
        _, metrics = loss_fn(all_params(state), batch, None)
        return metrics

    return eval_step
