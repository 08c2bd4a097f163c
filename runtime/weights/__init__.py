"""Pretrained weights: GGUF files and Hugging Face safetensors checkpoints.

    from runtime import weights
    arch = weights.read_architecture("gguf", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    cfg = DecoderIR(name="large", **arch)           # or the spec's model
    params = weights.load_weights("gguf", path, cfg)  # our param tree (compiler/nn/decoder.py)
    tok = weights.load_tokenizer("gguf", path)

`kind` is "gguf" (a .gguf file) or "safetensors" (a directory with config.json and
*.safetensors). Every error about the files or their agreement with the spec is a
ValueError with a one-paragraph message naming the file (and both values on a mismatch).

`export_weights` writes our param tree back out, as a Hugging Face folder ("hf") or a GGUF
file ("gguf"), which the functions above read back.
"""

from __future__ import annotations

from pathlib import Path

from compiler.ir import DecoderIR

from . import gguf_io, hf_io
from .catalog import hint_for
from .layout import check_architecture, ir_fields, llama_problems, to_params

KINDS = ("gguf", "safetensors")
EXPORT_FORMATS = ("hf", "gguf")
__all__ = [
    "EXPORT_FORMATS",
    "KINDS",
    "export_weights",
    "load_tokenizer",
    "load_weights",
    "read_architecture",
]


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
    """The model's shape from the file's header: DecoderIR's keyword arguments but the name
    (vocab, d_model, n_layers, n_heads, n_kv_heads, head_dim, d_ff, max_len, norm, norm_eps,
    mlp, pos, rope_theta, rope_scaling, qkv_bias, tie_embeddings)."""
    return _call(kind, path, lambda p: ir_fields(_module(kind).read_architecture(p)))


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


def export_weights(fmt: str, path: str | Path, cfg: DecoderIR, params: dict, tokenizer=None):
    """Writes model `cfg`'s params (our tree) as `fmt`: "hf" (the folder `path`) or "gguf" (the
    file `path`), with `tokenizer` (a run's tokenizer, or None). Returns (the files written,
    what was written for the tokenizer). ValueError when the model is not a Llama decoder."""
    from .tokenizer_export import for_export

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose {' or '.join(EXPORT_FORMATS)}")
    problems = llama_problems(cfg)
    if problems:
        raise ValueError(
            f"model '{cfg.name}' is not a Llama decoder ({'; '.join(problems)}); both export "
            "formats hold Llama models only"
        )
    path = Path(path).expanduser()
    tok = None if tokenizer is None else for_export(tokenizer)
    if fmt == "hf":
        from .hf_export import write_hf

        files = write_hf(path, cfg, params, tok)
        about = "none" if tok is None else f"{tok.about} (tokenizer.json, tokenizer_config.json)"
        return [str(path / f) for f in files], about
    from .gguf_export import write_gguf

    return [str(path)], write_gguf(path, cfg, params, tok, cfg.name)
