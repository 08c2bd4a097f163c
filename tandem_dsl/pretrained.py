"""What a pretrained weight file says about its model, in the spec's field names.

`architecture(kind, path)` reads headers only: a GGUF file's metadata and tensor table
(`gguf_header`), or a Hugging Face folder's config.json. `HF_KEYS` and `GGUF_KEYS` are the one
statement of which file key holds which spec field, read by import (here, and
`runtime.weights` through `architecture`) and by export (`hf_config`, `gguf_metadata`).
Families: Llama 1-3.x (llama3 RoPE scaling included), Mistral, Qwen2 / Qwen2.5 (q/k/v biases),
with any head width. Every problem is a `WeightsError` naming the file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from . import gguf_header, rope_scaling

FIXED = {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope"}  # every supported family
# spec field -> config.json key
HF_KEYS = {
    "vocab": "vocab_size",
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "d_ff": "intermediate_size",
    "norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
    "tie_embeddings": "tie_word_embeddings",
}
# config.json keys whose other values this project cannot run
UNSUPPORTED_UNLESS = {"hidden_act": "silu", "mlp_bias": False, "attention_bias": False,
                      "use_sliding_window": False, "partial_rotary_factor": 1.0}  # fmt: skip
HF_FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "qwen2": "Qwen2ForCausalLM"}  # fmt: skip
# spec field -> GGUF metadata key after "<architecture>."
GGUF_KEYS = {
    "vocab": "vocab_size",
    "d_model": "embedding_length",
    "n_layers": "block_count",
    "n_heads": "attention.head_count",
    "n_kv_heads": "attention.head_count_kv",
    "head_dim": "attention.key_length",
    "d_ff": "feed_forward_length",
    "norm_eps": "attention.layer_norm_rms_epsilon",
    "rope_theta": "rope.freq_base",
}
GGUF_FAMILIES = ("llama", "qwen2")
ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's per-frequency divisors (llama3 scaling)


class WeightsError(ValueError):
    """A weight file this project cannot read or does not support (the message names it)."""


@dataclass(frozen=True)
class Architecture:
    values: dict  # spec field -> value: every `from_weights` field of model.Decoder
    keys: dict  # spec field -> where the file states it
    family: str  # llama | mistral | qwen2
    context_length: int  # the positions the model was trained for


def architecture(kind: str, path: str | Path) -> Architecture:
    """The model a weight file holds; FileNotFoundError when it is missing."""
    if kind == "gguf":
        return _gguf_architecture(Path(path))
    if kind == "safetensors":
        return _hf_architecture(hf_folder(path))
    raise WeightsError(f"unknown weight format {kind!r}; choose gguf or safetensors")


def head_dim_or_none(head_dim: int, d_model: int, n_heads: int) -> int | None:
    """The spec's head_dim: None when it is d_model / n_heads."""
    return None if head_dim * n_heads == d_model else head_dim


# --- Hugging Face: config.json


def hf_folder(path: str | Path) -> Path:
    """The checkpoint folder of `path` (the folder, or a file in it)."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(2, "not found", str(folder / "config.json"))
    return folder


def read_json(file: Path) -> dict:
    try:
        out = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{file} is not valid JSON ({e}); replace it with the model's") from None
    if not isinstance(out, dict):
        raise WeightsError(f"{file} does not hold a JSON object")
    return out


def _hf_architecture(folder: Path) -> Architecture:
    where = folder / "config.json"
    c = read_json(where)
    family = c.get("model_type")
    if family not in HF_FAMILIES:
        raise WeightsError(
            f"{where}: model_type {family!r} is not supported; the supported families are "
            f"{', '.join(HF_FAMILIES)}"
        )
    for key, allowed in UNSUPPORTED_UNLESS.items():
        if c.get(key, allowed) not in (allowed, None):
            raise WeightsError(f"{where}: {key} {c[key]!r} is not supported ({allowed!r} only)")
    if family == "mistral" and c.get("sliding_window") is not None:  # Qwen2's needs use_...
        raise WeightsError(f"{where}: sliding-window attention is not supported")
    try:
        values = {f: _hf_number(c[key]) for f, key in HF_KEYS.items() if key in c}
        keys = {f: key for f, key in HF_KEYS.items() if key in c}
        for f in ("vocab", "d_model", "n_layers", "n_heads", "d_ff"):
            values[f] = int(values[f])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{where}: {e} is missing or not a number") from None
    rope = c.get("rope_parameters") or {}  # transformers >= 5 nests RoPE settings here
    if "rope_theta" not in values and "rope_theta" in rope:
        values["rope_theta"], keys["rope_theta"] = rope["rope_theta"], "rope_parameters"
    values.setdefault("rope_theta", 10000.0)
    values.setdefault("n_kv_heads", values["n_heads"])
    values.setdefault("norm_eps", 1e-6)  # transformers' default
    values.setdefault("tie_embeddings", False)
    head_dim = int(values.get("head_dim") or values["d_model"] // values["n_heads"])
    values["head_dim"] = head_dim_or_none(head_dim, values["d_model"], values["n_heads"])
    scaling = c.get("rope_scaling") or (
        rope if rope.get("rope_type", "default") != "default" else None
    )
    values["rope_scaling"], keys["rope_scaling"] = _hf_rope_scaling(scaling, where), "rope_scaling"
    values["qkv_bias"], keys["qkv_bias"] = family == "qwen2", "model_type"
    values |= FIXED
    keys.setdefault("head_dim", "hidden_size / num_attention_heads")
    keys |= {f: "model_type" for f in FIXED} | {
        f: "transformers' default" for f in values if f not in keys
    }
    values = {f: float(v) if f in ("norm_eps", "rope_theta") else v for f, v in values.items()}
    return Architecture(values, keys, family, int(c.get("max_position_embeddings") or 2048))


def _hf_number(value):
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return value
    raise TypeError(repr(value))


def _hf_rope_scaling(scaling: dict | None, where: Path) -> dict | None:
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "llama3":
        raise WeightsError(
            f"{where}: RoPE scaling {scaling} is not supported (none, or rope_type llama3)"
        )
    return {
        "rope_type": "llama3",
        "factor": float(scaling["factor"]),
        "low_freq_factor": float(scaling.get("low_freq_factor", 1.0)),
        "high_freq_factor": float(scaling.get("high_freq_factor", 4.0)),
        "original_max_position_embeddings": int(scaling["original_max_position_embeddings"]),
    }


def hf_config(values: dict, context_length: int) -> dict:
    """config.json for a model with these spec values: what `architecture` reads back."""
    family = "qwen2" if values["qkv_bias"] else "llama"
    out = {"architectures": [HF_FAMILIES[family]], "model_type": family}
    out |= {key: values[f] for f, key in HF_KEYS.items()}
    head_dim = values["head_dim"] or values["d_model"] // values["n_heads"]
    scaling = values["rope_scaling"]
    out |= {
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": context_length,
        # transformers < 5 reads rope_theta and rope_scaling, transformers >= 5 rope_parameters
        "rope_parameters": {
            "rope_type": "default",
            **(scaling or {}),
            "rope_theta": values["rope_theta"],
        },
        "attention_bias": False,
        "mlp_bias": False,
    }
    if scaling:
        out["rope_scaling"] = dict(scaling)
    return out


# --- GGUF: metadata and tensor table


def _gguf_architecture(path: Path) -> Architecture:
    h = gguf_header.read_header(path)
    family = h.get("general.architecture")
    if family not in GGUF_FAMILIES:
        raise WeightsError(
            f"{path}: architecture {family!r} is not supported; the supported GGUF "
            f"architectures are {', '.join(GGUF_FAMILIES)}"
        )
    keys = {f: f"{family}.{k}" for f, k in GGUF_KEYS.items() if f"{family}.{k}" in h.metadata}
    for required in ("d_model", "n_layers", "n_heads", "d_ff"):
        if required not in keys:
            key = f"{family}.{GGUF_KEYS[required]}"
            raise WeightsError(f"{path}: GGUF metadata has no {key!r}; the file is incomplete")
    values = {f: h.get(k) for f, k in keys.items()}
    for f, v in values.items():
        if not isinstance(v, int | float | list):
            raise WeightsError(f"{path}: GGUF metadata {keys[f]} is {v!r}, not a number")
    if isinstance(values.get("n_kv_heads"), list):  # per layer: one value for all, or refused
        per_layer = set(values["n_kv_heads"])
        if len(per_layer) != 1:
            raise WeightsError(f"{path}: layers with different kv head counts are not supported")
        values["n_kv_heads"] = per_layer.pop()
    values.setdefault("n_kv_heads", values["n_heads"])
    values.setdefault("norm_eps", 1e-5)  # llama.cpp's default
    values.setdefault("rope_theta", 10000.0)
    if "vocab" not in values:
        embed = h.tensors.get("token_embd.weight")
        if embed is None:
            raise WeightsError(f"{path}: no token_embd.weight tensor")
        values["vocab"], keys["vocab"] = embed.dims[1], "token_embd.weight"
    values = {
        f: _float32(v) if f in ("norm_eps", "rope_theta") else int(v) for f, v in values.items()
    }
    d, heads = values["d_model"], values["n_heads"]
    head_dim = values.get("head_dim") or d // heads
    for key in (f"{family}.rope.dimension_count", f"{family}.attention.value_length"):
        if h.get(key, head_dim) != head_dim:
            raise WeightsError(
                f"{path}: {key} is {h.get(key)}, but the heads are {head_dim} wide; partial "
                "rotary or different key and value widths are not supported"
            )
    values["head_dim"] = head_dim_or_none(head_dim, d, heads)
    scaling = h.get(f"{family}.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise WeightsError(f"{path}: RoPE scaling {scaling!r} is not supported (none or llama3)")
    values["rope_scaling"] = _gguf_rope_scaling(path, h, head_dim, values["rope_theta"])
    values["qkv_bias"] = "blk.0.attn_q.bias" in h.tensors
    values["tie_embeddings"] = "output.weight" not in h.tensors
    values |= FIXED
    keys |= {
        "rope_scaling": ROPE_FREQS if ROPE_FREQS in h.tensors else f"no {ROPE_FREQS}",
        "qkv_bias": ("" if values["qkv_bias"] else "no ") + "blk.0.attn_q.bias",
        "tie_embeddings": ("no " if values["tie_embeddings"] else "") + "output.weight",
    } | {f: "general.architecture" for f in FIXED}
    keys.setdefault("head_dim", f"{family}.embedding_length / {family}.attention.head_count")
    keys |= {f: "llama.cpp's default" for f in values if f not in keys}
    context = int(h.get(f"{family}.context_length", 2048))
    return Architecture(values, keys, family, context)


def _gguf_rope_scaling(path: Path, h, head_dim: int, theta: float) -> dict | None:
    info = h.tensors.get(ROPE_FREQS)
    if info is None:
        return None
    divisors = gguf_header.read_f32(path, info)
    scaling = rope_scaling.llama3_from_divisors(divisors, head_dim, theta)
    if scaling is None and any(x != 1.0 for x in divisors):
        raise WeightsError(
            f"{path}: {ROPE_FREQS} holds RoPE divisors that no llama3 scaling gives; "
            "other scalings are not supported"
        )
    return scaling


def _float32(value) -> float:
    """A float32 metadata value as the shortest decimal that reads back to it (1e-5, not
    9.999999747e-06)."""
    x = float(value)
    for digits in range(1, 18):
        short = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == x:
            return short
    return x


def gguf_metadata(values: dict, family: str, context_length: int) -> dict:
    """GGUF metadata for a model with these spec values: what `architecture` reads back (the
    llama3 divisors go in the `rope_freqs_of` tensor)."""
    head_dim = values["head_dim"] or values["d_model"] // values["n_heads"]
    out = {f"{family}.{key}": values[f] for f, key in GGUF_KEYS.items() if f != "head_dim"}
    out |= {
        f"{family}.context_length": context_length,
        f"{family}.attention.key_length": head_dim,
        f"{family}.attention.value_length": head_dim,
        f"{family}.rope.dimension_count": head_dim,
    }
    return out


def rope_freqs_of(values: dict) -> list[float] | None:
    """The `rope_freqs.weight` tensor of a model with these spec values (None: no scaling)."""
    scaling = values["rope_scaling"]
    if scaling is None:
        return None
    head_dim = values["head_dim"] or values["d_model"] // values["n_heads"]
    freqs = rope_scaling.base_frequencies(head_dim, values["rope_theta"])
    return rope_scaling.llama3_divisors(freqs, scaling)


# --- tokenizers


def tokenizer_vocab(kind: str, path: str | Path) -> tuple[int, str]:
    """(the ids a model needs for this tokenizer: its largest id + 1, where that was read)."""
    path = Path(path)
    if kind == "gguf":
        tokens = gguf_header.read_header(path).get("tokenizer.ggml.tokens")
        if tokens is None:
            raise WeightsError(f"{path}: GGUF metadata has no tokenizer.ggml.tokens")
        n = tokens.length if isinstance(tokens, gguf_header.ArrayLength) else len(tokens)
        return n, "tokenizer.ggml.tokens"
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(2, "not found", str(file))
    t = read_json(file)
    vocab = (t.get("model") or {}).get("vocab")
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab or [])))
    ids += [a.get("id", -1) for a in t.get("added_tokens") or [] if isinstance(a, dict)]
    ids = [i for i in ids if isinstance(i, int)]
    if not ids:
        raise WeightsError(f"{file} has no vocabulary (model.vocab is empty)")
    return max(ids) + 1, "model.vocab"
