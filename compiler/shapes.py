"""Shapes without allocating: a program's parameters and a train stage's state."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import nn
from .ir import ProgramIR, TrainStageIR

KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def abstract_params(prog: ProgramIR):
    """Parameter shapes without allocating them."""
    return jax.eval_shape(lambda k: nn.init_params(prog, k), KEY)


def train_state_shape(prog: ProgramIR, stage: TrainStageIR, params):
    from .train import init_train_state

    return jax.eval_shape(lambda p: init_train_state(prog, stage, p), params)
