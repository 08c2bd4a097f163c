"""BOS where the tokenizer asks for it, as transformers adds it: in front of prompts and of
every training document, never twice (a chat template may render it), from
tokenizer_config.json's add_bos_token or, without it, tokenizer.json's post-processor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chat_fixtures import save_tokenizer

from runtime.data import TokenStream
from runtime.prompts import chat_prompt
from runtime.tokenizer import prompt_ids
from runtime.weights.tokenizer import hf_tokenizer

TEXT = "What is the capital of France?"


def _folder(tmp_path, add_bos_token=None, post_processor=False):
    folder = tmp_path / "tok"
    save_tokenizer(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if post_processor:  # Llama 3's way: a template in tokenizer.json adds the BOS
        tok = json.loads((folder / "tokenizer.json").read_text())
        bos = tok["added_tokens"][1]  # "<s>"
        tok["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [bos["id"]], "tokens": ["<s>"]}},
        }  # fmt: skip
        (folder / "tokenizer.json").write_text(json.dumps(tok))
    return folder


@pytest.mark.parametrize("how", ["config", "post-processor", "none"])
def test_prompts_get_one_bos_as_transformers_gives_it(tmp_path, how):
    folder = _folder(tmp_path, add_bos_token={"config": True}.get(how),
                     post_processor=how == "post-processor")  # fmt: skip
    tok = hf_tokenizer(folder / "tokenizer.json")
    assert tok.add_bos == (how != "none")
    ids = prompt_ids(tok, TEXT)
    assert ids[1:] == tok.encode(TEXT) if tok.add_bos else ids == tok.encode(TEXT)
    assert ids.count(tok.bos_id) == (1 if tok.add_bos else 0)
    # the ChatML template renders {{ bos_token }} itself: no second one
    chat = prompt_ids(tok, chat_prompt(tok, TEXT))
    assert chat[0] == tok.bos_id and chat.count(tok.bos_id) == 1
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), bos_token="<s>"
    )
    if how == "config":  # a Llama tokenizer class reads add_bos_token; the generic one does not
        reference = transformers.LlamaTokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"), bos_token="<s>",
            eos_token="<|endoftext|>", add_bos_token=True, add_eos_token=False,
        )  # fmt: skip
    assert ids == reference(TEXT)["input_ids"]


def test_training_documents_start_with_bos(tmp_path):
    tok = hf_tokenizer(_folder(tmp_path, add_bos_token=True) / "tokenizer.json")
    docs = []
    for i, text in enumerate(["first document. " * 3, "second one, longer. " * 4]):
        docs.append(tmp_path / f"d{i}.txt")
        docs[-1].write_text(text)
    # one row of exactly the first epoch: both documents, each with BOS and separator
    total = sum(len(tok.encode(d.read_text())) + 2 for d in docs)
    stream = TokenStream(docs, tok, seq_len=total - 1, batch=1, seed=0, window=1)
    row = next(iter(stream))[0]
    assert row[0] == tok.bos_id and np.count_nonzero(row == tok.bos_id) == 2  # one per document
    assert np.count_nonzero(row == tok.eos_id) == 2  # each followed by the separator
    plain = TokenStream(docs, hf_tokenizer(_folder(tmp_path / "b") / "tokenizer.json"),
                        seq_len=total - 1, batch=1, seed=0, window=1)  # fmt: skip
    assert stream.fingerprint != plain.fingerprint  # a stream written without BOS: not resumed
