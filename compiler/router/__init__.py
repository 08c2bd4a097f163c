"""The adaptive-block-length router: features, the MLP, data collection and training."""

from compiler.router.features import (
    ACTIVATIONS,
    ROUTER,
    features,
    init_router,
    n_features,
    p_reject,
    reject_logit,
)

__all__ = [
    "ACTIVATIONS",
    "ROUTER",
    "features",
    "init_router",
    "n_features",
    "p_reject",
    "reject_logit",
]
