"""Pretrained weights: GGUF files and Hugging Face safetensors checkpoints.

    from runtime import weights
    arch = weights.read_architecture("gguf", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    cfg = DecoderIR(name="large", **arch)           # or the spec's model
    params = weights.load_weights("gguf", path, cfg)  # our param tree (compiler/nn/decoder.py)
    tok = weights.load_tokenizer("gguf", path)

`kind` is "gguf" (a .gguf file) or "safetensors" (a directory with config.json and
*.safetensors). Every error about the files or their agreement with the spec is a
ValueError with a one-paragraph message naming the file (and both values on a mismatch).
"""

from __future__ import annotations

from pathlib import Path

from compiler.ir import DecoderIR

from . import gguf_io, hf_io
from .catalog import hint_for
from .layout import check_architecture, to_params

KINDS = ("gguf", "safetensors")
__all__ = ["KINDS", "load_tokenizer", "load_weights", "read_architecture"]


def _module(kind: str):
    if kind == "gguf":
        return gguf_io
    if kind == "safetensors":
        return hf_io
    raise ValueError(f"unknown weight format {kind!r}; choose one of {', '.join(KINDS)}")


def _missing(kind: str, path: Path, exc: FileNotFoundError) -> ValueError:
    what = "a .gguf file" if kind == "gguf" else "a directory with config.json and *.safetensors"
    where = exc.filename or (exc.args[0] if exc.args else path)
    msg = f"{kind} weights not found: {where} does not exist; init.path must be {what}"
    hint = hint_for(path)
    return ValueError(f"{msg}. {hint}" if hint else msg)


def _call(kind: str, path, fn):
    path = Path(path).expanduser()
    try:
        return fn(path)
    except FileNotFoundError as e:
        raise _missing(kind, path, e) from None


def read_architecture(kind: str, path: str | Path) -> dict:
    """The model's shape from the file's metadata: a dict with DecoderIR field names
    (vocab, d_model, n_layers, n_heads, n_kv_heads, d_ff, max_len, norm, norm_eps, mlp, pos,
    rope_theta, tie_embeddings)."""
    return _call(kind, path, _module(kind).read_architecture)


def load_weights(kind: str, path: str | Path, cfg: DecoderIR) -> dict:
    """Our parameter tree for model `cfg` (names and layout of compiler.nn.init_decoder), in
    cfg.dtype. Raises ValueError when cfg contradicts the weights, naming both values."""
    module = _module(kind)

    def load(p: Path) -> dict:
        check_architecture(cfg, module.read_architecture(p), str(p))
        return to_params(module.read_tensors(p, cfg.n_heads, cfg.n_kv_heads), cfg, str(p))

    return _call(kind, path, load)


def load_tokenizer(kind: str, path: str | Path):
    """The tokenizer stored with the weights: "gguf" (from the file's metadata), or
    "safetensors" / "hf-json" (tokenizer.json in the directory, or that file)."""
    from .tokenizer import gguf_tokenizer, hf_tokenizer

    if kind == "gguf":
        return _call(kind, path, gguf_tokenizer)
    if kind in ("safetensors", "hf-json"):
        return _call(kind, path, hf_tokenizer)
    raise ValueError(f"unknown tokenizer source {kind!r}; choose gguf, safetensors or hf-json")
