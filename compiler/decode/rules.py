"""Per-token stop rules for adaptive drafting, and the table that builds the spec's rules.

After M_S drafts its i-th token of a round, a rule decides per row whether to draft another.
The draft loop asks every rule the same things (`Rule`): a per-round carry (`init`), the
decision after each draft (`step`), and a per-row draft budget kept across rounds (`budget`,
`update`); the base class answers them for a rule that only looks at the signal
(`__call__`). The loop also stops at max_gamma. Rules are frozen dataclasses (hashable, so
they can be part of the static loop config); a learned router reads its weights from
`params` (the same dict the generate program takes), so it can be trained and swapped
without recompiling for new weights.

`RULES` builds the rule a spec names (`decode.adaptive.rule`, whose names the spec owns in
`tandem_dsl.model.STOP_RULES`) from the decode section (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from compiler.ir import DecodeIR


class DraftSignal(NamedTuple):
    """What M_S knows after drafting a token."""

    logits: jax.Array  # [B, V] raw M_S logits at this step
    probs: jax.Array  # [B, V] the draft distribution (processed; softmax(logits) when greedy)
    token: jax.Array  # [B] the drafted token
    step: jax.Array  # [] int32, tokens drafted so far this round (1-based)


class Rule:
    """What the draft loop calls, with the defaults of a rule without state: a subclass
    defines `__call__(signal, params) -> continue [B]`, or overrides `init` and `step`."""

    reads_router = False  # reads params["router"] (the generate program then takes it)

    def init(self, batch: int):
        """The carry at the start of each round."""
        return ()

    def step(self, signal: DraftSignal, params: dict, carry):
        """After a draft: (continue [B] bool, carry)."""
        return self(signal, params), carry

    def budget(self, batch: int) -> jax.Array | None:
        """Each row's most drafts per round at the start ([B] int32), or None: no budget."""
        return None

    def update(self, budget: jax.Array, n_accepted: jax.Array, n_draft: jax.Array) -> jax.Array:
        """The budget after a round the rule drafted ([B] each)."""
        return budget


@dataclass(frozen=True)
class FixedRule(Rule):
    """Draft exactly gamma tokens (standard SPEED)."""

    gamma: int

    def __call__(self, signal: DraftSignal, params: dict) -> jax.Array:
        del params
        return jnp.broadcast_to(signal.step < self.gamma, signal.token.shape)


@dataclass(frozen=True)
class ConfidenceRule(Rule):
    """Keep drafting while M_S's top probability is >= threshold (HF's
    `assistant_confidence_threshold`, EAGLE-2's observation that draft confidence tracks
    acceptance). The low-confidence token itself is kept and verified."""

    threshold: float

    def __call__(self, signal: DraftSignal, params: dict) -> jax.Array:
        del params
        return jnp.max(signal.probs, axis=-1) >= self.threshold


@dataclass(frozen=True)
class MarginRule(Rule):
    """Keep drafting while M_S's top probability leads its second by >= threshold: a flat
    head pair (two likely tokens) stops the draft even when the top one looks confident
    next to the rest of the vocabulary."""

    threshold: float

    def __call__(self, signal: DraftSignal, params: dict) -> jax.Array:
        del params
        top2 = jax.lax.top_k(signal.probs, 2)[0]
        return top2[:, 0] - top2[:, 1] >= self.threshold


@dataclass(frozen=True)
class HeuristicRule(Rule):
    """The +2/-1 heuristic (HF assisted generation's `num_assistant_tokens_schedule="heuristic"`):
    each row drafts up to its own budget, which grows by 2 after a round whose drafts were all
    accepted and shrinks by 1 (not below 1) otherwise, capped at max_gamma. The per-row budget
    lives in the loop state (`LoopState.budget`); per token the rule always continues."""

    start: int
    max_gamma: int

    def __call__(self, signal: DraftSignal, params: dict) -> jax.Array:
        del params
        return jnp.ones(signal.token.shape, bool)

    def budget(self, batch: int) -> jax.Array:
        return jnp.full((batch,), self.start, jnp.int32)

    def update(self, budget: jax.Array, n_accepted: jax.Array, n_draft: jax.Array) -> jax.Array:
        grown = jnp.where(n_accepted >= n_draft, budget + 2, budget - 1)
        return jnp.clip(grown, 1, self.max_gamma).astype(jnp.int32)


@dataclass(frozen=True)
class RouterRule(Rule):
    """The paper's rule: keep drafting while the router's predicted acceptance
    1 - p_reject >= threshold. Weights come from params["router"] (see compiler.router)."""

    draft: str  # M_S's name: its token embeddings feed the router
    top_k: int
    threshold: float
    activation: str = "gelu"
    reads_router = True

    def accept(self, signal: DraftSignal, params: dict) -> jax.Array:
        from compiler.router.features import ROUTER, features, p_reject

        x = features(signal.probs, params[self.draft]["embed"]["tokens"], self.top_k)
        return 1.0 - p_reject(params[ROUTER], x, self.activation)

    def __call__(self, signal: DraftSignal, params: dict) -> jax.Array:
        return self.accept(signal, params) >= self.threshold


@dataclass(frozen=True)
class ExpectedGainRule(Rule):
    """Cost-aware router rule: keep drafting while some longer draft raises the round's
    expected tokens per unit of time.

    After draft i with predicted acceptance a_i, P_i = a_1 * ... * a_i is the chance that every
    draft so far is accepted and E_i = 1 + P_1 + ... + P_i the expected tokens of the round
    (correction/bonus counted). Stopping now costs C_i = i * small_cost + block_costs[i];
    drafting h more (their acceptance extrapolated as a_i each) gives E_i + P_i (a_i + ... +
    a_i^h) tokens for C_{i+h}. Continue iff max_h E_{i+h} / C_{i+h} > E_i / C_i. Costs are
    measured on this machine at this batch size (`compiler.router.costs`), block_costs[n] being
    the verify pass holding n drafts (the bucket it runs in), so the rule sees the steps of the
    bucketed verify cost and the relative price of a small step.
    """

    draft: str
    top_k: int
    small_cost: float  # one M_S step (any unit)
    block_costs: tuple[float, ...]  # [G + 1]: verify pass with n drafts, same unit
    activation: str = "gelu"
    reads_router = True

    def init(self, batch: int):
        one = jnp.ones((batch,), jnp.float32)
        return one, one  # P (all accepted so far), E (expected tokens)

    def step(self, signal: DraftSignal, params: dict, carry):
        p_all, e = carry
        a = RouterRule(self.draft, self.top_k, 0.0, self.activation).accept(signal, params)
        return self.decide(a, signal.step, p_all, e)

    def decide(self, a, i, p_all, e):
        g = len(self.block_costs) - 1
        v = jnp.asarray(self.block_costs, jnp.float32)
        p_all = p_all * a
        e = e + p_all
        rate = e / (i * self.small_cost + v[jnp.minimum(i, g)])
        best = jnp.zeros_like(rate)
        gain, pw = jnp.zeros_like(a), jnp.ones_like(a)
        for h in range(1, g):
            pw = pw * a
            gain = gain + pw
            cost = (i + h) * self.small_cost + v[jnp.minimum(i + h, g)]
            best = jnp.where(i + h <= g, jnp.maximum(best, (e + p_all * gain) / cost), best)
        return best > rate, (p_all, e)


def block_costs(costs: dict, gamma: int) -> tuple[float, ...]:
    """Cost of the verify pass that holds n drafts, n = 0..gamma: its bucket's time, from
    measured costs ({"small_ms", "block_ms": {bucket: ms}}, `compiler.router.costs.measure`)."""
    sizes = sorted(int(n) for n in costs["block_ms"])
    table = {int(n): float(v) for n, v in costs["block_ms"].items()}
    return tuple(table[next(b for b in sizes if b >= max(n, 1))] for n in range(gamma + 1))


def _expected_gain(d: DecodeIR, costs: dict | None) -> ExpectedGainRule:
    if costs is None:
        raise ValueError(
            "decode.adaptive.rule expected_gain needs this machine's measured costs "
            "(compiler.router.costs.measure; `tandemc run` measures them)"
        )
    a = d.adaptive
    blocks = tuple(round(c, 4) for c in block_costs(costs, a.max_gamma))
    return ExpectedGainRule(d.draft, a.top_k, round(float(costs["small_ms"]), 4), blocks,
                            a.activation)  # fmt: skip


# The spec's rules by name (tandem_dsl.model.STOP_RULES owns the names and what each needs):
# (decode section, measured costs or None) -> rule. A rule that reads the trained router
# needs params["router"] when it runs.
RULES: dict[str, Callable[[DecodeIR, dict | None], Rule]] = {
    "fixed": lambda d, costs: FixedRule(min(d.gamma, d.adaptive.max_gamma)),
    "confidence": lambda d, costs: ConfidenceRule(d.adaptive.threshold),
    "margin": lambda d, costs: MarginRule(d.adaptive.threshold),
    "heuristic": lambda d, costs: HeuristicRule(
        min(d.gamma, d.adaptive.max_gamma), d.adaptive.max_gamma
    ),
    "threshold": lambda d, costs: RouterRule(
        d.draft, d.adaptive.top_k, d.adaptive.threshold, d.adaptive.activation
    ),
    "expected_gain": _expected_gain,
}
