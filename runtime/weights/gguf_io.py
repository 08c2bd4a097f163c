"""GGUF files (llama.cpp's format) of the llama and qwen2 architectures, read with the `gguf`
package (the architecture from the header alone: `tandem_dsl.pretrained`).

Tensors are dequantized to float32 numpy arrays with `gguf.quants.dequantize`, which covers
F32, F16, BF16, Q8_0, Q4_0, Q4_1 and the k-quants, and renamed to the canonical Hugging Face
Llama names (`layers.3.self_attn.q_proj.weight`, [out, in] layout) that `layout.to_params`
maps to our parameter tree.

For llama files, llama.cpp's converter permutes the rows of the Q and K projections so that
GGML's interleaved RoPE (pairs 2i, 2i+1) gives the same result as Hugging Face's "rotate half"
RoPE (pairs i, i + E/2). Our RoPE is rotate-half (`compiler.nn.layers.rope`), so those rows
are permuted back here (`unpermute_qk`). qwen2 files use rotate-half RoPE and keep HF's rows.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from runtime.errors import optional
from tandem_dsl.pretrained import ROPE_FREQS, Architecture, architecture

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
    "blk.{i}.attn_q.bias": "layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
}
HF_TO_GGUF = {hf: ggml for ggml, hf in GGUF_TO_HF.items()}
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


def read_architecture(path: str | Path) -> Architecture:
    """The model's shape from GGUF metadata (`tandem_dsl.pretrained` reads the header)."""
    return architecture("gguf", path)


def canonical_name(name: str) -> str | None:
    """ggml name -> HF name, or None for a tensor we do not know."""
    m = _BLOCK.match(name)
    key, layer = (f"blk.{{i}}.{m.group(2)}", m.group(1)) if m else (name, None)
    hf = GGUF_TO_HF.get(key)
    return None if hf is None else hf.format(i=layer)


def ggml_name(canonical: str) -> str:
    """HF name -> ggml name: `canonical_name` backwards, from the same table."""
    m = re.match(r"^layers\.(\d+)\.(.+)$", canonical)
    key, layer = (f"layers.{{i}}.{m.group(2)}", m.group(1)) if m else (canonical, None)
    return HF_TO_GGUF[key].format(i=layer)


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


def rope_heads(name: str, n_heads: int, n_kv_heads: int, family: str = "llama") -> int | None:
    """The head count of tensor `name` (HF name) if llama.cpp permutes its rows (Q and K, and
    their biases: what RoPE rotates, in a llama file; qwen2 files keep HF's order), else None."""
    if family != "llama":
        return None
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return n_heads
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return n_kv_heads
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp `convert_hf_to_gguf.LlamaModel.permute`: GGML interleaved-pair
    rows back to rotate-half rows. w [n_head * head_dim, in]."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rotate-half rows -> GGML interleaved-pair rows, as llama.cpp's converter writes them:
    `unpermute_qk` backwards. w [n_head * head_dim, in]."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(path: str | Path, n_heads: int, n_kv_heads: int):
    """Yields (canonical name, float32 [out, in] array) for every tensor of the file.

    Unknown tensors are yielded under their ggml name so the caller can reject them. The
    llama3 RoPE divisors (`rope_freqs.weight`) are the architecture's `rope_scaling`, not a
    parameter.
    """
    reader = open_gguf(path)
    family = field(reader, "general.architecture")
    for t in reader.tensors:
        if t.name == ROPE_FREQS:
            continue
        name = canonical_name(t.name) or t.name
        w = dequantize(t)
        heads = rope_heads(name, n_heads, n_kv_heads, family)
        yield name, w if heads is None else unpermute_qk(w, heads)
