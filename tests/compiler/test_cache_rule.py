"""The training mask equals the inference cache rule.

Teacher-forced `tandem_forward` logits (frontier array) must equal the logits a decode loop
gets from decoder_block (M_L) + write_memory + small_block (M_S), block by block, at every
position it decodes, for the same frontier pattern.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tiny_ir import VOCAB, jit, replace, small_cfg, tandem_variant

from compiler.ir import WiringIR
from compiler.nn import (
    decoder_block,
    decoder_forward,
    init_cache,
    init_decoder,
    init_projection,
    init_small_cache,
    small_block,
    tandem_forward,
    training_frontier,
    write_memory,
)

ATOL = 2e-5

large_block = jit(decoder_block, static_argnums=(1,))
_small_block = jit(small_block, static_argnums=(1, 2))


def small_step(sp, small, wiring, cache, tokens, start, pp=None):
    return _small_block(sp, small, wiring, cache, tokens, start, pp)


memory = jit(write_memory, static_argnums=(2, 3))
teacher_forced = jit(tandem_forward, static_argnums=(2, 3))
forward = jit(decoder_forward, static_argnums=(1,))


def _init(large, small, wiring, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    fuse, predict = wiring.fuse is not None, wiring.predict is not None
    proj = init_projection(wiring.projection, wiring.wired_layers, k3, "float32", fuse, predict)
    if fuse:  # its gain starts at zero; a random one makes the feature input count
        proj["fuse"]["gain"] = jax.random.normal(k4, proj["fuse"]["gain"].shape)
    return init_decoder(large, k1), init_decoder(small, k2), proj


def _teacher_forced(large, small, wiring, lp, sp, pp, tokens, frontier):
    _, large_hiddens = forward(lp, large, tokens)
    return np.asarray(teacher_forced(sp, pp, small, wiring, large_hiddens, tokens, frontier))


B, GAMMA, T = 2, 3, 21


def decode(large, small, wiring, lp, sp, pp, tokens, prompts, accept):
    """The decode-time loop: M_S one token at a time, M_L one block of γ per round.

    Prompt: M_S steps over positions 0..γ-1 with frontier 0, then M_L processes them and
    memory is written for each row's prompt only (prompts[r] <= γ). Each round, M_S drafts
    γ tokens from the row's frontier; only the first accept() are the true tokens, the rest
    are garbage (rejected drafts); M_L processes all γ and memory keeps the accepted prefix.
    Rows that reach T keep going on garbage until every row has.
    Returns (logits [B, T, V] at every position, the frontier each was decoded at [B, T]).
    """
    rng = np.random.default_rng(0)
    l_cache = init_cache(large, B, large.max_len)
    s_cache = init_small_cache(small, wiring, B, small.max_len)
    got = np.full((B, T, VOCAB), np.nan, np.float32)
    frontier = np.full((B, T), -1, np.int32)
    padded = np.concatenate([tokens, rng.integers(0, VOCAB, size=(B, 2 * GAMMA))], axis=1)
    front = np.zeros(B, np.int64)
    keep = np.asarray(prompts)
    drafts = padded[:, :GAMMA].copy()
    while (front < T).any():
        for i in range(GAMMA):
            start = jnp.asarray(front + i, jnp.int32)
            logits, s_cache = small_step(
                sp, small, wiring, s_cache, jnp.asarray(drafts[:, i : i + 1]), start, pp
            )
            for r in range(B):
                if i < keep[r] and front[r] + i < T:
                    got[r, front[r] + i] = np.asarray(logits[r, 0])
                    frontier[r, front[r] + i] = front[r]
        start = jnp.asarray(front, jnp.int32)
        _, hiddens, l_cache = large_block(lp, large, l_cache, jnp.asarray(drafts), start)
        s_cache = memory(sp, pp, small, wiring, s_cache, hiddens, start, jnp.asarray(keep))
        front = front + keep
        keep = np.array([accept() for _ in range(B)])
        for r in range(B):
            drafts[r] = padded[r, front[r] : front[r] + GAMMA]
            drafts[r, keep[r] :] = rng.integers(0, VOCAB, size=GAMMA - keep[r])  # rejected
    assert (frontier >= 0).all()  # every position was decoded
    return got, frontier


def _tokens():
    return np.asarray(jax.random.randint(jax.random.PRNGKey(3), (B, T), 0, VOCAB), np.int32)


def test_block_grid_matches_training_frontier(tandem_pair):
    """Blocks of γ from position 0 (the training rule f(t) = floor(t/γ)*γ), batch 2."""
    large, small, wiring = tandem_pair
    lp, sp, pp = _init(large, small, wiring)
    tokens = _tokens()
    got, frontier = decode(large, small, wiring, lp, sp, pp, tokens, [GAMMA] * B, lambda: GAMMA)
    want_frontier = training_frontier(B, T, GAMMA)
    np.testing.assert_array_equal(frontier, np.asarray(want_frontier))
    want = _teacher_forced(large, small, wiring, lp, sp, pp, tokens, want_frontier)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_speed_like_rounds_with_rollback_and_different_row_starts(tandem_pair):
    """Batch of 2 with different prompt lengths and a random accepted prefix per row and
    round. Rejected drafts are garbage tokens, so stale K/V in both caches (M_L's rejected
    positions, M_S's own K/V of rejected drafts) must never be read."""
    large, small, wiring = tandem_pair
    lp, sp, pp = _init(large, small, wiring, seed=2)
    rng = np.random.default_rng(1)
    tokens = _tokens()
    got, frontier = decode(
        large, small, wiring, lp, sp, pp, tokens, [1, GAMMA],
        lambda: int(rng.integers(1, GAMMA + 1)),
    )  # fmt: skip
    assert (frontier[0] != frontier[1]).any()  # the rows really are at different positions
    assert not (frontier == np.asarray(training_frontier(B, T, GAMMA))).all()
    want = _teacher_forced(large, small, wiring, lp, sp, pp, tokens, frontier)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_frontier_matters():
    """Sanity: the checks above can fail. A different frontier changes the logits."""
    large, small, wiring = tandem_variant("linear-all-wired")
    lp, sp, pp = _init(large, small, wiring)
    tokens = _tokens()
    a = _teacher_forced(large, small, wiring, lp, sp, pp, tokens, training_frontier(B, T, 2))
    c = _teacher_forced(large, small, wiring, lp, sp, pp, tokens, training_frontier(B, T, 3))
    # positions 0, 1 have frontier 0 in both; position 2 has 2 vs 0
    np.testing.assert_allclose(a[:, :2], c[:, :2], atol=ATOL)
    assert np.abs(a[:, 2] - c[:, 2]).max() > 1e-3


def test_independent_drafter_ignores_memory():
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
    for a in range(6):
        start = jnp.full((2,), a, jnp.int32)
        logits, cache = small_step(sp, small, wiring, cache, tokens[:, a : a + 1], start)
        fake = [jnp.ones((2, 1, 48))] * 4
        same = write_memory(sp, None, small, wiring, cache, fake, start, None)
        assert same is cache
        got.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=ATOL)


def test_memory_prediction_is_read_past_the_frontier_and_needs_every_pass():
    """Sanity for the predicted-memory variant: at a frontier (distance 0) the logits are the
    plain Tandem model's, past it they differ; with one training pass too few, the logits at
    the deepest distance change (the equality above needs every pass)."""
    large, small, wiring = tandem_variant("predicted-memory-gqa")
    lp, sp, pp = _init(large, small, wiring)
    tokens = _tokens()
    frontier = training_frontier(B, T, GAMMA)
    distance = np.asarray(jnp.arange(T)[None, :] - frontier)
    full = _teacher_forced(large, small, wiring, lp, sp, pp, tokens, frontier)
    plain = replace(wiring, predict=None)
    own = _teacher_forced(large, small, plain, lp, sp, pp, tokens, frontier)
    np.testing.assert_allclose(full[distance == 0], own[distance == 0], atol=ATOL)
    assert np.abs(full[distance > 0] - own[distance > 0]).max() > 1e-3
    _, hiddens = forward(lp, large, tokens)
    shallow = jit(tandem_forward, static_argnums=(2, 3, 8))  # depth 2: one pass too few
    short = np.asarray(shallow(sp, pp, small, wiring, hiddens, tokens, frontier, None, 2))
    np.testing.assert_allclose(short[distance < 2], full[distance < 2], atol=ATOL)
    assert np.abs(short[distance == 2] - full[distance == 2]).max() > 1e-3
