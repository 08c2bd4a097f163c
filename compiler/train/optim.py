"""OptimizerIR -> optax: learning-rate schedule, clipping, weight decay."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from compiler.ir import OptimizerIR

END_FRACTION = 0.1  # cosine and linear schedules decay to 10% of the peak rate


def make_schedule(opt: OptimizerIR, steps: int) -> optax.Schedule:
    """Linear warmup to opt.lr over opt.warmup steps (lr * (step + 1) / warmup), then
    constant, or cosine / linear decay to END_FRACTION * lr at `steps`."""
    if opt.schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"unknown learning-rate schedule {opt.schedule!r}")
    warm = max(min(opt.warmup, steps), 0)
    decay_steps = max(steps - warm, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm_lr = opt.lr * (step + 1.0) / max(warm, 1)
        frac = jnp.clip((step - warm) / decay_steps, 0.0, 1.0)
        if opt.schedule == "cosine":
            main = opt.lr * (
                END_FRACTION + (1 - END_FRACTION) * 0.5 * (1 + jnp.cos(math.pi * frac))
            )
        elif opt.schedule == "linear":
            main = opt.lr * (1.0 - (1 - END_FRACTION) * frac)
        else:
            main = jnp.asarray(opt.lr, jnp.float32)
        return jnp.where(step < warm, warm_lr, main)

    return schedule


def decays(x) -> bool:
    """Weight decay applies to matrices and embeddings (ndim >= 2), not norms or biases."""
    return x.ndim >= 2


def add_decayed_weights(weight_decay: float) -> optax.GradientTransformation:
    """updates + weight_decay * params on the leaves where `decays` holds. A plain tree
    map rather than optax's masked wrapper, which splits the tree and compiles slower."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("weight decay needs the params")
        updates = jax.tree.map(
            lambda u, p: u + weight_decay * p.astype(u.dtype) if decays(p) else u,
            updates,
            params,
        )
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(opt: OptimizerIR, steps: int) -> optax.GradientTransformation:
    """Global-norm clipping (opt.clip > 0), then
    adamw: Adam moments, then decoupled weight decay, then the learning rate (as optax.adamw);
    adam:  L2 weight decay added to the gradient, then Adam;
    sgd:   L2 weight decay, then SGD with momentum opt.b1 (none when b1 == 0)."""
    lr = make_schedule(opt, steps)
    parts = []
    if opt.clip > 0:
        parts.append(optax.clip_by_global_norm(opt.clip))
    if opt.kind not in ("adamw", "adam", "sgd"):
        raise ValueError(f"unknown optimizer {opt.kind!r}")
    if opt.kind in ("adam", "sgd") and opt.weight_decay > 0:
        parts.append(add_decayed_weights(opt.weight_decay))
    if opt.kind == "sgd":
        if opt.b1 > 0:
            parts.append(optax.trace(decay=opt.b1))
    else:
        parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2))
    if opt.kind == "adamw" and opt.weight_decay > 0:
        parts.append(add_decayed_weights(opt.weight_decay))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts)
