"""The static loop configuration, the loop state and results, and the shared emit step.

Letters in shape comments: B batch, P padded prompt length, N output buffer
(max_new_tokens + G + 1), G draft/block buffer (gamma, or max_gamma when adaptive), V vocab,
S cache slots.

Positions: row b has prompt length L_b (left-aligned, padded to P). After n_b generated tokens
the last emitted token (or the last prompt token when n_b = 0) sits at position L_b - 1 + n_b;
every policy's round starts there (`frontier`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from compiler.ir import DecoderIR, SamplingIR, WiringIR

POLICIES = ("autoregressive", "standalone", "speed", "adaptive")


@dataclass(frozen=True)
class LoopConfig:
    """Everything static about one decode program (hashable: a jit static argument)."""

    policy: str  # autoregressive | standalone | speed | adaptive
    target: DecoderIR  # the model that is sampled from (M_L; any model for autoregressive)
    draft: DecoderIR | None  # M_S (None for autoregressive)
    wiring: WiringIR | None  # how M_S reads M_L (kind "none" for an independent drafter)
    sampling: SamplingIR
    gamma: int  # G: drafted/generated tokens per round (max_gamma for adaptive)
    max_new: int
    eos_id: int = -1  # -1: never stop early
    free_token: bool = True  # standalone: M_L's next token starts each M_S block
    stop_rule: Callable[..., jax.Array] | None = None  # adaptive: (signal, params) -> continue [B]
    return_logits: bool = False  # record the logits behind every emitted token [B, N, V]
    pad_id: int = 0
    ngram: int = 0  # > 0: prompt-lookup drafts (no draft model) matching up to this many tokens
    # verify-block buckets: draft counts the verify pass is compiled for (ascending, last = gamma);
    # each round runs the smallest that holds every active row's drafts. () = always gamma.
    buckets: tuple[int, ...] = ()
    # > 0: M_S proposes only ids < draft_vocab (a cut output layer, `drafting.draft_head`)
    draft_vocab: int = 0
    # > 0 (speed/adaptive with M_S): hybrid drafting, an n-gram prompt lookup up to this n
    # first; M_S drafts only the rows without a match (`loops.hybrid_drafts`)
    lookup: int = 0
    lookup_min: int = 0  # the shortest match that drafts by lookup (0 = lookup)
    lookup_gamma: int = 0  # drafts per lookup round (0 = gamma)

    @property
    def buf_len(self) -> int:
        return self.max_new + self.gamma + 1

    def cache_len(self, prompt_len: int) -> int:
        """Slots so that every position an active row can touch is < S (rows stop at max_new)."""
        return prompt_len + self.max_new + self.gamma + 1

    @property
    def projection(self) -> str | None:
        w = self.wiring
        return w.projection.name if w is not None and w.kind != "none" else None

    @property
    def independent(self) -> bool:
        """M_S is an ordinary LM (standard SPEED): it keeps its own K/V at every position."""
        if self.draft is None:
            return False
        return self.wiring is None or self.wiring.kind == "none"

    @property
    def partial(self) -> bool:
        """A Tandem M_S with unwired layers: those need M_S's own K/V at every position too."""
        w = self.wiring
        return self.draft is not None and not self.independent and None in w.layer_map

    @property
    def prompt_pass(self) -> bool:
        """M_S must process the prompt itself (independent drafter or unwired layers)."""
        return self.independent or self.partial

    @property
    def catch_up(self) -> bool:
        """Hybrid drafting with an M_S that needs its own K/V at every position: the rounds
        drafted by lookup leave holes that it fills before it drafts again
        (`drafting.catch_up`, `LoopState.synced`)."""
        return self.lookup > 0 and self.prompt_pass


@flax.struct.dataclass
class DecodeStats:
    """Per-row counters. large_calls counts the prefill pass too (autoregressive: = tokens)."""

    large_calls: jax.Array  # [B] int32 passes of the target model
    small_calls: jax.Array  # [B] int32 passes of M_S (a prompt pass or catch-up block: one)
    rounds: jax.Array  # [B] int32 verify (speed/adaptive) or block (standalone) rounds
    round_tokens: jax.Array  # [B] int32 tokens emitted by those rounds (bonus counted)
    accepted_by_pos: jax.Array  # [B, G] int32 rounds in which draft i was accepted
    drafted_by_pos: jax.Array  # [B, G] int32 rounds in which draft i was proposed
    lookup_rounds: jax.Array  # [B] int32 rounds drafted by prompt lookup (hybrid drafting)

    @classmethod
    def zeros(cls, batch: int, gamma: int) -> DecodeStats:
        z = jnp.zeros((batch,), jnp.int32)
        zg = jnp.zeros((batch, gamma), jnp.int32)
        return cls(z, z, z, z, zg, zg, z)

    @property
    def tau(self) -> jax.Array:
        """Mean tokens per round (accepted drafts + the correction/bonus token) [B]."""
        return self.round_tokens / jnp.maximum(self.rounds, 1)


@flax.struct.dataclass
class LoopState:
    """The while-loop carry (gemma's SamplingState pattern)."""

    out: jax.Array  # [B, N] int32 generated tokens, pad_id past n
    n: jax.Array  # [B] int32 tokens generated so far
    last: jax.Array  # [B] int32 token at position L - 1 + n (the next round's first input)
    prev: jax.Array  # [B] int32 token at position L - 2 + n (independent drafters re-read it)
    done: jax.Array  # [B] bool
    prompt_lens: jax.Array  # [B] int32
    large_cache: Any  # list of {"k", "v"} [B, S, K, E] per target layer
    small_cache: Any  # same for M_S, or None
    key: jax.Array
    stats: DecodeStats
    logits: jax.Array | None  # [B, N, V] float32 when return_logits
    context: jax.Array | None = None  # [B, S] int32 token at each position (prompt lookup)
    budget: jax.Array | None = None  # [B] int32 per-row draft limit (the +2/-1 heuristic)
    # [B] int32 (LoopConfig.catch_up): M_S's cache holds its own K/V below this position
    synced: jax.Array | None = None

    @property
    def frontier(self) -> jax.Array:
        return self.prompt_lens - 1 + self.n  # [B]


@flax.struct.dataclass
class GenerateResult:
    tokens: jax.Array  # [B, max_new] int32, pad_id past lengths
    lengths: jax.Array  # [B] int32 (an EOS token is included)
    stats: DecodeStats
    logits: jax.Array | None = None  # [B, max_new, V] when return_logits


def emit(
    cfg: LoopConfig,
    state: LoopState,
    tokens: jax.Array,
    count: jax.Array,
    logits: jax.Array | None = None,
) -> LoopState:
    """Append tokens [B, W] (the first count[b] of each row) to active rows.

    A row stops at the first EOS among its new tokens (kept) or at max_new tokens. Done rows
    are left untouched, so their positions never move past the cache.
    """
    b, w = tokens.shape
    i = jnp.arange(w, dtype=jnp.int32)[None, :]  # [1, W]
    active = ~state.done
    hit_eos = jnp.zeros((b,), bool)
    if cfg.eos_id >= 0:
        hit = (i < count[:, None]) & (tokens == cfg.eos_id)  # [B, W]
        hit_eos = hit.any(axis=1)
        count = jnp.where(hit_eos, jnp.argmax(hit, axis=1).astype(jnp.int32) + 1, count)
    write = active[:, None] & (i < count[:, None])  # [B, W]
    slots = jnp.where(write, state.n[:, None] + i, cfg.buf_len)  # out of range -> dropped
    rows = jnp.arange(b)[:, None]
    out = state.out.at[rows, slots].set(tokens.astype(jnp.int32), mode="drop")
    rec = state.logits
    if rec is not None and logits is not None:
        rec = rec.at[rows, slots].set(logits.astype(rec.dtype), mode="drop")
    ctx = state.context
    if ctx is not None:  # token n + i sits at position prompt_len + n + i
        pos = jnp.where(write, state.prompt_lens[:, None] + state.n[:, None] + i, ctx.shape[1])
        ctx = ctx.at[rows, pos].set(tokens.astype(jnp.int32), mode="drop")
    n = jnp.where(active, state.n + count, state.n)
    done = state.done | (active & (hit_eos | (n >= cfg.max_new)))
    return state.replace(out=out, n=n, done=done, logits=rec, context=ctx)


def finalize(cfg: LoopConfig, state: LoopState) -> GenerateResult:
    lengths = jnp.minimum(state.n, cfg.max_new)
    keep = jnp.arange(cfg.max_new)[None, :] < lengths[:, None]  # [B, max_new]
    tokens = jnp.where(keep, state.out[:, : cfg.max_new], cfg.pad_id)
    logits = None if state.logits is None else state.logits[:, : cfg.max_new]
    return GenerateResult(tokens=tokens, lengths=lengths, stats=state.stats, logits=logits)


def gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, T, ...], idx [B] -> x[b, idx[b]] [B, ...]."""
    idx = idx.astype(jnp.int32).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.take_along_axis(x, idx, axis=1)[:, 0]
