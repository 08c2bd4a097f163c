"""The CPU attention kernel over a KV cache: a T-token pass equals T one-token steps bit for
bit, parity with XLA's masked attention, stale slots never read, every instruction set the
same bits, and where decoding uses it."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler import kernels
from compiler.decode.backend import pack_decoder
from compiler.ir import DecoderIR
from compiler.nn import decoder_block, init_cache, init_decoder
from compiler.nn.attention import CacheRule, attend, cache_mask

KERNEL = kernels.load()
pytestmark = pytest.mark.skipif(
    os.environ.get("TANDEM_KERNEL") == "off", reason="TANDEM_KERNEL=off"
)
B, S, H, K, E = 2, 40, 6, 2, 20  # E not a multiple of the kernel's 16 lanes


@jax.jit
def kernel_attend(q, k, v, positions):
    return attend(q, k, v, CacheRule(positions), kernel=True)


@jax.jit
def xla_attend(q, k, v, positions):
    return attend(q, k, v, cache_mask(positions, k.shape[1]))


def _data(t: int, seed: int = 0, stale: float = 0.0):
    """q [B, t, H, E] and a cache [B, S, K, E] whose slots past row b's last position hold
    `stale` (what rejected drafts leave behind) when it is not 0."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, t, H, E)).astype(np.float32)
    k = rng.standard_normal((B, S, K, E)).astype(np.float32)
    v = rng.standard_normal((B, S, K, E)).astype(np.float32)
    starts = np.array([3, 15])  # a ragged batch
    positions = (starts[:, None] + np.arange(t)).astype(np.int32)
    if stale:
        for b in range(B):
            k[b, positions[b, -1] + 1 :] = stale
            v[b, positions[b, -1] + 1 :] = stale
    return tuple(map(jnp.asarray, (q, k, v, positions)))


def isas() -> list[str]:
    return list(kernels.ISAS[: kernels.ISAS.index(KERNEL.best_isa) + 1]) if KERNEL else []


@pytest.fixture
def isa(request):
    yield KERNEL.set_isa(request.param)
    KERNEL.set_isa(KERNEL.best_isa)


@pytest.mark.parametrize("isa", isas(), indirect=True)
def test_a_verify_pass_or_prefill_equals_one_token_steps_exactly(isa):
    t = 20
    q, k, v, positions = _data(t)
    jax.clear_caches()  # the isa is read when the kernel runs, not traced: fresh calls anyway
    block = np.asarray(kernel_attend(q, k, v, positions))
    for i in range(t):
        one = kernel_attend(q[:, i : i + 1], k, v, positions[:, i : i + 1])
        np.testing.assert_array_equal(block[:, i : i + 1], np.asarray(one))


def test_every_instruction_set_gives_the_same_bits():
    q, k, v, positions = _data(5, seed=1)
    outs = {}
    try:
        for name in isas():
            KERNEL.set_isa(name)
            outs[name] = np.asarray(kernel_attend(q, k, v, positions))
    finally:
        KERNEL.set_isa(KERNEL.best_isa)
    for y in outs.values():
        np.testing.assert_array_equal(y, outs["scalar"])


@pytest.mark.parametrize("t", [1, 5, 17])
def test_matches_xla_attention_and_never_reads_stale_slots(t):
    q, k, v, positions = _data(t, seed=2, stale=1e4)
    want = np.asarray(xla_attend(q, k, v, positions))
    np.testing.assert_allclose(np.asarray(kernel_attend(q, k, v, positions)), want, atol=2e-6)
    q, k, v, positions = _data(t, seed=2, stale=np.nan)  # NaN past the positions: unread
    np.testing.assert_allclose(np.asarray(kernel_attend(q, k, v, positions)), want, atol=2e-6)


def test_positions_past_the_cache_and_before_it():
    q, k, v, _ = _data(2, seed=3)
    positions = jnp.asarray([[S + 4, -1], [S - 1, 0]], jnp.int32)  # all slots; none; all; one
    got = np.asarray(kernel_attend(q, k, v, positions))
    np.testing.assert_allclose(got, np.asarray(xla_attend(q, k, v, positions)), atol=2e-6)
    np.testing.assert_allclose(got[0, 1, 0], np.asarray(v[0, :, 0].mean(0)), atol=1e-6)


def test_other_platforms_keep_xla_attention():
    q, k, v, positions = _data(3)
    lowered = kernel_attend.trace(q, k, v, positions)
    assert kernels.ATTENTION_TARGET in lowered.lower().as_text()
    cuda = lowered.lower(lowering_platforms=("cuda",)).as_text()
    assert kernels.ATTENTION_TARGET not in cuda and "dot_general" in cuda


CFG = DecoderIR(name="m", vocab=70, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                max_len=32, tie_embeddings=True)  # fmt: skip


def test_packed_decoder_attends_with_the_kernel_and_steps_stay_exact():
    """Decoding on packed params runs the attention kernel; a 5-token block's logits equal five
    one-token steps bit for bit (what makes greedy SPEED equal autoregressive decoding)."""
    packed = pack_decoder(init_decoder(CFG, jax.random.key(0)), CFG)
    step = jax.jit(decoder_block, static_argnums=1)
    toks = jnp.asarray([[5, 9, 2, 61, 7]], jnp.int32)
    start = jnp.asarray([3], jnp.int32)
    text = step.lower(packed, CFG, init_cache(CFG, 1, 32), toks, start).as_text()
    assert text.count(kernels.ATTENTION_TARGET) == CFG.n_layers
    block, _, _ = step(packed, CFG, init_cache(CFG, 1, 32), toks, start)
    cache = init_cache(CFG, 1, 32)
    for i in range(toks.shape[1]):
        one, _, cache = step(packed, CFG, cache, toks[:, i : i + 1], start + i)
        np.testing.assert_array_equal(np.asarray(block[:, i]), np.asarray(one[:, 0]))
