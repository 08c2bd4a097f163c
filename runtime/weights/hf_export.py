"""Export to a Hugging Face folder, the inverse of `hf_io`: config.json (`LlamaForCausalLM`, or
`Qwen2ForCausalLM` with q/k/v biases), model.safetensors and the tokenizer files, which
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` read."""

from __future__ import annotations

import json
import os
from pathlib import Path

from compiler.ir import DecoderIR
from runtime.errors import optional
from tandem_dsl.pretrained import hf_config

from .hf_io import stored_name
from .layout import from_params, spec_values
from .tokenizer_export import ExportTokenizer, write_hf_files

WEIGHTS_FILE = "model.safetensors"


def config(cfg: DecoderIR, tok: ExportTokenizer | None) -> dict:
    """config.json of model `cfg`: what `hf_io.read_architecture` reads back (a Llama, or a
    Qwen2 for a model with q/k/v biases)."""
    out = hf_config(spec_values(cfg), cfg.max_len) | {"dtype": cfg.dtype}
    if tok is not None:
        for which, i in (("bos", tok.bos_id), ("eos", tok.eos_id)):
            if 0 <= i < cfg.vocab:
                out[f"{which}_token_id"] = i
    return out


def write_hf(folder: Path, cfg: DecoderIR, params: dict, tok: ExportTokenizer | None) -> list[str]:
    """Writes the folder (created if needed; these files replaced); returns the file names."""
    import jax.numpy as jnp

    save_file = optional("safetensors.flax").save_file  # flax: numpy has no bfloat16
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {stored_name(n): jnp.asarray(a) for n, a in from_params(params, cfg)}
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / WEIGHTS_FILE)
    # a sharded checkpoint's index left in the folder would make loaders read its shards
    (folder / f"{WEIGHTS_FILE}.index.json").unlink(missing_ok=True)
    (folder / "config.json").write_text(json.dumps(config(cfg, tok), indent=2) + "\n")
    written = ["config.json", WEIGHTS_FILE]
    if tok is not None:
        written += write_hf_files(folder, tok, cfg.max_len)
    return written
