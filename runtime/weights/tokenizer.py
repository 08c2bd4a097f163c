"""Tokenizers that come with imported weights: from GGUF metadata, or a Hugging Face
`tokenizer.json` (+ `tokenizer_config.json` / `config.json` for the BOS/EOS ids).

Both are `runtime.tokenizer.HFJsonTokenizer`s (so `encode`, `decode`, `encode_bytes`,
`vocab_size`, `eos_id` follow the data pipeline's protocol) with `bos_id`, `add_bos` and the
model's `chat_template` string added. `encode` never adds BOS: prompts and training documents
get it from `runtime.tokenizer.bos_prefix` when `add_bos` says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime.tokenizer import EOS_CANDIDATES, HFJsonTokenizer

from .gguf_io import field, open_gguf

# llama.cpp token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
PRE_TOKENIZERS = ("gpt-2", "smollm")  # the llama.cpp pre-tokenizers `pre_tokenizer` knows


class ImportedTokenizer(HFJsonTokenizer):
    def __init__(
        self,
        tok,
        name: str,
        eos_id: int,
        bos_id: int,
        path,
        chat_template=None,
        add_bos: bool = False,
    ):
        super().__init__(tok, eos_id, Path(path))
        self.name = name
        self.bos_id = bos_id
        self.add_bos = add_bos
        self.chat_template = chat_template

    def __repr__(self) -> str:
        return (
            f"ImportedTokenizer({self.name}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id})"
        )


def pre_tokenizer(pre: str, path):
    """llama.cpp's pre-tokenizer names -> the `tokenizers` equivalent (tested ones only).
    A file without `tokenizer.ggml.pre` gets llama.cpp's "default" splitting, which has no
    exact `tokenizers` equivalent here, so it is refused rather than approximated."""
    from tokenizers import pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("gpt-2", "gpt2"):
        return byte_level
    if pre == "smollm":  # llama.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM: every digit is a word
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    raise ValueError(
        f"{path}: GGUF pre-tokenizer {pre!r} is not supported (supported: gpt-2, smollm); "
        "use the model's tokenizer.json with tokenizer.kind: hf-json instead"
    )


def gguf_tokenizer(path: str | Path) -> ImportedTokenizer:
    """Byte-level BPE rebuilt from `tokenizer.ggml.*` metadata with `tokenizers`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    r = open_gguf(path)
    kind = field(r, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"{path}: GGUF tokenizer model {kind!r} is not supported; only byte-level BPE "
            "('gpt2') can be rebuilt (SentencePiece 'llama' vocabularies cannot)"
        )
    tokens = field(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field(r, "tokenizer.ggml.merges", [])]
    types = field(r, "tokenizer.ggml.token_type") or [1] * len(tokens)
    tok = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    )
    tok.pre_tokenizer = pre_tokenizer(field(r, "tokenizer.ggml.pre", "default"), path)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, y in zip(tokens, types, strict=True)
            if y == CONTROL
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, normalized=False)
            for t, y in zip(tokens, types, strict=True)
            if y == USER_DEFINED
        ]
    )
    return ImportedTokenizer(
        tok,
        "gguf",
        eos_id=int(field(r, "tokenizer.ggml.eos_token_id", -1)),
        bos_id=int(field(r, "tokenizer.ggml.bos_token_id", -1)),
        path=path,
        chat_template=field(r, "tokenizer.chat_template"),
        add_bos=bool(field(r, "tokenizer.ggml.add_bos_token", False)),
    )


def _json(file: Path) -> dict:
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None


def _special_id(tok, config: dict, tok_config: dict, which: str) -> int | None:
    """An id from tokenizer_config.json's `<which>_token` or config.json's `<which>_token_id`."""
    text = tok_config.get(f"{which}_token")
    if isinstance(text, dict):
        text = text.get("content")
    if isinstance(text, str) and tok.token_to_id(text) is not None:
        return tok.token_to_id(text)
    value = config.get(f"{which}_token_id")
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if value is not None else None


def hf_tokenizer(path: str | Path) -> ImportedTokenizer:
    """`tokenizer.json` at `path` (the file or its directory); ids from the files beside it."""
    base = HFJsonTokenizer.load(path)
    folder = base.path.parent
    config, tok_config = _json(folder / "config.json"), _json(folder / "tokenizer_config.json")
    tok = base.backend
    eos = _special_id(tok, config, tok_config, "eos")
    if eos is None:
        found = (tok.token_to_id(t) for t in EOS_CANDIDATES)
        eos = next((i for i in found if i is not None), -1)
    bos = _special_id(tok, config, tok_config, "bos")
    return ImportedTokenizer(
        tok,
        "hf-json",
        eos_id=eos,
        bos_id=-1 if bos is None else bos,
        path=base.path,
        chat_template=tok_config.get("chat_template"),
        add_bos=_adds_bos(tok, tok_config, bos),
    )


def _adds_bos(tok, tok_config: dict, bos: int | None) -> bool:
    """Whether transformers puts BOS in front of a text: tokenizer_config.json's
    `add_bos_token` where it says (Llama 2), else tokenizer.json's post-processor (Llama 3)."""
    if "add_bos_token" in tok_config:
        return bool(tok_config["add_bos_token"])
    return bos is not None and tok.encode("a", add_special_tokens=True).ids[:1] == [bos]
