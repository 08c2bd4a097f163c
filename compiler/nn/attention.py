"""Grouped-query attention pieces and the KV-cache write.

Params of one layer's attention:
  wq [D, H, E], wk [D, K, E], wv [D, K, E], wo [H, E, D]
  bq [H, E], bk [K, E], bv [K, E]                            (qkv_bias only)
Letters: B batch, T query tokens, S key slots, D d_model, H query heads, K kv heads,
G = H // K query heads per kv head, E head_dim.

Keys are computed from (already normed) residual vectors by `keys_values`, which is also
what the Tandem code uses to turn projected large-model vectors into small-model K/V.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from compiler.ir import DecoderIR
from compiler.nn.layers import dtype_of, normal, rope
from compiler.nn.packed import PackedWeight, dense

# Finite "minus infinity": a fully masked row cannot produce NaN, and masked weights are
# exactly 0 after the softmax (exp underflows), so masked slots never contribute.
NEG_INF = -1e30


def init_attn(cfg: DecoderIR, out_scale: float) -> dict:
    dt = dtype_of(cfg)
    d, h, k, e = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    p = {
        "wq": normal((d, h, e), d**-0.5, dt),
        "wk": normal((d, k, e), d**-0.5, dt),
        "wv": normal((d, k, e), d**-0.5, dt),
        "wo": normal((h, e, d), (h * e) ** -0.5 * out_scale, dt),
    }
    if cfg.qkv_bias:
        p |= {"bq": jnp.zeros((h, e), dt), "bk": jnp.zeros((k, e), dt), "bv": jnp.zeros((k, e), dt)}
    return p


def queries(params: dict, cfg: DecoderIR, h: jax.Array, positions: jax.Array) -> jax.Array:
    """Normed h [B, T, D], positions [B, T] -> q [B, T, H, E] (RoPE applied if pos == rope)."""
    q = _project(h, params["wq"], params.get("bq"))
    return rope(q, positions, cfg) if cfg.pos == "rope" else q


def keys_values(
    params: dict, cfg: DecoderIR, h: jax.Array, positions: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Normed h [B, T, D], positions [B, T] -> k, v [B, T, K, E] (RoPE on k if pos == rope)."""
    k = _project(h, params["wk"], params.get("bk"))
    v = _project(h, params["wv"], params.get("bv"))
    if cfg.pos == "rope":
        k = rope(k, positions, cfg)
    return k, v


def queries_keys_values(params: dict, cfg: DecoderIR, h: jax.Array, positions: jax.Array):
    """q [B, T, H, E], k, v [B, T, K, E] from normed h [B, T, D]. Params packed for decoding
    carry q|k|v as one weight "wqkv" (one kernel call instead of three)."""
    if "wqkv" not in params:
        return queries(params, cfg, h, positions), *keys_values(params, cfg, h, positions)
    b, t, _ = h.shape
    nq, nk = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    y = dense(h, params["wqkv"])  # [B, T, nq + 2 nk]
    if "bq" in params:
        y = y + jnp.concatenate([params[n].reshape(-1) for n in ("bq", "bk", "bv")])
    q = y[..., :nq].reshape(b, t, cfg.n_heads, cfg.head_dim)
    k = y[..., nq : nq + nk].reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    v = y[..., nq + nk :].reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    if cfg.pos == "rope":
        q, k = rope(q, positions, cfg), rope(k, positions, cfg)
    return q, k, v


@dataclass(frozen=True)
class CacheRule:
    """The decode-time mask `cache_mask(positions, S)`, kept as the positions [B, T], so the
    kernel can read only the visible slots of the cache instead of scoring all S."""

    positions: jax.Array


@dataclass(frozen=True)
class Causal:
    """Training's causal self-attention of tokens at positions 0..T-1, left to the platform's
    fused attention (`jax.nn.dot_product_attention`, train[i].scale.attention: fused): no
    [B, T, T] mask is built."""


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask, kernel: bool = False) -> jax.Array:
    """Masked softmax attention with grouped kv heads.

    q [B, T, H, E], k/v [B, S, K, E], mask [B, T, S] bool (True = may attend), a CacheRule or
    Causal -> [B, T, H, E]. Scores and softmax in float32. With `kernel` (params packed for the CPU
    kernel), float32 attention over a cache runs the kernel on CPU (XLA's dots on other
    platforms): every query row alone, so a prefill, a verify pass and a one-token step give
    each row the same bits, and only the visible slots are read (faster than XLA's dots
    from 1 to 400 query tokens, docs/BENCHMARKS.md).
    """
    if isinstance(mask, Causal):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True)
    if isinstance(mask, CacheRule):
        positions, slots = mask.positions, k.shape[1]
        if kernel and q.dtype == k.dtype == jnp.float32:
            return jax.lax.platform_dependent(
                q, k, v, positions,
                cpu=_kernel_attend,
                default=lambda q, k, v, pos: attend(q, k, v, cache_mask(pos, slots)),
            )  # fmt: skip
        mask = cache_mask(positions, slots)
    b, t, h, e = q.shape
    n_kv = k.shape[2]
    qg = q.reshape(b, t, n_kv, h // n_kv, e)  # [B, T, K, G, E]
    scores = jnp.einsum("btkge,bske->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (e**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)  # [B, K, G, T, S]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, v)  # [B, T, K, G, E]
    return out.reshape(b, t, h, e)


def _kernel_attend(q, k, v, positions):
    from compiler import kernels

    out = jax.ShapeDtypeStruct(q.shape, jnp.float32)
    scale = q.shape[-1] ** -0.5
    return kernels.call(kernels.ATTENTION_TARGET, out, q, k, v, positions, scale=np.float32(scale))


def attn_out(params: dict, o: jax.Array) -> jax.Array:
    """o [B, T, H, E] -> [B, T, D]."""
    b, t, h, e = o.shape
    w = params["wo"]  # [H, E, D], or packed for decoding (already a 2-D product)
    w = w if isinstance(w, PackedWeight) else w.reshape(h * e, -1)
    return dense(o.reshape(b * t, h * e), w).reshape(b, t, -1)


def _project(x: jax.Array, w: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """x [B, T, D] @ w [D, H, E] (+ bias [H, E]) -> [B, T, H, E] as one 2-D matmul (XLA CPU's
    fast path)."""
    b, t, d = x.shape
    y = (x.reshape(b * t, d) @ w.reshape(d, -1)).reshape(b, t, *w.shape[1:])
    return y if bias is None else y + bias


# ----------------------------------------------------------------------------- masks


def causal_mask(positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """positions [B, T], key_positions [B, S] -> [B, T, S]: key s visible iff pos(s) <= pos(t)."""
    return key_positions[:, None, :] <= positions[:, :, None]


def cache_mask(positions: jax.Array, max_len: int) -> jax.Array:
    """positions [B, T] -> [B, T, S=max_len]: cache slot s visible iff s <= position.

    Slots beyond a row's position may hold stale K/V (rejected drafts, an older block);
    they are never read, which is what makes rollback a pure length change.
    """
    slots = jnp.arange(max_len, dtype=jnp.int32)
    return slots[None, None, :] <= positions[:, :, None]


def tandem_mask(frontier: jax.Array) -> jax.Array:
    """frontier [B, T] -> [B, T, 2T] bool, slots [projected 0..T-1 ; own 0..T-1].

    Query t (frontier f = frontier[b, t]) may read projected slot s iff s < f and own slot s
    iff f <= s <= t (docs/design.md).
    """
    frontier = jnp.asarray(frontier, jnp.int32)
    t = frontier.shape[1]
    pos = jnp.arange(t, dtype=jnp.int32)
    f = frontier[:, :, None]  # [B, T, 1]
    s = pos[None, None, :]  # [1, 1, T]
    projected = s < f  # [B, T, T]
    own = (s >= f) & (s <= pos[None, :, None])
    return jnp.concatenate([projected, own], axis=-1)


def predicting_mask(frontier: jax.Array) -> jax.Array:
    """frontier [B, T] -> [B, T, 3T] bool, slots [projected ; predicted ; own] (0..T-1 each):
    query t reads projected slot s iff s < f, predicted slot s iff f <= s < t and only its
    own slot t (memory prediction, `compiler.nn.tandem`)."""
    frontier = jnp.asarray(frontier, jnp.int32)
    t = frontier.shape[1]
    pos = jnp.arange(t, dtype=jnp.int32)
    f = frontier[:, :, None]  # [B, T, 1]
    s = pos[None, None, :]  # [1, 1, T]
    q = pos[None, :, None]  # [1, T, 1]
    projected = jnp.broadcast_to(s < f, (frontier.shape[0], t, t))
    predicted = (s >= f) & (s < q)
    own = jnp.broadcast_to(s == q, predicted.shape)
    return jnp.concatenate([projected, predicted, own], axis=-1)


# ----------------------------------------------------------------------------- cache writes


def write_rows(buf: jax.Array, new: jax.Array, start: jax.Array, keep=None) -> jax.Array:
    """Per-row cache write: buf[b, start[b] + i] = new[b, i].

    buf [B, S, K, E], new [B, T, K, E], start [B] int. `keep` [B, T] bool (optional): only
    entries with keep[b, i] are written, the others keep their old value. Writes at slots
    >= S are dropped (never clamped onto earlier slots).
    """
    b, t = new.shape[:2]
    s_max = buf.shape[1]
    slots = start[:, None].astype(jnp.int32) + jnp.arange(t, dtype=jnp.int32)  # [B, T]
    if keep is not None:
        slots = jnp.where(keep, slots, s_max)  # out of range -> dropped
    rows = jnp.arange(b, dtype=jnp.int32)[:, None]  # [B, 1]
    return buf.at[rows, slots].set(new.astype(buf.dtype), mode="drop")
