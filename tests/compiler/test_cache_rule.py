"""The training mask equals the inference cache rule.

Teacher-forced `tandem_forward` logits (frontier array) must equal the logits a decode loop
gets from decoder_block (M_L) + write_memory + small_block (M_S), block by block, at every
position it decodes, for the same frontier pattern.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_ir import VOCAB, large_cfg, small_cfg, tandem_variant, tandem_wiring

from compiler.ir import WiringIR
from compiler.nn import (
    decoder_block,
    decoder_forward,
    init_cache,
    init_decoder,
    init_projection,
    small_block,
    tandem_forward,
    training_frontier,
    write_memory,
)

ATOL = 2e-5

large_block = jax.jit(decoder_block, static_argnums=(1,))
small_step = jax.jit(small_block, static_argnums=(1, 2))
memory = jax.jit(write_memory, static_argnums=(2, 3))
teacher_forced = jax.jit(tandem_forward, static_argnums=(2, 3))
forward = jax.jit(decoder_forward, static_argnums=(1,))


def _init(large, small, wiring, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (
        init_decoder(large, k1),
        init_decoder(small, k2),
        init_projection(wiring.projection, wiring.wired_layers, k3),
    )


def _teacher_forced(large, small, wiring, lp, sp, pp, tokens, frontier):
    _, large_hiddens = forward(lp, large, tokens)
    return np.asarray(teacher_forced(sp, pp, small, wiring, large_hiddens, tokens, frontier))


def test_block_grid_matches_training_frontier(tandem_pair):
    """Fixed γ grid from position 0 (the training rule), batch 2, each block in one call."""
    large, small, wiring = tandem_pair
    lp, sp, pp = _init(large, small, wiring)
    b, gamma, n_blocks = 2, 3, 4
    t = gamma * n_blocks
    tokens = jax.random.randint(jax.random.PRNGKey(1), (b, t), 0, VOCAB)
    frontier = training_frontier(b, t, gamma)
    want = _teacher_forced(large, small, wiring, lp, sp, pp, tokens, frontier)

    l_cache = init_cache(large, b, large.max_len)
    s_cache = init_cache(small, b, small.max_len)
    got = np.zeros_like(want)
    for a in range(0, t, gamma):
        start = jnp.full((b,), a, jnp.int32)
        block = tokens[:, a : a + gamma]
        logits, s_cache = small_step(sp, small, wiring, s_cache, block, start)  # frontier a
        got[:, a : a + gamma] = np.asarray(logits)
        _, hiddens, l_cache = large_block(lp, large, l_cache, block, start)
        s_cache = memory(sp, pp, small, wiring, s_cache, hiddens, start, None)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["mlp-shared-bias-partial-gqa", "gpt-style-small"])
def test_speed_like_rounds_with_rollback_and_different_row_starts(variant):
    """Batch of 2 with different prompt lengths; each round M_S drafts γ tokens one at a
    time, M_L processes the γ drafts, and only a random prefix count c_r is kept. Rejected
    drafts are garbage tokens, so stale K/V in both caches must never be read."""
    large, small, wiring = tandem_variant(variant)
    lp, sp, pp = _init(large, small, wiring, seed=2)
    rng = np.random.default_rng(0)
    b, gamma, t = 2, 3, 24
    prompts = np.array([4, 7])
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (b, t), 0, VOCAB))

    l_cache = init_cache(large, b, large.max_len)
    s_cache = init_cache(small, b, small.max_len)
    frontier = np.zeros((b, t), np.int32)
    got = np.full((b, t, VOCAB), np.nan, np.float32)

    # prompt: M_S over the longest prompt with frontier 0 (row 0's extra positions are
    # redone later), then M_L over it, memory written only for each row's own prompt.
    p_max = int(prompts.max())
    zero = jnp.zeros((b,), jnp.int32)
    logits, s_cache = small_step(sp, small, wiring, s_cache, jnp.asarray(tokens[:, :p_max]), zero)
    for r in range(b):
        got[r, : prompts[r]] = np.asarray(logits[r, : prompts[r]])
    _, hiddens, l_cache = large_block(lp, large, l_cache, jnp.asarray(tokens[:, :p_max]), zero)
    s_cache = memory(sp, pp, small, wiring, s_cache, hiddens, zero, jnp.asarray(prompts))

    front = prompts.copy()
    while (front + gamma <= t).all():
        keep = rng.integers(1, gamma + 1, size=b)  # accepted prefix per row
        drafts = np.zeros((b, gamma), np.int32)
        for r in range(b):
            drafts[r] = tokens[r, front[r] : front[r] + gamma]
            drafts[r, keep[r] :] = rng.integers(0, VOCAB, size=gamma - keep[r])  # rejected
        for i in range(gamma):  # M_S drafts one token at a time
            start = jnp.asarray(front + i, jnp.int32)
            logits, s_cache = small_step(
                sp, small, wiring, s_cache, jnp.asarray(drafts[:, i : i + 1]), start
            )
            for r in range(b):
                if i < keep[r]:
                    got[r, front[r] + i] = np.asarray(logits[r, 0])
                    frontier[r, front[r] + i] = front[r]
        start = jnp.asarray(front, jnp.int32)
        _, hiddens, l_cache = large_block(lp, large, l_cache, jnp.asarray(drafts), start)
        s_cache = memory(sp, pp, small, wiring, s_cache, hiddens, start, jnp.asarray(keep))
        front = front + keep

    want = _teacher_forced(large, small, wiring, lp, sp, pp, jnp.asarray(tokens), frontier)
    assert (front >= t - 2 * gamma).all()  # most of each row was decoded and compared
    for r in range(b):
        n = int(front[r])
        np.testing.assert_allclose(got[r, :n], want[r, :n], atol=ATOL, rtol=0)


def test_frontier_matters():
    """Sanity: the check above can fail. A different frontier changes the logits."""
    large, small = large_cfg(), small_cfg()
    wiring = tandem_wiring(small, large, (2, 3))
    lp, sp, pp = _init(large, small, wiring)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 12), 0, VOCAB)
    a = _teacher_forced(large, small, wiring, lp, sp, pp, tokens, training_frontier(1, 12, 2))
    c = _teacher_forced(large, small, wiring, lp, sp, pp, tokens, training_frontier(1, 12, 3))
    # positions 0, 1 have frontier 0 in both; position 2 has 2 vs 0
    np.testing.assert_allclose(a[:, :2], c[:, :2], atol=ATOL)
    assert np.abs(a[:, 2] - c[:, 2]).max() > 1e-3


@pytest.mark.parametrize("k", [1, 3])
def test_independent_drafter_ignores_memory(k):
    """wiring.kind == "none": small_block is a plain cached decoder, write_memory a no-op."""
    small = small_cfg()
    wiring = WiringIR(kind="none", query="small", memory=None, layer_map=(None, None),
                      projection=None)  # fmt: skip
    sp = init_decoder(small, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, VOCAB)
    want = np.asarray(forward(sp, small, tokens)[0])
    frontier = jnp.zeros((2, 6), jnp.int32)
    got = teacher_forced(sp, None, small, wiring, [], tokens, frontier)
    np.testing.assert_allclose(np.asarray(got), want, atol=ATOL)
    cache = init_cache(small, 2, 16)
    got = []
    for a in range(0, 6, k):
        start = jnp.full((2,), a, jnp.int32)
        logits, cache = small_step(sp, small, wiring, cache, tokens[:, a : a + k], start)
        fake = [jnp.ones((2, k, 48))] * 4
        same = write_memory(sp, None, small, wiring, cache, fake, start, None)
        assert same is cache
        got.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=ATOL)
