"""The packed CPU mat-mul kernel: exact row independence, parity with XLA's dot, every
instruction-set path, per-platform lowering, packing the decode params, and the fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler import kernels
from compiler.decode.backend import choose, pack_decoder
from compiler.ir import DecoderIR
from compiler.nn import decoder_block, init_cache, init_decoder
from compiler.nn.packed import PackedWeight, dense, pack

KERNEL = kernels.load()
# g++ is on every machine of ours: a kernel that does not build fails here, unless turned off
pytestmark = pytest.mark.skipif(
    os.environ.get("TANDEM_KERNEL") == "off", reason="TANDEM_KERNEL=off"
)
ROOT = Path(__file__).resolve().parents[2]
# in not a multiple of anything; out with a partial last panel, one panel, a partial group
SHAPES = [(100, 200), (576, 16), (33, 70)]
dense_jit = jax.jit(dense)


def isas() -> list[str]:
    """Every instruction set this CPU can run, up to the best."""
    return list(kernels.ISAS[: kernels.ISAS.index(KERNEL.best_isa) + 1]) if KERNEL else []


def test_the_kernel_builds_here():
    assert KERNEL is not None, "the CPU kernel did not build: see the warning line above"
    assert KERNEL.path.exists() and KERNEL.isa == KERNEL.best_isa


@pytest.fixture
def isa(request):
    yield KERNEL.set_isa(request.param)
    KERNEL.set_isa(KERNEL.best_isa)


def _data(d_in, d_out, rows, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    x = rng.standard_normal((rows, d_in)).astype(np.float32)
    return jnp.asarray(w), jnp.asarray(x)


@pytest.mark.parametrize("isa", isas(), indirect=True)
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_k_rows_equal_k_one_row_calls_exactly(isa, d_in, d_out):
    rows = 30  # a verify block, or a prefill: every register tile shape and remainders
    w, x = _data(d_in, d_out, rows)
    pw = pack(w)
    ones = np.concatenate([np.asarray(dense_jit(x[i : i + 1], pw)) for i in range(rows)])
    for k in (2, 5, 7, 9, 13, 16, 25, rows):
        np.testing.assert_array_equal(np.asarray(dense_jit(x[:k], pw)), ones[:k])
    np.testing.assert_allclose(ones, np.asarray(x @ w), rtol=1e-5, atol=1e-4 * np.sqrt(d_in))


@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_every_instruction_set_gives_the_same_bits(d_in, d_out):
    """One fused multiply-add chain per output on every path: a machine without AVX-512
    computes exactly what one with it does."""
    w, x = _data(d_in, d_out, 6, seed=1)
    pw = pack(w)
    outs = {}
    try:
        for name in isas():
            KERNEL.set_isa(name)
            outs[name] = np.asarray(jax.jit(dense)(x, pw))  # a fresh trace: runs the kernel now
    finally:
        KERNEL.set_isa(KERNEL.best_isa)
    for y in outs.values():
        np.testing.assert_array_equal(y, outs["scalar"])


def test_isa_never_goes_above_the_cpu():
    try:
        assert KERNEL.set_isa("avx512") == KERNEL.best_isa
        assert KERNEL.set_isa("scalar") == "scalar"
    finally:
        KERNEL.set_isa(KERNEL.best_isa)


def unpack(w: PackedWeight) -> np.ndarray:
    """The weight back in its logical shape from the panels."""
    flat = np.asarray(w.panels).transpose(1, 0, 2).reshape(w.d_in, -1)[:, : w.d_out]
    return flat.reshape(w.shape)


def test_pack_roundtrip_and_logical_shapes():
    w = jnp.arange(5 * 3 * 7, dtype=jnp.float32).reshape(5, 3, 7)  # wq-like [D, H, E]
    pw = pack(w)
    assert (pw.d_in, pw.d_out, pw.panels.shape) == (5, 21, (2, 5, 16))
    np.testing.assert_array_equal(unpack(pw), w)
    wo = pack(w, n_in_dims=2)  # wo-like [H, E, D]
    assert (wo.d_in, wo.d_out) == (15, 7)
    with pytest.raises(ValueError, match="float32"):
        pack(w.astype(jnp.bfloat16))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_other_platforms_lower_to_plain_dots(platform):
    w, x = _data(64, 40, 3)
    pw = pack(w)
    text = jax.jit(dense).trace(x, pw).lower(lowering_platforms=(platform,)).as_text()
    assert kernels.TARGET not in text and "dot_general" in text
    assert kernels.TARGET in jax.jit(dense).lower(x, pw).as_text()  # cpu: the kernel
    default = jax.jit(dense).trace(x, pw).lower(lowering_platforms=("cpu", platform))
    assert kernels.TARGET in default.as_text()  # one module, a branch per platform


CFG = DecoderIR(name="m", vocab=70, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                max_len=32, tie_embeddings=True)  # fmt: skip


@pytest.mark.parametrize("tied", [True, False])
def test_packed_decoder_matches_xla_and_is_row_independent(tied):
    import dataclasses

    cfg = dataclasses.replace(CFG, tie_embeddings=tied)
    params = init_decoder(cfg, jax.random.key(0))
    packed = pack_decoder(params, cfg)
    assert isinstance(packed["lm_head"]["w"], PackedWeight)
    assert isinstance(packed["layers_1"]["mlp"]["w_down"], PackedWeight)
    assert packed["layers_1"]["attn"]["wqkv"].shape == (48, 4 * 12 + 2 * 2 * 12)  # q|k|v fused
    step = jax.jit(decoder_block, static_argnums=1)
    toks = jnp.asarray([[5, 9, 2, 61, 7]], jnp.int32)
    start = jnp.asarray([3], jnp.int32)
    ref, _, _ = step(params, cfg, init_cache(cfg, 1, 32), toks, start)
    got, _, _ = step(packed, cfg, init_cache(cfg, 1, 32), toks, start)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    head = pack_decoder(params, cfg, head_rows=40)["lm_head"]["w"]  # a draft_vocab cut
    assert head.shape == (48, 40)


def test_auto_picks_the_kernel_here_and_xla_when_asked():
    assert choose("auto").packed and choose("kernel").packed
    assert not choose("xla").packed
    auto = choose("auto", n_devices=8)
    assert not auto.packed and "8 devices" in auto.detail
    with pytest.raises(ValueError, match="8 devices"):
        choose("kernel", n_devices=8)


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)  # fmt: skip


FALLBACK = """
from compiler.decode.backend import choose
b = choose("auto")
print("backend", b)
try:
    choose("kernel")
except ValueError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize(
    "env,why",
    [({"TANDEM_KERNEL": "off"}, "TANDEM_KERNEL=off"), ({"CXX": "false"}, "could not build")],
)
def test_without_the_kernel_decoding_falls_back_to_xla_with_one_warning(env, why, tmp_path):
    out = _python(FALLBACK, TANDEM_KERNEL_CACHE=str(tmp_path), **env)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and why in warnings[0] and "XLA" in warnings[0]
    assert "backend xla" in out.stdout and "refused: decode.backend kernel:" in out.stdout
