"""Per-token stop rules for adaptive drafting.

After M_S drafts its i-th token of a round, a rule decides per row whether to draft another:
`rule(signal, params) -> continue [B] bool`. The loop also stops at max_gamma. Rules are
frozen dataclasses (hashable, so they can be part of the static loop config); a learned router
reads its weights from `params` (the same dict the generate program takes), so it can be
trained and swapped without recompiling for new weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp


class DraftSignal(NamedTuple):
    """What M_S knows after drafting a token."""

    logits: jax.Array  # [B, V] raw M_S logits at this step
    probs: jax.Array  # [B, V] the draft distribution (processed; softmax(logits) when greedy)
    token: jax.Array  # [B] the drafted token
    step: jax.Array  # [] int32, tokens drafted so far this round (1-based)


@dataclass(frozen=True)
class FixedRule:
    """Draft exactly gamma tokens (standard SPEED)."""

    gamma: int

    def __call__(self, signal: DraftSignal, params: dict) -> jax.Array:
        del params
        return jnp.broadcast_to(signal.step < self.gamma, signal.token.shape)


@dataclass(frozen=True)
class ConfidenceRule:
    """Keep drafting while M_S's top probability is >= threshold (HF's
    `assistant_confidence_threshold`, EAGLE-2's observation that draft confidence tracks
    acceptance). The low-confidence token itself is kept and verified."""

    threshold: float

    def __call__(self, signal: DraftSignal, params: dict) -> jax.Array:
        del params
        return jnp.max(signal.probs, axis=-1) >= self.threshold
