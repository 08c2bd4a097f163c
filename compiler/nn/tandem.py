"""The Tandem small model M_S: teacher-forced training pass and the decode-time cache rule.

docs/design.md. Small layer j with a source l(j) = wiring.layer_map[j] reads
P_j(large hiddens[l(j)]). A projected vector is treated as an M_S residual vector: layer j
applies its own attn_norm, W_K, W_V and RoPE at the token's own position to it.

Training (`tandem_forward`): attention over 2T slots [projected 0..T-1 ; own 0..T-1];
query t sees projected slot s iff s < f(t) and own slot s iff f(t) <= s <= t.

Decoding: one cache per small layer (`init_cache(small_cfg, ...)`). `write_memory` puts
projected-M_L K/V at the positions M_L just processed; `small_block` writes M_S's own K/V
at the positions it processes and attends to slots s <= p. So slots below the frontier hold
projected K/V and slots from the frontier on hold M_S's own, which is exactly the training
mask: `tests/compiler/test_cache_rule.py` checks that the two agree.

Memory prediction (wiring.predict, as EAGLE predicts the target's features): past the
frontier a wired layer reads, at every earlier slot, a memory vector M_S predicted from its
own last state at that slot (`predicted_memory`), and its own K/V only at the query's slot.
Decoding writes the prediction over a slot's own K/V once M_S has processed it; training
attends over [projected ; predicted ; own], with predictions from the pass before, which is
exact at every distance from the frontier after `block_max` passes (`tandem_forward`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from compiler.ir import DecoderIR, ScaleIR, WiringIR
from compiler.nn.attention import (
    Causal,
    causal_mask,
    keys_values,
    predicting_mask,
    tandem_mask,
    write_rows,
)
from compiler.nn.decoder import (
    decoder_block,
    decoder_forward,
    default_positions,
    init_cache,
    logits_of,
    run_layers,
)
from compiler.nn.layers import dtype_of, embed, norm
from compiler.nn.projection import fused_input, project


def training_frontier(
    batch: int,
    seq_len: int,
    block: int,
    block_max: int | None = None,
    random_offset: bool = False,
    rng=None,
) -> jax.Array:
    """The training frontier f [B, T] int32: how many leading positions M_L has processed.

    Fixed: f(t) = floor(t / γ) * γ with γ = block. With block_max > block, γ is drawn per
    sequence uniformly from [block, block_max]; with random_offset, a grid offset o is
    drawn per sequence from [0, γ) and f(t) = max(floor((t - o) / γ) * γ + o, 0).
    Always 0 <= f(t) <= t, so a query never sees M_L's rep of its own position.
    """
    if block < 1:
        raise ValueError(f"training block length must be >= 1, got {block}")
    block_max = block if block_max is None else block_max
    if block_max < block:
        raise ValueError(f"block_max {block_max} < block {block}")
    sampled = block_max > block
    if (sampled or random_offset) and rng is None:
        raise ValueError("a sampled block length or random offset needs an rng")
    if sampled:
        k_gamma, rng = jax.random.split(rng)
        gamma = jax.random.randint(k_gamma, (batch, 1), block, block_max + 1, jnp.int32)
    else:
        gamma = jnp.full((batch, 1), block, jnp.int32)
    if random_offset:
        offset = jax.random.randint(rng, (batch, 1), 0, jnp.iinfo(jnp.int32).max) % gamma
    else:
        offset = jnp.zeros((batch, 1), jnp.int32)
    return frontier_grid(seq_len, gamma, offset)


def frontier_grid(seq_len: int, gamma, offset) -> jax.Array:
    """f(t) = max(floor((t - o) / γ) * γ + o, 0) for t < seq_len: blocks of γ tokens whose
    first position is o mod γ. gamma, offset: ints or [B, 1] int arrays -> [B or 1, T] int32.
    A decode round that starts at frontier f sees, at positions f .. f + γ - 1, exactly
    what this grid with offset f mod γ gives them."""
    t = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
    f = jnp.floor_divide(t - offset, gamma) * gamma + offset  # floor, also for t < o
    return jnp.maximum(f, 0).astype(jnp.int32)


def _projected_kv(small_params, proj_params, small_cfg, wiring, layer, large_hidden, positions):
    """P_j(large rep) -> layer j's k, v [B, T, K, E] (own norm, W_K, W_V, RoPE at positions)."""
    m = project(proj_params, wiring.projection, layer, large_hidden)  # [B, T, D_S]
    return _memory_kv(small_params, small_cfg, layer, m, positions)


def _memory_kv(small_params, small_cfg, layer, m, positions):
    """A memory vector m [B, T, D_S] -> layer j's k, v [B, T, K, E]."""
    p = small_params[f"layers_{layer}"]
    m = m.astype(p["attn_norm"]["scale"].dtype)
    return keys_values(p["attn"], small_cfg, norm(p["attn_norm"], small_cfg, m), positions)


def predicted_memory(small_params, proj_params, small_cfg, layer, last_hidden) -> jax.Array:
    """M_S's guess of wired layer j's memory vector at its own positions: a linear map of its
    last hidden state (after the final norm, as the output layer reads it). [B, T, D_S]."""
    w = proj_params["predict"][f"layers_{layer}"]["w"]
    y = norm(small_params["final_norm"], small_cfg, last_hidden)
    return jnp.einsum("btd,de->bte", y.astype(w.dtype), w)


def _unit_rms(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def prediction_loss(small_params, proj_params, small_cfg, wiring, large_hiddens, last_hidden):
    """Mean squared distance between the predicted and the projected memory vectors, both
    RMS-normalized (the layer norms them before reading; only the direction counts), over
    every position and wired layer. The projected target is a constant here: the projection
    learns from the token loss only, so the two cannot meet by shrinking together."""
    total = 0.0
    for layer in wiring.wired_layers:
        src = wiring.layer_map[layer]
        target = project(proj_params, wiring.projection, layer, large_hiddens[src])
        guess = predicted_memory(small_params, proj_params, small_cfg, layer, last_hidden)
        diff = _unit_rms(guess) - jax.lax.stop_gradient(_unit_rms(target))
        total = total + jnp.mean(diff * diff)
    return total / len(wiring.wired_layers)


def _last_memory_feature(proj_params, large_hidden, frontier) -> jax.Array:
    """Query t's feature input: the fused M_L state of position f(t) - 1, the last one M_L
    has processed (zeros while f(t) = 0). large_hidden [B, T, D_L] -> [B, T, D_S]."""
    feature = fused_input(proj_params, large_hidden)
    last = jnp.asarray(frontier, jnp.int32) - 1  # [B, T]
    rows = jnp.take_along_axis(feature, jnp.maximum(last, 0)[..., None], axis=1)
    return jnp.where(last[..., None] >= 0, rows, 0).astype(feature.dtype)


def tandem_forward(*args, **kwargs) -> jax.Array:
    """`tandem_forward_and_prediction`'s logits alone."""
    return tandem_forward_and_prediction(*args, **kwargs)[0]


def tandem_forward_and_prediction(
    small_params: dict,
    proj_params: dict | None,
    small_cfg: DecoderIR,
    wiring: WiringIR,
    large_hiddens: list[jax.Array],
    tokens: jax.Array,
    frontier: jax.Array,
    scale: ScaleIR | None = None,
    depth: int | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Teacher-forced Tandem M_S. tokens [B, T], frontier [B, T] -> (logits [B, T, V] f32,
    the `prediction_loss` with memory prediction, else None).

    large_hiddens: M_L's hiddens from `decoder_forward` over the same tokens (n_layers_L + 1
    of [B, T, D_L]); the caller applies stop_gradient when M_L is frozen. Unwired layers are
    ordinary causal layers; wiring.kind == "none" is a plain causal pass. `scale` as for
    `run_layers`, but the layers stay unrolled (each reads its own large-model layer).
    depth (memory prediction only): the most positions any query lies past its frontier,
    plus one (the block length; default wiring.block_max).
    """
    if wiring.kind == "none":
        return decoder_forward(small_params, small_cfg, tokens, scale=scale)[0], None
    if scale is not None:
        scale = dataclasses.replace(scale, scan_layers=False)
    positions = default_positions(tokens)  # [B, T]
    x = embed(small_params["embed"], small_cfg, tokens, positions)
    if wiring.fuse is not None:
        x = x + _last_memory_feature(proj_params, large_hiddens[wiring.fuse], frontier)
    fused = scale is not None and scale.attention == "fused"
    causal = Causal() if fused else causal_mask(positions, positions)  # unwired layers

    def run(sp, pp, predicted):
        """M_S's hiddens; predicted: {layer: memory vectors [B, T, D_S]} past the frontier, or
        None for its own K/V there."""
        mask = tandem_mask(frontier) if predicted is None else predicting_mask(frontier)

        def tandem_context(layer, p, k, v):
            src = wiring.layer_map[layer]
            if src is None:
                return k, v, causal
            parts = [_projected_kv(sp, pp, small_cfg, wiring, layer, large_hiddens[src], positions)]
            if predicted is not None:
                parts.append(_memory_kv(sp, small_cfg, layer, predicted[layer], positions))
            parts.append((k, v))
            keys = jnp.concatenate([kv[0] for kv in parts], axis=1)  # [B, 2T or 3T, K, E]
            values = jnp.concatenate([kv[1] for kv in parts], axis=1)
            return keys, values, mask

        return run_layers(sp, small_cfg, x, positions, tandem_context, scale)

    def predictions(sp, pp, last_hidden):
        return {j: predicted_memory(sp, pp, small_cfg, j, last_hidden) for j in wiring.wired_layers}

    predicted = None
    if wiring.predict is not None:
        depth = wiring.block_max if depth is None else depth
        # pass k (no gradients) is exact up to k positions past the frontier
        frozen = jax.lax.stop_gradient((small_params, proj_params))
        last = None
        for _ in range(depth - 1):
            last = run(*frozen, last if last is None else predictions(*frozen, last))[-1]
        if last is not None:
            predicted = predictions(small_params, proj_params, jax.lax.stop_gradient(last))
    hiddens = run(small_params, proj_params, predicted)
    logits = logits_of(small_params, small_cfg, hiddens[-1])
    if wiring.predict is None:
        return logits, None
    loss = prediction_loss(small_params, proj_params, small_cfg, wiring, large_hiddens, hiddens[-1])
    return logits, loss


def small_block(
    small_params: dict,
    small_cfg: DecoderIR,
    wiring: WiringIR | None,
    cache: list[dict],
    tokens: jax.Array,
    start: jax.Array,
    proj_params: dict | None = None,
) -> tuple[jax.Array, list[dict]]:
    """Decode-time M_S over tokens [B, K] at positions start[b] + i -> (logits, new_cache).

    Writes M_S's own K/V at [start, start + K) in every layer, then attends to slots s <= p
    of its single per-layer cache: below the frontier those hold projected M_L K/V (put
    there by `write_memory`), from the frontier on its own. With a feature input (wiring.fuse)
    every token also adds the fused M_L state that `write_memory` left in the cache. With
    memory prediction (wiring.predict, proj_params needed) the wired layers' slots of these
    tokens then get the K/V of M_S's predicted memory in place of its own, which is what the
    next tokens read there (one token per call, as drafting runs it).
    """
    extra = None
    if wiring is not None and wiring.fuse is not None:
        extra = cache[small_cfg.n_layers]["fuse"]
    logits, hiddens, new_cache = decoder_block(small_params, small_cfg, cache, tokens, start, extra)
    if wiring is not None and wiring.predict is not None:
        start = jnp.asarray(start, jnp.int32)
        positions = start[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)
        for layer in wiring.wired_layers:
            m = predicted_memory(small_params, proj_params, small_cfg, layer, hiddens[-1])
            km, vm = _memory_kv(small_params, small_cfg, layer, m, positions)
            new_cache[layer] = {
                "k": write_rows(new_cache[layer]["k"], km, start),
                "v": write_rows(new_cache[layer]["v"], vm, start),
            }
    return logits, new_cache


def init_small_cache(cfg: DecoderIR, wiring: WiringIR | None, batch: int, max_len: int):
    """M_S's decode cache: `init_cache`'s per-layer K/V, and with a feature input
    (wiring.fuse) one more entry {"fuse": [B, D_S]}, zeros until M_L has processed a token."""
    cache = init_cache(cfg, batch, max_len)
    if wiring is None or wiring.fuse is None:
        return cache
    return [*cache, {"fuse": jnp.zeros((batch, cfg.d_model), dtype_of(cfg))}]


def write_memory(
    small_params: dict,
    proj_params: dict | None,
    small_cfg: DecoderIR,
    wiring: WiringIR | None,
    small_cache: list[dict],
    large_hiddens: list[jax.Array],
    start: jax.Array,
    count: jax.Array | None = None,
) -> list[dict]:
    """The cache rule: M_L processed positions [start, start + K); overwrite M_S's wired
    layers' cache entries there with K/V of P_j(large_hiddens[l(j)]).

    large_hiddens: from `decoder_block` over those K tokens (n_layers_L + 1 of [B, K, D_L]).
    count [B] (optional): only the first count[b] entries of row b are written; entries
    i >= count[b] (e.g. rejected drafts) keep their old content, which is never read before
    M_S overwrites it with its own K/V. Writes at slots >= max_len are dropped. Unwired
    layers are untouched; wiring.kind == "none" returns the cache unchanged.
    """
    if wiring is None or wiring.kind == "none":
        return small_cache
    b, k_new = large_hiddens[0].shape[:2]
    start = jnp.asarray(start, jnp.int32)
    positions = start[:, None] + jnp.arange(k_new, dtype=jnp.int32)  # [B, K]
    keep = None
    if count is not None:
        keep = jnp.arange(k_new, dtype=jnp.int32)[None, :] < jnp.asarray(count)[:, None]
    new_cache = list(small_cache)
    if wiring.fuse is not None:  # the last written position's state: the new frontier's f - 1
        n = small_cfg.n_layers
        last = jnp.full((b,), k_new, jnp.int32) if count is None else jnp.asarray(count, jnp.int32)
        state = large_hiddens[wiring.fuse]  # [B, K, D_L]: map only the row that is kept
        state = jnp.take_along_axis(state, jnp.maximum(last - 1, 0)[:, None, None], axis=1)
        row = fused_input(proj_params, state)[:, 0]
        old = small_cache[n]["fuse"]
        new_cache[n] = {"fuse": jnp.where(last[:, None] > 0, row.astype(old.dtype), old)}
    for layer in wiring.wired_layers:
        src = wiring.layer_map[layer]
        km, vm = _projected_kv(
            small_params, proj_params, small_cfg, wiring, layer, large_hiddens[src], positions
        )
        new_cache[layer] = {
            "k": write_rows(small_cache[layer]["k"], km, start, keep),
            "v": write_rows(small_cache[layer]["v"], vm, start, keep),
        }
    return new_cache
