"""Export to a GGUF file (llama, or qwen2 for q/k/v biases), the inverse of `gguf_io`: the
metadata `read_architecture` reads, llama3 RoPE divisors as `rope_freqs.weight`, every tensor
under its ggml name with a llama file's Q/K rows permuted as llama.cpp's converter does
(`permute_qk`), matrices in the model's dtype (F32, or BF16 / F16), norms in F32, and the
tokenizer's vocabulary (`tokenizer_export.add_gguf_vocabulary`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from compiler.ir import DecoderIR
from runtime.errors import optional
from tandem_dsl.pretrained import ROPE_FREQS, gguf_metadata, rope_freqs_of

from .gguf_io import ggml_name, permute_qk, rope_heads
from .layout import from_params, spec_values
from .tokenizer_export import ExportTokenizer, add_gguf_vocabulary

MATRIX_TYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}  # by DecoderIR.dtype
FILE_TYPES = {"float32": "ALL_F32", "bfloat16": "MOSTLY_BF16", "float16": "MOSTLY_F16"}


def family_of(cfg: DecoderIR) -> str:
    """The GGUF architecture that holds model `cfg`: qwen2 for q/k/v biases, else llama.
    ValueError for llama3 RoPE scaling with biases, which llama.cpp's qwen2 does not read."""
    if cfg.qkv_bias and cfg.rope_scaling is not None:
        raise ValueError(
            f"model '{cfg.name}' has q/k/v biases and llama3 RoPE scaling: no GGUF architecture "
            "holds both; export it with --format hf"
        )
    return "qwen2" if cfg.qkv_bias else "llama"


def _add_architecture(w, cfg: DecoderIR, family: str) -> None:
    values = spec_values(cfg)
    for key, value in gguf_metadata(values, family, cfg.max_len).items():
        (w.add_float32 if isinstance(value, float) else w.add_uint32)(key, value)
    divisors = rope_freqs_of(values)
    if divisors is not None:
        w.add_tensor(ROPE_FREQS, np.asarray(divisors, np.float32))


def write_gguf(
    path: Path, cfg: DecoderIR, params: dict, tok: ExportTokenizer | None, name: str
) -> str:
    """Writes the file (replacing it); returns what was written as the vocabulary."""
    gguf = optional("gguf")
    qtype = gguf.GGMLQuantizationType[MATRIX_TYPES[cfg.dtype]]
    family = family_of(cfg)
    tmp = path.with_name(f".{path.name}.tmp")
    w = gguf.GGUFWriter(str(tmp), family)
    try:
        w.add_name(name)
        w.add_file_type(gguf.LlamaFileType[FILE_TYPES[cfg.dtype]])
        _add_architecture(w, cfg, family)
        vocabulary = "no vocabulary (no tokenizer given)"
        if tok is None:
            w.add_tokenizer_model("none")
        else:
            vocabulary = add_gguf_vocabulary(w, tok, cfg.vocab)
        for canonical, a in from_params(params, cfg):
            a = np.asarray(a, np.float32)  # exact for every dtype the model may have
            heads = rope_heads(canonical, cfg.n_heads, cfg.n_kv_heads, family)
            if heads is not None:
                a = permute_qk(a, heads)
            if a.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
                w.add_tensor(ggml_name(canonical), gguf.quants.quantize(a, qtype), raw_dtype=qtype)
            else:
                w.add_tensor(ggml_name(canonical), a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return vocabulary
