"""Per-token building blocks of the decoder: norms, MLPs, RoPE, embeddings.

Every function is pure: `init_*` builds a param tree whose random leaves are `Normal`
specs (drawn by `materialize`), the matching apply function takes (params, cfg, inputs).
Letters in einsum strings and shape comments:
B batch, T tokens, S cache/key slots, D d_model, F d_ff, V vocab, H query heads,
K kv heads, G query heads per kv head, E head_dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from compiler.ir import DecoderIR
from compiler.nn.packed import PackedWeight, dense

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(cfg: DecoderIR):
    try:
        return DTYPES[cfg.dtype]
    except KeyError:
        raise ValueError(f"model {cfg.name!r}: unsupported dtype {cfg.dtype!r}") from None


@dataclass(frozen=True)
class Normal:
    """A param leaf to be drawn from N(0, std^2): init functions return trees of these
    (and concrete constants), `materialize` draws them all at once."""

    shape: tuple[int, ...]
    std: float
    dtype: Any


def normal(shape, std: float, dtype) -> Normal:
    return Normal(tuple(int(n) for n in shape), float(std), dtype)


def _is_spec(x) -> bool:
    return isinstance(x, Normal)


def materialize(tree, rng):
    """Replace every `Normal` leaf by random values from ONE draw of all of them.

    One threefry call instead of one per matrix: XLA:CPU compiles each call's unrolled
    hash separately, which made a 3-layer init take ~10 s to compile.
    """
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_spec)
    sizes = [math.prod(x.shape) for x in leaves if _is_spec(x)]
    flat = jax.random.normal(rng, (sum(sizes),), jnp.float32)
    out, offset = [], 0
    for x in leaves:
        if _is_spec(x):
            n = math.prod(x.shape)
            out.append((x.std * flat[offset : offset + n].reshape(x.shape)).astype(x.dtype))
            offset += n
        else:
            out.append(x)
    return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- norms


def init_norm(cfg: DecoderIR) -> dict:
    """rmsnorm: {"scale": [D]}; layernorm: {"scale": [D], "bias": [D]}."""
    dt = dtype_of(cfg)
    if cfg.norm == "rmsnorm":
        return {"scale": jnp.ones((cfg.d_model,), dt)}
    if cfg.norm == "layernorm":
        return {"scale": jnp.ones((cfg.d_model,), dt), "bias": jnp.zeros((cfg.d_model,), dt)}
    raise ValueError(f"model {cfg.name!r}: unknown norm {cfg.norm!r}")


def norm(params: dict, cfg: DecoderIR, x: jax.Array) -> jax.Array:
    """x [..., D] -> [..., D]; statistics in float32, result in x.dtype."""
    x32 = x.astype(jnp.float32)
    if cfg.norm == "rmsnorm":
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
        y = y * params["scale"].astype(jnp.float32)
    else:
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        y = y * params["scale"].astype(jnp.float32) + params["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


# ----------------------------------------------------------------------------- MLP


def init_mlp(cfg: DecoderIR, out_scale: float) -> dict:
    """swiglu: w_gate, w_up [D, F], w_down [F, D]; gelu: w_up [D, F], w_down [F, D]. No biases."""
    dt = dtype_of(cfg)
    d, f = cfg.d_model, cfg.d_ff
    p = {
        "w_up": normal((d, f), d**-0.5, dt),
        "w_down": normal((f, d), f**-0.5 * out_scale, dt),
    }
    if cfg.mlp == "swiglu":
        p["w_gate"] = normal((d, f), d**-0.5, dt)
    elif cfg.mlp != "gelu":
        raise ValueError(f"model {cfg.name!r}: unknown mlp {cfg.mlp!r}")
    return p


def mlp(params: dict, cfg: DecoderIR, x: jax.Array) -> jax.Array:
    """x [B, T, D] -> [B, T, D]. gelu uses the tanh approximation (GPT-2). Params packed for
    decoding carry gate|up as one weight "w_gate_up" (one kernel call instead of two)."""
    if "w_gate_up" in params:
        gate, up = jnp.split(dense(x, params["w_gate_up"]), 2, axis=-1)
        act = jax.nn.silu(gate) * up
    elif cfg.mlp == "swiglu":
        act = jax.nn.silu(dense(x, params["w_gate"])) * dense(x, params["w_up"])
    else:
        act = jax.nn.gelu(dense(x, params["w_up"]), approximate=True)
    return dense(act, params["w_down"])


# ----------------------------------------------------------------------------- RoPE


def rope(x: jax.Array, positions: jax.Array, cfg: DecoderIR) -> jax.Array:
    """Rotary embedding, "rotate half" convention (as HF Llama), at the model's frequencies
    (`DecoderIR.rope_frequencies`: rope_theta and rope_scaling).

    x [B, T, N, E] (any head count N), positions [B, T] int -> [B, T, N, E].
    """
    half = x.shape[-1] // 2
    inv_freq = jnp.asarray(cfg.rope_frequencies, jnp.float32)  # [E/2]
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq  # [B, T, E/2]
    cos = jnp.cos(angles)[:, :, None, :]  # [B, T, 1, E/2]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------- embeddings


def init_embed(cfg: DecoderIR) -> dict:
    """{"tokens": [V, D]} plus {"positions": [max_len, D]} for learned positions."""
    dt = dtype_of(cfg)
    p = {"tokens": normal((cfg.vocab, cfg.d_model), 0.02, dt)}
    if cfg.pos == "learned":
        p["positions"] = normal((cfg.max_len, cfg.d_model), 0.02, dt)
    elif cfg.pos != "rope":
        raise ValueError(f"model {cfg.name!r}: unknown pos {cfg.pos!r}")
    return p


def embed(params: dict, cfg: DecoderIR, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """tokens [B, T] int, positions [B, T] int -> residual stream [B, T, D]."""
    x = jnp.take(params["tokens"], tokens, axis=0)  # [B, T, D]
    if cfg.pos == "learned":
        x = x + jnp.take(params["positions"], positions, axis=0, mode="clip")
    return x


def init_head(cfg: DecoderIR) -> dict:
    """Untied output layer {"w": [D, V]}; tied models read embed.tokens instead."""
    return {"w": normal((cfg.d_model, cfg.vocab), cfg.d_model**-0.5, dtype_of(cfg))}


def unembed(params: dict, cfg: DecoderIR, x: jax.Array) -> jax.Array:
    """Final-normed x [B, T, D] -> logits [B, T, V] float32."""
    if "lm_head" in params:  # untied, or a tied model's head packed for decoding
        w = params["lm_head"]["w"]  # [D, V]
        if isinstance(w, PackedWeight):
            return dense(x, w)
        return jnp.einsum("btd,dv->btv", x, w, preferred_element_type=jnp.float32)
    w = params["embed"]["tokens"]  # [V, D]
    return jnp.einsum("btd,vd->btv", x, w, preferred_element_type=jnp.float32)


def cut_head(p: dict, n: int) -> dict:
    """A decoder's params with its output layer as an untied lm_head [D, n] (the first n
    rows); a head already n wide (a cut one, or one packed by `compiler.decode.backend`) is
    kept as it is."""
    w = p["lm_head"]["w"] if "lm_head" in p else None
    if w is not None and w.shape[-1] == n:
        return p
    w = w[:, :n] if w is not None else p["embed"]["tokens"][:n].T
    return {**p, "lm_head": {"w": w}}
