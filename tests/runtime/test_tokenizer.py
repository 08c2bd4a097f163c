"""Tokenizers: byte round trip, local BPE training, save/load, tokenizer.json loading, errors."""

import pytest

from runtime.tokenizer import (
    EOS_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    HFJsonTokenizer,
    make_tokenizer,
)

TEXT = "def größe(x):\n    return x ** 2  # 平方 ✓ émoji 🐍\n"
SAMPLE = [
    "import os\nimport sys\n\ndef main(argv):\n    return len(argv)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i, i * i)\n",
] * 20


@pytest.fixture(scope="module")
def bpe():
    return make_tokenizer("bpe", 300, texts=iter(SAMPLE))


def test_byte_round_trip_non_ascii():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == TEXT
    assert tok.encode_bytes(TEXT.encode()).tolist() == ids
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("byte", 256, -1)
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character decodes with replacement
    assert tok.decode([104, 105, 300, -1]) == "hi"  # ids outside the bytes are dropped


def test_bpe_trains_and_round_trips(bpe):
    assert bpe.name == "bpe"
    assert 257 < bpe.vocab_size <= 300
    assert bpe.backend.id_to_token(bpe.eos_id) == EOS_TOKEN
    for text in [*SAMPLE[:3], TEXT, "  leading spaces\n\n\ttabs"]:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
    assert len(bpe.encode(SAMPLE[0])) < len(SAMPLE[0].encode()) * 0.7  # merges were learnt
    assert bpe.encode_bytes(TEXT.encode()).tolist() == bpe.encode(TEXT)


def test_bpe_training_is_deterministic(bpe):
    again = BPETokenizer.train(iter(SAMPLE), 300)
    assert again.backend.to_str() == bpe.backend.to_str()


def test_bpe_save_load_gives_identical_ids(bpe, tmp_path):
    file = bpe.save(tmp_path / "ckpt")
    assert file == tmp_path / "ckpt" / "tokenizer.json"
    for loaded in (BPETokenizer.load(tmp_path / "ckpt"), make_tokenizer("bpe", 300, file)):
        assert loaded.eos_id == bpe.eos_id and loaded.vocab_size == bpe.vocab_size
        assert loaded.encode(TEXT) == bpe.encode(TEXT)


def test_hf_json_loads_saved_bpe(bpe, tmp_path):
    file = bpe.save(tmp_path)
    tok = make_tokenizer("hf-json", path=str(file))
    assert isinstance(tok, HFJsonTokenizer) and tok.name == "hf-json"
    assert tok.eos_id == bpe.eos_id
    assert tok.encode(TEXT) == bpe.encode(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(ValueError, match=r"nope/tokenizer\.json not found"):
        make_tokenizer("hf-json", path=missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    for kind in ("hf-json", "bpe"):
        with pytest.raises(ValueError, match=r"bad\.json is not a valid tokenizer\.json") as e:
            make_tokenizer(kind, 300, path=bad)
        assert "\n" not in str(e.value)


def test_factory_errors():
    with pytest.raises(ValueError, match="gguf"):
        make_tokenizer("gguf", path="model.gguf")
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
        make_tokenizer("wordpiece")
    with pytest.raises(ValueError, match="needs tokenizer.path"):
        make_tokenizer("hf-json")
    with pytest.raises(ValueError, match="training texts"):
        make_tokenizer("bpe", 300)
    with pytest.raises(ValueError, match="at least 257"):
        make_tokenizer("bpe", 100, texts=SAMPLE)
    with pytest.raises(ValueError, match="256 tokens"):
        make_tokenizer("byte", 512)
    assert isinstance(make_tokenizer("byte", 256), ByteTokenizer)


def test_hf_json_eos_detection(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    def save(vocab, name):
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(tmp_path / name))
        return HFJsonTokenizer.load(tmp_path / name)

    both = save({"[UNK]": 0, "a": 1, "<|im_end|>": 2, "</s>": 3}, "both.json")
    assert both.eos_id == 3  # `</s>` is looked up first
    assert both.encode("a a") == [1, 1]
    assert save({"[UNK]": 0, "a": 1}, "none.json").eos_id == -1
