"""The decoder: one implementation for training (full sequence) and decoding (KV cache).

Params (stable names, e.g. params["layers_3"]["attn"]["wq"]):

  embed:      tokens [V, D], positions [max_len, D] (learned positions only)
  layers_<l>: attn_norm {scale[, bias]}, attn {wq, wk, wv, wo[, bq, bk, bv]}, mlp_norm {...},
              mlp {w_gate, w_up, w_down} (swiglu) | {w_up, w_down} (gelu)
  final_norm: {scale[, bias]}
  lm_head:    w [D, V] (untied only; tied models use embed.tokens)

Layers are unrolled in Python (lax.scan over stacked layers is 2.8x slower to decode on
CPU) and each layer has its own cache buffer; a training forward may scan them instead, and
recompute them in the backward pass (`ScaleIR`, train[i].scale). The three ways of running
the stack differ only in where a layer's keys and values come from, which `run_layers` takes
as a callback: plain causal self-attention (`decoder_forward`), a KV cache (`decoder_block`), or the
Tandem [projected ; own] context (`compiler.nn.tandem`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from compiler.ir import DecoderIR, ScaleIR
from compiler.nn.attention import (
    CacheRule,
    Causal,
    attend,
    attn_out,
    causal_mask,
    init_attn,
    queries_keys_values,
    write_rows,
)
from compiler.nn.layers import (
    dtype_of,
    embed,
    init_embed,
    init_head,
    init_mlp,
    init_norm,
    materialize,
    mlp,
    norm,
    unembed,
)
from compiler.nn.packed import is_packed

# context(l, layer_params, k, v) -> (keys [B, S, K, E], values [B, S, K, E], mask [B, T, S]
# or a CacheRule) given the new tokens' own k, v [B, T, K, E] for layer l.
Context = Callable[[int, dict, jax.Array, jax.Array], tuple[jax.Array, jax.Array, object]]

# scale.remat -> what a layer keeps for the backward pass (None: only its inputs)
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def init_decoder(cfg: DecoderIR, rng) -> dict:
    """Random decoder params: one N(0, 1) draw shared out to every matrix."""
    # the name and trainability do not change the tree: same-shaped models share a compile
    return _init_decoder(
        dataclasses.replace(cfg, name="", trainable=True, embed_trainable=True), rng
    )


@partial(jax.jit, static_argnums=0)
def _init_decoder(cfg: DecoderIR, rng) -> dict:
    return materialize(decoder_spec(cfg), rng)


def decoder_spec(cfg: DecoderIR) -> dict:
    """The param tree with `Normal` specs as random leaves (no randomness drawn yet)."""
    out_scale = (2 * cfg.n_layers) ** -0.5  # residual-branch outputs scaled down at init
    params = {"embed": init_embed(cfg)}
    for layer in range(cfg.n_layers):
        params[f"layers_{layer}"] = {
            "attn_norm": init_norm(cfg),
            "attn": init_attn(cfg, out_scale),
            "mlp_norm": init_norm(cfg),
            "mlp": init_mlp(cfg, out_scale),
        }
    params["final_norm"] = init_norm(cfg)
    if not cfg.tie_embeddings:
        params["lm_head"] = init_head(cfg)
    return params


def init_cache(cfg: DecoderIR, batch: int, max_len: int) -> list[dict]:
    """One {"k", "v"} pair of zeros [B, max_len, K, E] per layer, in the model dtype."""
    shape = cfg.cache_shape(batch, max_len)
    dt = dtype_of(cfg)
    return [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.n_layers)]


def run_layers(
    params: dict,
    cfg: DecoderIR,
    x: jax.Array,
    positions: jax.Array,
    context: Context,
    scale: ScaleIR | None = None,
) -> list[jax.Array]:
    """x [B, T, D] at positions [B, T] through every layer -> hiddens, n_layers + 1 of [B, T, D].

    hiddens[0] = x, hiddens[l] = residual stream after layer l (before the final norm).
    `scale` (training only): remat recomputes each layer in the backward pass; scan_layers
    runs one lax.scan over the stacked layer weights, for a context that ignores the layer
    index (it gets None).
    """
    scale = scale or ScaleIR()

    def layer(p: dict, x: jax.Array, index: int | None) -> jax.Array:
        h = norm(p["attn_norm"], cfg, x)
        q, k, v = queries_keys_values(p["attn"], cfg, h, positions)  # [B, T, H|K, E]
        keys, values, mask = context(index, p, k, v)
        o = attend(q, keys, values, mask, kernel=is_packed(p["attn"]))
        x = x + attn_out(p["attn"], o)
        return x + mlp(p["mlp"], cfg, norm(p["mlp_norm"], cfg, x))

    if scale.remat != "none":
        layer = jax.checkpoint(layer, policy=REMAT_POLICIES[scale.remat], static_argnums=(2,))
    layers = [params[f"layers_{i}"] for i in range(cfg.n_layers)]
    if scale.scan_layers:
        # a transient stacked copy of the layer weights; its gradient is unstacked again
        stacked = jax.tree.map(lambda *w: jnp.stack(w), *layers)
        _, xs = jax.lax.scan(lambda x, p: (layer(p, x, None),) * 2, x, stacked)
        return [x, *xs]
    hiddens = [x]
    for index, p in enumerate(layers):
        x = layer(p, x, index)
        hiddens.append(x)
    return hiddens


def logits_of(params: dict, cfg: DecoderIR, x: jax.Array) -> jax.Array:
    """Last residual x [B, T, D] -> logits [B, T, V] float32."""
    return unembed(params, cfg, norm(params["final_norm"], cfg, x))


def default_positions(tokens: jax.Array) -> jax.Array:
    b, t = tokens.shape
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


def decoder_forward(
    params: dict,
    cfg: DecoderIR,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    scale: ScaleIR | None = None,
) -> tuple[jax.Array, list[jax.Array]]:
    """Teacher-forced causal pass. tokens [B, T] -> (logits [B, T, V] f32, hiddens).

    positions [B, T] default to 0..T-1; causality is by position, so any increasing
    positions work. `scale`: how a training forward runs (`run_layers`); its fused attention
    serves the default positions.
    """
    fused = positions is None and scale is not None and scale.attention == "fused"
    if positions is None:
        positions = default_positions(tokens)
    x = embed(params["embed"], cfg, tokens, positions)
    mask = Causal() if fused else causal_mask(positions, positions)  # [B, T, T]

    def self_context(layer, p, k, v):
        return k, v, mask

    hiddens = run_layers(params, cfg, x, positions, self_context, scale)
    return logits_of(params, cfg, hiddens[-1]), hiddens


def decoder_block(
    params: dict,
    cfg: DecoderIR,
    cache: list[dict],
    tokens: jax.Array,
    start: jax.Array,
    extra_input: jax.Array | None = None,
) -> tuple[jax.Array, list[jax.Array], list[dict]]:
    """K new tokens per row through the model with a KV cache.

    tokens [B, K] sit at positions start[b] + i. Their K/V are written into each layer's
    cache at those slots (writes at slots >= max_len are dropped), then each query at
    position p attends to cache slots s <= p. Slots beyond p are ignored whatever they hold,
    so rolling a row back is just moving its length back. extra_input [B, D] (optional) is
    added to every token's input vector (a Tandem M_S's feature input).
    Returns (logits [B, K, V] f32, hiddens n_layers + 1 of [B, K, D], new_cache).
    """
    b, k_new = tokens.shape
    start = jnp.asarray(start, jnp.int32)
    positions = start[:, None] + jnp.arange(k_new, dtype=jnp.int32)  # [B, K]
    x = embed(params["embed"], cfg, tokens, positions)
    if extra_input is not None:
        x = x + extra_input[:, None, :].astype(x.dtype)
    mask = CacheRule(positions)  # slot s visible iff s <= position
    new_cache = list(cache)

    def cache_context(layer, p, k, v):
        entry = {
            "k": write_rows(cache[layer]["k"], k, start),
            "v": write_rows(cache[layer]["v"], v, start),
        }
        new_cache[layer] = entry
        return entry["k"], entry["v"], mask

    hiddens = run_layers(params, cfg, x, positions, cache_context)
    return logits_of(params, cfg, hiddens[-1]), hiddens, new_cache
