"""GGUF files (llama.cpp's format), read with the `gguf` package.

Tensors are dequantized to float32 numpy arrays with `gguf.quants.dequantize`, which covers
F32, F16, BF16, Q8_0, Q4_0, Q4_1 and the k-quants, and renamed to the canonical Hugging Face
Llama names (`layers.3.self_attn.q_proj.weight`, [out, in] layout) that `layout.to_params`
maps to our parameter tree.

llama.cpp's converter permutes the rows of the Q and K projections so that GGML's
interleaved RoPE (pairs 2i, 2i+1) gives the same result as Hugging Face's "rotate half"
RoPE (pairs i, i + E/2). Our RoPE is rotate-half (`compiler.nn.layers.rope`), so those rows
are permuted back here (`unpermute_qk`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from runtime.errors import optional

GGUF_MAGIC = b"GGUF"

# ggml tensor name -> canonical (HF Llama) name; {i} is the layer number.
GGUF_TO_HF = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def check_magic(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); "
            "point the path at a .gguf file written by llama.cpp or gguf-py"
        )


@lru_cache(maxsize=2)
def _reader(path: str, mtime: float):
    reader = optional("gguf").GGUFReader
    try:
        return reader(path, "r")
    except Exception as e:  # the reader raises ValueError/struct.error/... on corrupt files
        raise ValueError(
            f"{path} could not be read as GGUF ({type(e).__name__}: {e}); the file is "
            "truncated or corrupt: download it again (e.g. `tandemc pull smollm2-135m`)"
        ) from None


def open_gguf(path: str | Path):
    """A cached `gguf.GGUFReader` (parsing the vocabulary takes seconds on large models)."""
    path = Path(path)
    check_magic(path)
    return _reader(str(path.resolve()), path.stat().st_mtime)


def field(reader, key: str, default=None):
    """A metadata value as a Python value (str, int, float, bool or list), or `default`."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _require(reader, key: str, path):
    value = field(reader, key)
    if value is None:
        raise ValueError(f"{path}: GGUF metadata has no {key!r}; the file is not a llama model")
    return value


def read_architecture(path: str | Path) -> dict:
    """The model's shape from GGUF metadata, with DecoderIR's field names."""
    r = open_gguf(path)
    arch = field(r, "general.architecture")
    if arch != "llama":
        raise ValueError(
            f"{path}: architecture {arch!r} is not supported; only 'llama' GGUF files "
            "(Llama, SmolLM, Mistral-style decoders without biases) can be imported"
        )
    scaling = field(r, "llama.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in _tensors(r):
        raise ValueError(f"{path}: RoPE scaling ({scaling}) is not supported")
    d_model = int(_require(r, "llama.embedding_length", path))
    n_heads = int(_require(r, "llama.attention.head_count", path))
    head_dim = d_model // n_heads
    for key in ("llama.rope.dimension_count", "llama.attention.key_length"):
        value = field(r, key)
        if value is not None and int(value) != head_dim:
            raise ValueError(
                f"{path}: {key} is {value}, but d_model / n_heads is {head_dim}; partial "
                "rotary or a separate head width is not supported"
            )
    tensors = _tensors(r)
    vocab = field(r, "llama.vocab_size")
    if vocab is None:
        vocab = int(tensors["token_embd.weight"].shape[1])
    return {
        "vocab": int(vocab),
        "d_model": d_model,
        "n_layers": int(_require(r, "llama.block_count", path)),
        "n_heads": n_heads,
        "n_kv_heads": int(field(r, "llama.attention.head_count_kv", n_heads)),
        "d_ff": int(_require(r, "llama.feed_forward_length", path)),
        "max_len": int(field(r, "llama.context_length", 2048)),
        "norm": "rmsnorm",
        "norm_eps": float(field(r, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "mlp": "swiglu",
        "pos": "rope",
        "rope_theta": float(field(r, "llama.rope.freq_base", 10000.0)),
        "tie_embeddings": "output.weight" not in tensors,
    }


def _tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def canonical_name(name: str) -> str | None:
    """ggml name -> HF name, or None for a tensor we do not know."""
    m = _BLOCK.match(name)
    key, layer = (f"blk.{{i}}.{m.group(2)}", m.group(1)) if m else (name, None)
    hf = GGUF_TO_HF.get(key)
    return None if hf is None else hf.format(i=layer)


def dequantize(tensor) -> np.ndarray:
    """A `gguf.ReaderTensor` -> float32 numpy array in [out, in] (row-major) order."""
    gguf = optional("gguf")
    try:
        out = optional("gguf.quants").dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        name = gguf.GGMLQuantizationType(tensor.tensor_type).name
        raise ValueError(
            f"tensor {tensor.name}: quantization type {name} cannot be dequantized by the "
            "installed `gguf` package; upgrade it (pip install -U gguf)"
        ) from None
    return np.ascontiguousarray(out, dtype=np.float32)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp `convert_hf_to_gguf.LlamaModel.permute`: GGML interleaved-pair
    rows back to rotate-half rows. w [n_head * head_dim, in]."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(path: str | Path, n_heads: int, n_kv_heads: int):
    """Yields (canonical name, float32 [out, in] array) for every tensor of the file.

    Unknown tensors are yielded under their ggml name so the caller can reject them.
    """
    for t in open_gguf(path).tensors:
        name = canonical_name(t.name) or t.name
        w = dequantize(t)
        if name.endswith("q_proj.weight"):
            w = unpermute_qk(w, n_heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute_qk(w, n_kv_heads)
        yield name, w
