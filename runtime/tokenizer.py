"""Tokenizers: raw bytes (the default), byte-level BPE trained locally, or a `tokenizer.json`.

Every tokenizer has `name`, `vocab_size`, `eos_id` (-1 when there is none), `encode(text)`,
`decode(ids)` and `encode_bytes(data)`, which the data pipeline uses: it takes a document's raw
bytes and returns an int32 numpy array, so the byte tokenizer never builds a Python list of ints.
Numpy and `tokenizers` only; no JAX and no compiler imports.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

EOS_TOKEN = "<|endoftext|>"
# Looked up in this order in a foreign tokenizer.json; the first one present is the EOS.
EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|im_end|>")
TOKENIZER_FILE = "tokenizer.json"


def bos_prefix(tokenizer, first: int | None) -> list[int]:
    """[the BOS id] when the tokenizer asks for one in front of a text (`add_bos`: imported
    Llama-style tokenizers) and the ids (starting with `first`) lack it, else []: what
    transformers' tokenizer call adds. A chat template that renders the BOS itself gets none."""
    bos = getattr(tokenizer, "bos_id", -1)
    return [bos] if getattr(tokenizer, "add_bos", False) and bos >= 0 and first != bos else []


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A prompt's ids as the model reads them: BOS first where the tokenizer asks for it."""
    ids = tokenizer.encode(text)
    return bos_prefix(tokenizer, ids[0] if ids else None) + ids


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no EOS (documents are separated by blank lines)."""

    name = "byte"
    vocab_size = 256
    eos_id = -1

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        # Model output may hold any id (a larger model vocabulary, padding): keep only bytes.
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class _HFTokenizer:
    """Shared wrapper around a `tokenizers.Tokenizer`."""

    name = "hf"

    def __init__(self, tok, eos_id: int = -1):
        self._tok = tok
        self.eos_id = eos_id
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        # No BOS/EOS from a post-processor: the data pipeline places separators itself.
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return np.asarray(self.encode(data.decode("utf-8", errors="replace")), dtype=np.int32)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` into `directory` (created if needed); returns the file."""
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        self._tok.save(str(tmp))
        tmp.replace(path)  # atomic: a checkpoint never holds a half-written tokenizer
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _read_tokenizer_json(path: str | Path, what: str):
    """`tokenizers.Tokenizer.from_file` with one-line errors; `path` may be a directory."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(f"tokenizer file {path} not found; {what}")
    try:
        return Tokenizer.from_file(str(path)), path
    except Exception as e:  # the Rust side raises a bare Exception on bad JSON
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"tokenizer file {path} is not a valid tokenizer.json ({reason}); "
            f"replace it with a tokenizer.json saved by the `tokenizers` library"
        ) from None


class BPETokenizer(_HFTokenizer):
    """Byte-level BPE trained here with `tokenizers`, plus an `<|endoftext|>` special token.

    Lossless: any text round-trips through encode/decode. Training is deterministic for the
    same texts and vocabulary size. `vocab_size` is the size reached, which can be below the
    requested one when the texts are too small to learn that many merges.
    """

    name = "bpe"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(
                f"bpe vocab_size {vocab_size} is too small: it must be at least 257 "
                f"(256 byte tokens + {EOS_TOKEN}); set tokenizer.vocab_size, e.g. 8192"
            )
        tok = Tokenizer(models.BPE())
        # add_prefix_space=False keeps encode/decode an exact round trip.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok, tok.token_to_id(EOS_TOKEN))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Load from a directory holding `tokenizer.json` (as written by `save`) or the file."""
        tok, file = _read_tokenizer_json(
            path, "train one with tokenizer.kind: bpe, or fix the path"
        )
        eos = tok.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(
                f"tokenizer file {file} has no {EOS_TOKEN} token, so it was not saved by "
                f"BPETokenizer; load it with tokenizer.kind: hf-json instead"
            )
        return cls(tok, eos)


class HFJsonTokenizer(_HFTokenizer):
    """Any `tokenizer.json` (Hugging Face `tokenizers` format); EOS found by name."""

    name = "hf-json"

    def __init__(self, tok, eos_id: int = -1, path: Path | None = None):
        super().__init__(tok, eos_id)
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> HFJsonTokenizer:
        tok, file = _read_tokenizer_json(
            path, "set tokenizer.path to an existing tokenizer.json file"
        )
        eos = next((i for i in (tok.token_to_id(t) for t in EOS_CANDIDATES) if i is not None), -1)
        return cls(tok, eos, file)


AnyTokenizer = ByteTokenizer | BPETokenizer | HFJsonTokenizer


def make_tokenizer(
    kind: str,
    vocab_size: int = 0,
    path: str | Path | None = None,
    texts: Iterable[str] | None = None,
) -> AnyTokenizer:
    """Build the tokenizer a spec names.

    - `byte`: `vocab_size` must be 0 (unset) or 256.
    - `bpe`: loads `path` (a directory with `tokenizer.json`, or the file) when it exists,
      otherwise trains on `texts` with `vocab_size`.
    - `hf-json`: loads the `tokenizer.json` at `path`.
    - `gguf`: not handled here (the tokenizer comes with the GGUF weights).
    """
    if kind == "byte":
        if vocab_size not in (0, 256):
            raise ValueError(
                f"the byte tokenizer has 256 tokens, not {vocab_size}; "
                f"drop tokenizer.vocab_size or use tokenizer.kind: bpe"
            )
        return ByteTokenizer()
    if kind == "bpe":
        if path is not None and Path(path).exists():
            return BPETokenizer.load(path)
        if texts is None:
            where = f" (nothing at {path})" if path is not None else ""
            raise ValueError(
                f"a bpe tokenizer needs training texts or a saved tokenizer.json{where}; "
                f"pass texts or point tokenizer.path at a saved one"
            )
        return BPETokenizer.train(texts, vocab_size)
    if kind == "hf-json":
        if path is None:
            raise ValueError("tokenizer.kind hf-json needs tokenizer.path (a tokenizer.json file)")
        return HFJsonTokenizer.load(path)
    if kind == "gguf":
        raise ValueError(
            "tokenizer.kind gguf is read from the GGUF weight file by the GGUF loader, "
            "not by make_tokenizer; load it together with the weights"
        )
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose byte, bpe, hf-json or gguf")
