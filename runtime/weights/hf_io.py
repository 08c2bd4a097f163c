"""Hugging Face checkpoints of the Llama, Mistral and Qwen2 families: a directory with
`config.json` and `*.safetensors` (one file, or shards listed by `model.safetensors.index.json`).

Tensor names are made canonical by dropping the `model.` prefix of `LlamaForCausalLM` (and its
Mistral and Qwen2 siblings, which share the names): `model.layers.0.self_attn.q_proj.weight` ->
`layers.0.self_attn.q_proj.weight`. Rows are already in rotate-half RoPE order, as our RoPE
expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.errors import optional
from tandem_dsl.pretrained import Architecture, architecture, hf_folder

INDEX_FILE = "model.safetensors.index.json"
# Buffers some older checkpoints saved with the weights; they carry no parameters.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_architecture(path: str | Path) -> Architecture:
    """The model's shape from `config.json` (`tandem_dsl.pretrained` reads it)."""
    return architecture("safetensors", path)


def weight_files(path: str | Path) -> list[Path]:
    d = hf_folder(path)
    index = d / INDEX_FILE
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [d / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{d} holds no *.safetensors files; save the model with save_pretrained")
    return files


def canonical_name(name: str) -> str:
    return name.removeprefix("model.")


def stored_name(canonical: str) -> str:
    """Canonical name -> `LlamaForCausalLM`'s state-dict name: `canonical_name` backwards (the
    output layer sits beside the `model.` decoder)."""
    return canonical if canonical.startswith("lm_head.") else "model." + canonical


def read_tensors(path: str | Path, n_heads: int, n_kv_heads: int):
    """Yields (canonical name, float32 [out, in] array) for every tensor of the checkpoint.

    The `flax` framework of `safetensors` is used because numpy has no bfloat16.
    """
    safetensors = optional("safetensors")
    SafetensorError, safe_open = safetensors.SafetensorError, safetensors.safe_open  # noqa: N806

    for file in weight_files(path):
        try:
            with safe_open(str(file), framework="flax") as f:
                for name in f.keys():
                    if name.endswith(IGNORED_SUFFIXES):
                        continue
                    yield canonical_name(name), np.asarray(f.get_tensor(name), dtype=np.float32)
        except SafetensorError as e:
            raise ValueError(f"{file} is not a valid safetensors file ({e})") from None
