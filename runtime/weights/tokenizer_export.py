"""The run's tokenizer in the files other tools read: `tokenizer.json` and
`tokenizer_config.json` in a Hugging Face folder (for `AutoTokenizer`), and the
`tokenizer.ggml.*` metadata of a GGUF file (byte-level BPE), the inverse of `gguf_tokenizer`.

`for_export` describes every tokenizer a run can have the same way:
- gguf / hf-json (imported with the weights): its BPE, BOS/EOS ids, chat template, add_bos;
- bpe (trained by tandem-dsl, `<run dir>/tokenizer.json`): its BPE, EOS `<|endoftext|>`;
- byte (tandem-dsl's own, ids = UTF-8 byte values): an equivalent byte-level BPE of 256
  tokens without merges, so that other tools give the same ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime.tokenizer import ByteTokenizer

from .tokenizer import CONTROL, NORMAL, PRE_TOKENIZERS, UNUSED, USER_DEFINED, pre_tokenizer


@dataclass(frozen=True)
class ExportTokenizer:
    backend: object  # a `tokenizers.Tokenizer`
    bos_id: int  # -1: none
    eos_id: int  # -1: none
    chat_template: str | None
    add_bos: bool
    about: str  # what it is, for the export's report

    def token(self, i: int) -> str | None:
        return self.backend.id_to_token(i) if i >= 0 else None


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: the alphabet byte-level BPE writes bytes in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def byte_level_equivalent():
    """A `tokenizers.Tokenizer` giving the byte tokenizer's ids: token i is byte i."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {char: b for b, char in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizer("gpt-2", "the byte tokenizer")
    tok.decoder = decoders.ByteLevel()
    return tok


def for_export(tok) -> ExportTokenizer:
    """The run's tokenizer (`runtime.run.Run.tokenizer`) as an ExportTokenizer."""
    if isinstance(tok, ByteTokenizer):
        about = (
            "tandem-dsl's byte tokenizer (ids = UTF-8 byte values), written as an equivalent "
            "byte-level BPE of 256 tokens without merges"
        )
        return ExportTokenizer(byte_level_equivalent(), -1, -1, None, False, about)
    abouts = {
        "gguf": "the tokenizer of the imported GGUF file",
        "hf-json": f"the imported tokenizer.json ({getattr(tok, 'path', '')})",
        "bpe": "tandem-dsl's BPE tokenizer trained for this run",
    }
    return ExportTokenizer(
        tok.backend,
        getattr(tok, "bos_id", -1),
        tok.eos_id,
        getattr(tok, "chat_template", None),
        getattr(tok, "add_bos", False),
        abouts.get(tok.name, f"the run's {tok.name} tokenizer"),
    )


def write_hf_files(folder: Path, tok: ExportTokenizer, max_len: int) -> list[str]:
    """tokenizer.json and tokenizer_config.json (what `AutoTokenizer` reads); their names."""
    tok.backend.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": tok.add_bos,
        "add_eos_token": False,
        "bos_token": tok.token(tok.bos_id),
        "eos_token": tok.token(tok.eos_id),
        "chat_template": tok.chat_template,
    }
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json"]


def _pre_tokenizer_name(backend) -> str | None:
    """The llama.cpp name of the backend's pre-tokenizer, if it is one `pre_tokenizer` builds."""
    from tokenizers import Tokenizer, models

    def as_json(tok) -> dict:
        return json.loads(tok.to_str())["pre_tokenizer"]

    ours = as_json(backend)
    for name in PRE_TOKENIZERS:
        candidate = Tokenizer(models.BPE())
        candidate.pre_tokenizer = pre_tokenizer(name, "")
        if as_json(candidate) == ours:
            return name
    return None


def add_gguf_vocabulary(writer, tok: ExportTokenizer, vocab: int) -> str:
    """Writes the `tokenizer.ggml.*` metadata of a byte-level BPE with `vocab` tokens (ids the
    tokenizer lacks become unused `[PAD<i>]` tokens, as llama.cpp's converter pads); returns
    what was written. A tokenizer GGUF cannot describe gets `tokenizer.ggml.model: none`."""
    spec = json.loads(tok.backend.to_str())
    pre = _pre_tokenizer_name(tok.backend)
    if spec["model"]["type"] != "BPE" or spec.get("normalizer") or pre is None:
        writer.add_tokenizer_model("none")
        return (
            f"no vocabulary ({tok.about} is not a byte-level BPE with a gpt-2 or smollm "
            "pre-tokenizer, which is what GGUF's gpt2 tokenizer model holds); export with "
            "--format hf for a folder with its tokenizer.json"
        )
    size = tok.backend.get_vocab_size(with_added_tokens=True)
    if size > vocab:
        raise ValueError(f"the tokenizer has {size} tokens but the model's vocab is {vocab}")
    by_id = {i: t for t, i in tok.backend.get_vocab(with_added_tokens=True).items()}
    added = tok.backend.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(by_id[i])
            special = i in added and added[i].special
            types.append(CONTROL if special else USER_DEFINED if i in added else NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if tok.bos_id >= 0:
        writer.add_bos_token_id(tok.bos_id)
    if tok.eos_id >= 0:
        writer.add_eos_token_id(tok.eos_id)
    writer.add_add_bos_token(tok.add_bos)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)
    return f"{tok.about}: {size} tokens, {len(merges)} merges, pre-tokenizer {pre}"
