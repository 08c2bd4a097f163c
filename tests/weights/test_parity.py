"""Imported weights give the reference implementation's logits (transformers).

Random tiny Llamas (2 layers, d 64, 4 heads, 2 kv heads, vocab 300, tied and untied) are
saved as safetensors and as GGUF in several tensor types, imported with runtime.weights and
run with compiler.nn; the reference is the HF model holding exactly the stored (rounded or
quantized, independently decoded) weights. The other families (Llama 3 RoPE scaling, Qwen2
q/k/v biases tied and untied, a separate head width) are imported from both formats with the
architecture read from the file alone, and checked on the full sequence, through the KV cache
(XLA, and the packed CPU kernel), and by greedy decoding.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import llama_fixtures as lf
import numpy as np
import pytest
import torch

from compiler import nn
from compiler.ir import DecodeIR, DecoderIR, ProgramIR, RopeScalingIR
from runtime import weights

B, T = 2, 24
RTOL = 1e-4  # max |diff| relative to the largest reference logit


def spec_cfg(fmt, path, **changes) -> DecoderIR:
    return dataclasses.replace(
        DecoderIR(name="m", **weights.read_architecture(fmt, path)), **changes
    )


def tokens(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (B, T)).astype(np.int32)


def reference(models, fmt: str, qtype: str, tied: bool):
    if qtype == "F32":
        return models[tied]
    return lf.quantized_reference(models[tied], qtype, norms=fmt == "safetensors")


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.float().numpy()


_forward = jax.jit(nn.decoder_forward, static_argnums=1)


def assert_parity(ours: np.ndarray, ref: np.ndarray) -> None:
    diff = float(np.abs(ours - ref).max())
    assert diff <= RTOL * float(np.abs(ref).max()), f"max |diff| {diff}"
    assert (ours.argmax(-1) == ref.argmax(-1)).all(), "argmax differs"


CASES = [
    ("safetensors", "F32", False),
    ("safetensors", "F32", True),
    ("safetensors", "BF16", False),
    ("gguf", "F32", False),
    ("gguf", "F32", True),
    ("gguf", "F16", True),
    ("gguf", "BF16", False),
    ("gguf", "Q8_0", True),
    ("gguf", "Q4_0", False),
    ("gguf", "Q4_1", True),
]


@pytest.mark.parametrize("fmt,qtype,tied", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_logits_match_transformers(files, models, fmt, qtype, tied):
    path = files(fmt, qtype, tied)
    cfg = spec_cfg(fmt, path)
    assert cfg.tie_embeddings == tied and cfg.n_kv_heads == lf.KV_HEADS
    params = weights.load_weights(fmt, path, cfg)
    ids = tokens(cfg.vocab)
    ours, _ = _forward(params, cfg, jnp.asarray(ids))
    assert_parity(np.asarray(ours), hf_logits(reference(models, fmt, qtype, tied), ids))


def test_without_unpermuting_qk_the_logits_are_wrong(files, models, monkeypatch):
    """The pitfall the parity test guards: raw GGUF Q/K rows with rotate-half RoPE."""
    from runtime.weights import gguf_io

    path = files("gguf", "F32", False)
    cfg = spec_cfg("gguf", path)
    monkeypatch.setattr(gguf_io, "unpermute_qk", lambda w, n_head: w)
    ids = tokens(cfg.vocab)
    ours, _ = _forward(weights.load_weights("gguf", path, cfg), cfg, jnp.asarray(ids))
    ref = hf_logits(models[False], ids)
    assert np.abs(np.asarray(ours) - ref).max() > 100 * RTOL * np.abs(ref).max()


@pytest.mark.parametrize("fmt,qtype", [("gguf", "Q8_0"), ("safetensors", "F32")])
def test_kv_cached_decode_matches_transformers(files, models, fmt, qtype):
    """Prefill 7 tokens, then 1-token steps and a 3-token block, against HF's KV cache."""
    from transformers import DynamicCache

    tied = fmt == "gguf"
    path = files(fmt, qtype, tied)
    cfg = spec_cfg(fmt, path)
    params = weights.load_weights(fmt, path, cfg)
    ref = reference(models, fmt, qtype, tied)
    ids = tokens(cfg.vocab, seed=1)[:1, :13]
    cache = nn.init_cache(cfg, 1, 32)
    hf_cache = DynamicCache()
    step = jax.jit(nn.decoder_block, static_argnums=1)
    start = 0
    for width in (7, 1, 1, 3, 1):
        chunk = ids[:, start : start + width]
        logits, _, cache = step(params, cfg, cache, jnp.asarray(chunk), jnp.array([start]))
        with torch.no_grad():
            out = ref(torch.from_numpy(chunk).long(), cache=hf_cache, use_cache=True)
        hf_cache = out.past_key_values
        assert_parity(np.asarray(logits), out.logits.float().numpy())
        start += width


# --- other families: the architecture from the file alone

FAMILY_CASES = [("llama3", False), ("qwen2", False), ("qwen2", True), ("head_dim", False)]
WHAT_THE_FILE_SAYS = {
    "llama3": dict(rope_scaling=RopeScalingIR(factor=4.0, original_max_position_embeddings=64),
                   rope_theta=10000.0, qkv_bias=False, head_dim=16),
    "qwen2": dict(rope_scaling=None, qkv_bias=True, head_dim=16),
    "head_dim": dict(rope_scaling=None, qkv_bias=False, head_dim=32),
}  # fmt: skip
KERNEL = os.environ.get("TANDEM_KERNEL") != "off"  # as tests/decode: g++ builds it here


def imported(family_files, family: str, fmt: str, tied: bool):
    """(transformers model, our cfg read from the file, our params)."""
    model, path = family_files(family, fmt, tied)
    cfg = spec_cfg(fmt, path)
    expected = WHAT_THE_FILE_SAYS[family] | {"tie_embeddings": tied, "vocab": 300, "d_model": lf.D}
    assert {k: getattr(cfg, k) for k in expected} == expected
    return model, cfg, weights.load_weights(fmt, path, cfg)


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
@pytest.mark.parametrize("family,tied", FAMILY_CASES, ids=[f"{f}-{t}" for f, t in FAMILY_CASES])
def test_family_logits_match_transformers(family_files, family, tied, fmt):
    model, cfg, params = imported(family_files, family, fmt, tied)
    ids = tokens(cfg.vocab)
    ours, _ = _forward(params, cfg, jnp.asarray(ids))
    assert_parity(np.asarray(ours), hf_logits(model, ids))


def test_llama3_scaling_changes_the_logits(family_files):
    """The RoPE scaling parity above depends on: the same model without it is far off."""
    model, cfg, params = imported(family_files, "llama3", "gguf", False)
    ids = tokens(cfg.vocab)
    plain, _ = _forward(params, dataclasses.replace(cfg, rope_scaling=None), jnp.asarray(ids))
    ref = hf_logits(model, ids)
    assert np.abs(np.asarray(plain) - ref).max() > 100 * RTOL * np.abs(ref).max()


KV_CASES = [(f, fmt, packed) for f, fmt in [("llama3", "gguf"), ("qwen2", "safetensors"),
            ("head_dim", "gguf")] for packed in (False, True)]  # fmt: skip


@pytest.mark.parametrize("family,fmt,packed", KV_CASES)
def test_family_kv_cached_decode_matches_transformers(family_files, family, fmt, packed):
    """Prefill, 1-token steps and a 3-token block against HF's KV cache, with the params as
    imported (XLA's dots) or packed for the CPU kernel (q|k|v fused, biases added after)."""
    from transformers import DynamicCache

    from compiler.decode.backend import pack_decoder

    if packed and not KERNEL:
        pytest.skip("TANDEM_KERNEL=off")
    model, cfg, params = imported(family_files, family, fmt, False)
    params = pack_decoder(params, cfg) if packed else params
    ids = tokens(cfg.vocab, seed=1)[:1, :13]
    cache, hf_cache, start = nn.init_cache(cfg, 1, 32), DynamicCache(), 0
    assert cache[0]["k"].shape == (1, 32, lf.KV_HEADS, cfg.head_dim)
    step = jax.jit(nn.decoder_block, static_argnums=1)
    for width in (7, 1, 1, 3, 1):
        chunk = ids[:, start : start + width]
        logits, _, cache = step(params, cfg, cache, jnp.asarray(chunk), jnp.array([start]))
        with torch.no_grad():
            out = model(torch.from_numpy(chunk).long(), cache=hf_cache, use_cache=True)
        hf_cache = out.past_key_values
        assert_parity(np.asarray(logits), out.logits.float().numpy())
        start += width


def hf_greedy(model, prompt: np.ndarray, n: int) -> list[int]:
    ids = torch.from_numpy(prompt).long()[None]
    with torch.no_grad():
        for _ in range(n):
            next_id = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return ids[0, len(prompt) :].tolist()


@pytest.mark.parametrize("backend", ["xla", "kernel"])
def test_greedy_decoding_writes_transformers_tokens(family_files, backend):
    """A Qwen2 model (q/k/v biases) imported from GGUF generates, greedily, the tokens
    transformers' model does, on XLA and on the packed CPU kernel."""
    from compiler.decode import make_generate
    from compiler.decode.backend import choose, prepare

    if backend == "kernel" and not KERNEL:
        pytest.skip("TANDEM_KERNEL=off")
    model, cfg, params = imported(family_files, "qwen2", "gguf", False)
    cfg = dataclasses.replace(cfg, name="large", max_len=48)
    decode = DecodeIR(policy="autoregressive", target="large", max_new_tokens=12)
    prog = ProgramIR(name="greedy", models=(cfg,), wirings=(), train=(), decode=decode,
                     batch=1, max_len=48)  # fmt: skip
    params = prepare({"large": params}, prog, decode, choose(backend))
    prompt = tokens(cfg.vocab, seed=2)[0, :9]
    out = make_generate(prog, decode)(
        params, jnp.asarray(prompt)[None], jnp.array([len(prompt)]), jax.random.key(0)
    )
    ours = np.asarray(out.tokens[0, : out.lengths[0]]).tolist()
    assert ours == hf_greedy(model, prompt, 12)
