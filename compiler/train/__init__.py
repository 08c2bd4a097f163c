"""Training programs: objectives (LM CE, Tandem-CE, Tandem-Distil, drafter distillation),
optimizers from OptimizerIR, and pure train/eval steps over explicit state."""

from compiler.train.losses import accuracy, agreement, cross_entropy, distil_loss
from compiler.train.objective import StagePlan, make_loss_fn, plan_stage
from compiler.train.optim import make_optimizer, make_schedule
from compiler.train.steps import all_params, init_train_state, make_eval_step, make_train_step

__all__ = [
    "StagePlan",
    "accuracy",
    "agreement",
    "all_params",
    "cross_entropy",
    "distil_loss",
    "init_train_state",
    "make_eval_step",
    "make_loss_fn",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "plan_stage",
]
