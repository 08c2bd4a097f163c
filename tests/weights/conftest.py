"""Shared fixtures: a trained tiny tokenizer and random Llama models in both file formats."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("safetensors")

import llama_fixtures as lf  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    return lf.train_tokenizer()


@pytest.fixture(scope="session")
def models(tok):
    """{tied: HF model}: two random models sharing the tokenizer's vocabulary."""
    vocab = tok.get_vocab_size(with_added_tokens=True)
    return {tied: lf.hf_model(vocab, tied, seed=int(tied)) for tied in (False, True)}


@pytest.fixture(scope="session")
def files(tmp_path_factory, tok, models):
    """Lazily written weight files, keyed by (format, qtype, tied)."""
    root = tmp_path_factory.mktemp("weights")
    cache = {}

    def get(fmt: str, qtype: str, tied: bool):
        key = (fmt, qtype, tied)
        if key not in cache:
            name = f"{qtype}-{'tied' if tied else 'untied'}"
            if fmt == "gguf":
                cache[key] = lf.save_gguf(models[tied], tok, root / f"{name}.gguf", qtype)
            else:
                import torch

                dtype = {"F32": None, "BF16": torch.bfloat16, "F16": torch.float16}[qtype]
                cache[key] = lf.save_hf(models[tied], tok, root / name, dtype)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def family_files(tmp_path_factory, tok):
    """Lazily built models of llama_fixtures.FAMILIES and their files: (family, format, tied)
    -> (the transformers model, the .gguf file or safetensors folder)."""
    root = tmp_path_factory.mktemp("families")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    models, paths = {}, {}

    def get(family: str, fmt: str, tied: bool = False):
        if (family, tied) not in models:
            models[family, tied] = lf.hf_model(vocab, tied, seed=2 + int(tied), family=family)
        model = models[family, tied]
        if (family, fmt, tied) not in paths:
            name = f"{family}-{'tied' if tied else 'untied'}"
            paths[family, fmt, tied] = (
                lf.save_gguf(model, tok, root / f"{name}.gguf")
                if fmt == "gguf"
                else lf.save_hf(model, tok, root / name)
            )
        return model, paths[family, fmt, tied]

    return get
