"""Imported weights give the reference implementation's logits (transformers' Llama).

Random tiny Llamas (2 layers, d 64, 4 heads, 2 kv heads, vocab 300, tied and untied) are
saved as safetensors and as GGUF in several tensor types, imported with runtime.weights and
run with compiler.nn; the reference is the HF model holding exactly the stored (rounded or
quantized, independently decoded) weights.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import llama_fixtures as lf
import numpy as np
import pytest
import torch

from compiler import nn
from compiler.ir import DecoderIR
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
