"""Hugging Face Llama-family checkpoints: a directory with `config.json` and `*.safetensors`
(one file, or shards listed by `model.safetensors.index.json`).

Tensor names are made canonical by dropping the `model.` prefix of `LlamaForCausalLM`
(`model.layers.0.self_attn.q_proj.weight` -> `layers.0.self_attn.q_proj.weight`). Rows are
already in rotate-half RoPE order, as our RoPE expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.errors import optional

ARCHITECTURES = {"llama", "mistral"}
INDEX_FILE = "model.safetensors.index.json"
# Buffers some older checkpoints saved with the weights; they carry no parameters.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():  # a config.json or a .safetensors file: use its directory
        path = path.parent
    if not (path / "config.json").is_file():
        raise FileNotFoundError(path / "config.json")
    return path


def read_config(path: str | Path) -> dict:
    file = _dir(path) / "config.json"
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{file} is not valid JSON ({e}); replace it with the model's config"
        ) from None


def read_architecture(path: str | Path) -> dict:
    """The model's shape from `config.json`, with DecoderIR's field names."""
    c = read_config(path)
    kind = c.get("model_type")
    where = _dir(path) / "config.json"
    if kind not in ARCHITECTURES:
        raise ValueError(
            f"{where}: model_type {kind!r} is not supported; only Llama-family checkpoints "
            f"({', '.join(sorted(ARCHITECTURES))}) can be imported"
        )
    rope = c.get("rope_parameters") or {}
    if c.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        scaling = c.get("rope_scaling") or rope
        raise ValueError(f"{where}: RoPE scaling {scaling} is not supported (default RoPE only)")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise ValueError(f"{where}: attention/MLP biases are not supported")
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act {c['hidden_act']!r} is not supported (silu only)")
    d_model, n_heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    head_dim = c.get("head_dim")
    if head_dim is not None and int(head_dim) != d_model // n_heads:
        raise ValueError(
            f"{where}: head_dim {head_dim} differs from hidden_size / num_attention_heads "
            f"({d_model // n_heads}); a separate head width is not supported"
        )
    rope_theta = c.get("rope_theta")
    if rope_theta is None:  # transformers >= 5 nests it under rope_parameters
        rope_theta = rope.get("rope_theta", 10000.0)
    return {
        "vocab": int(c["vocab_size"]),
        "d_model": d_model,
        "n_layers": int(c["num_hidden_layers"]),
        "n_heads": n_heads,
        "n_kv_heads": int(c.get("num_key_value_heads") or n_heads),
        "d_ff": int(c["intermediate_size"]),
        "max_len": int(c.get("max_position_embeddings", 2048)),
        "norm": "rmsnorm",
        "norm_eps": float(c.get("rms_norm_eps", 1e-6)),
        "mlp": "swiglu",
        "pos": "rope",
        "rope_theta": float(rope_theta),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
    }


def weight_files(path: str | Path) -> list[Path]:
    d = _dir(path)
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
