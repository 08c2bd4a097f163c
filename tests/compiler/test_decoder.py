"""One decoder for training and decoding: cached blocks equal the full teacher-forced pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_ir import VOCAB, jit, large_cfg, small_cfg

from compiler.nn import decoder_block, decoder_forward, init_cache, init_decoder
from compiler.nn.attention import write_rows

ATOL = 2e-5
forward = jit(decoder_forward, static_argnums=(1,))
block = jit(decoder_block, static_argnums=(1,))

CONFIGS = {
    "llama-gqa": large_cfg(),
    "gpt-tied": small_cfg(norm="layernorm", mlp="gelu", pos="learned", tie_embeddings=True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_decoding_with_rollback_equals_forward(name):
    """Rows at different positions, mixed block sizes, rejected garbage tokens rolled back."""
    cfg = CONFIGS[name]
    params = init_decoder(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    b, t = 2, 16
    tokens = rng.integers(0, VOCAB, size=(b, t)).astype(np.int32)
    want_logits, want_hiddens = forward(params, cfg, jnp.asarray(tokens))
    want_logits = np.asarray(want_logits)
    want_h = np.stack([np.asarray(h) for h in want_hiddens])  # [L+1, B, T, D]

    cache = init_cache(cfg, b, cfg.max_len)
    got = np.full(want_logits.shape, np.nan, np.float32)
    got_h = np.full(want_h.shape, np.nan, np.float32)
    length = np.array([0, 0])
    # prefill 3 tokens for both rows, but keep only 1 for row 0: rows now differ
    logits, hiddens, cache = block(params, cfg, cache, jnp.asarray(tokens[:, :3]), length)
    keep = np.array([1, 3])
    for r in range(b):
        got[r, : keep[r]] = np.asarray(logits[r, : keep[r]])
        got_h[:, r, : keep[r]] = np.stack([np.asarray(h[r, : keep[r]]) for h in hiddens])
    length = keep
    while (length + 3 <= t).all():
        k = 3
        keep = rng.integers(1, k + 1, size=b)
        chunk = np.stack([tokens[r, length[r] : length[r] + k] for r in range(b)])
        for r in range(b):
            chunk[r, keep[r] :] = rng.integers(0, VOCAB, size=k - keep[r])  # rejected
        logits, hiddens, cache = block(params, cfg, cache, jnp.asarray(chunk), length)
        for r in range(b):
            sl = slice(length[r], length[r] + keep[r])
            got[r, sl] = np.asarray(logits[r, : keep[r]])
            got_h[:, r, sl] = np.stack([np.asarray(h[r, : keep[r]]) for h in hiddens])
        length = length + keep  # roll back: just the length
    for r in range(b):
        n = int(length[r])
        assert n >= t - 6
        np.testing.assert_allclose(got[r, :n], want_logits[r, :n], atol=ATOL, rtol=0)
        np.testing.assert_allclose(got_h[:, r, :n], want_h[:, r, :n], atol=ATOL, rtol=0)


def test_hiddens_layout():
    cfg = CONFIGS["gpt-tied"]
    params = init_decoder(cfg, jax.random.PRNGKey(0))
    tokens = jnp.array([[3, 5, 7]])
    logits, hiddens = forward(params, cfg, tokens)
    assert logits.shape == (1, 3, VOCAB) and logits.dtype == jnp.float32
    assert len(hiddens) == cfg.n_layers + 1
    emb = params["embed"]["tokens"][tokens[0]] + params["embed"]["positions"][:3]
    np.testing.assert_allclose(np.asarray(hiddens[0][0]), np.asarray(emb), atol=1e-6)
    # causal: changing a later token leaves earlier logits alone
    logits2, _ = forward(params, cfg, tokens.at[0, 2].set(9))
    np.testing.assert_allclose(np.asarray(logits2[0, :2]), np.asarray(logits[0, :2]), atol=1e-6)
    assert np.abs(np.asarray(logits2[0, 2] - logits[0, 2])).max() > 1e-4


def test_cache_layout():
    cfg = large_cfg()
    cache = init_cache(cfg, 3, 20)
    assert len(cache) == cfg.n_layers
    for layer in cache:
        assert set(layer) == {"k", "v"}
        assert layer["k"].shape == (3, 20, cfg.n_kv_heads, cfg.head_dim) == cfg.cache_shape(3, 20)
        assert layer["k"].dtype == jnp.float32 and not np.asarray(layer["k"]).any()


def test_write_rows_drops_out_of_range_and_respects_keep():
    buf = jnp.zeros((2, 5, 1, 1))
    new = jnp.arange(1, 7, dtype=jnp.float32).reshape(2, 3, 1, 1)
    out = np.asarray(write_rows(buf, new, jnp.array([3, 1]))[..., 0, 0])
    # row 0: slots 3, 4 written, slot 5 dropped (never clamped onto 2..4)
    np.testing.assert_array_equal(out, [[0, 0, 0, 1, 2], [0, 4, 5, 6, 0]])
    keep = jnp.array([[True, False, True], [True, True, False]])
    out = np.asarray(write_rows(buf, new, jnp.array([0, 2]), keep)[..., 0, 0])
    np.testing.assert_array_equal(out, [[1, 0, 3, 0, 0], [0, 0, 4, 5, 0]])


def test_reduced_embedding_keeps_dot_products():
    from compiler.nn import reduced_embedding

    rng = np.random.default_rng(0)
    # a table with a few strong directions, like trained embeddings
    table = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 32)) * 3 + rng.normal(size=(500, 32))
    full = reduced_embedding(table, 32)
    np.testing.assert_allclose(full @ full.T, table @ table.T, atol=1e-3, rtol=1e-4)
    small = reduced_embedding(table, 8)
    assert small.shape == (500, 8)
    err = np.linalg.norm(small @ small.T - table @ table.T) / np.linalg.norm(table @ table.T)
    assert err < 0.1  # the strong directions survive
    np.testing.assert_array_equal(small, reduced_embedding(table, 8))  # deterministic signs
