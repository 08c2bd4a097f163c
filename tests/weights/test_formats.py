"""GGUF block decoding, tokenizers from GGUF / tokenizer.json, and the errors users see."""

from __future__ import annotations

import dataclasses
import json
import shutil

import llama_fixtures as lf
import numpy as np
import pytest

from compiler.ir import DecoderIR
from runtime import weights
from runtime.weights import gguf_io

TEXTS = [
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Héllo wörld — 你好, мир! 🚀 naïve café",
    "x = [1,  2,   3]\ny =  10\n\t1",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "  leading and trailing  ",
    "",
]


def cfg_of(fmt, path, **changes) -> DecoderIR:
    arch = weights.read_architecture(fmt, path)
    return dataclasses.replace(DecoderIR(name="large", **arch), **changes)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16"])
def test_dequantize_matches_an_independent_decoder(tmp_path, qtype):
    """gguf's dequantize (through our reader) equals a hand-written decoder of the blocks."""
    import gguf

    rng = np.random.default_rng(0)
    a = (rng.standard_normal((8, 96)) * rng.uniform(0.1, 3, (8, 1))).astype(np.float32)
    qt = gguf.GGMLQuantizationType[qtype]
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    stored = gguf.quants.quantize(a, qt)
    w.add_tensor("t", stored, raw_dtype=qt if qtype.startswith("Q") or qtype == "BF16" else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (t,) = gguf_io.open_gguf(tmp_path / "t.gguf").tensors
    ours = gguf_io.dequantize(t)
    assert ours.shape == a.shape and ours.dtype == np.float32
    if qtype.startswith("Q"):
        expected = lf.decode_blocks(stored, qtype, a.shape)
        np.testing.assert_array_equal(ours, expected)
    else:
        np.testing.assert_array_equal(ours, lf.rounded(a, qtype))
    assert np.abs(ours - a).max() <= {"Q8_0": 0.02, "Q4_0": 0.4, "Q4_1": 0.4}.get(qtype, 0.02) * 3


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(48, 5)
    for heads in (1, 2, 3, 6):
        np.testing.assert_array_equal(gguf_io.unpermute_qk(lf.permute(w, heads), heads), w)
    assert not np.array_equal(lf.permute(w, 3), w)


def test_architecture_from_both_formats(files):
    for fmt in ("gguf", "safetensors"):
        for tied in (False, True):
            arch = weights.read_architecture(fmt, files(fmt, "F32", tied))
            assert arch["d_model"] == lf.D and arch["n_layers"] == lf.LAYERS
            assert (arch["n_heads"], arch["n_kv_heads"], arch["d_ff"]) == (
                lf.HEADS,
                lf.KV_HEADS,
                lf.FF,
            )
            assert arch["rope_theta"] == lf.THETA and abs(arch["norm_eps"] - lf.EPS) < 1e-9
            assert arch["tie_embeddings"] == tied and arch["vocab"] == 300


@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_tokenizer_matches_the_original(files, tok, fmt):
    path = files(fmt, "F32", False)
    ours = weights.load_tokenizer(fmt, path)
    assert ours.vocab_size == tok.get_vocab_size() == 300
    assert ours.bos_id == tok.token_to_id("<|im_start|>")
    assert ours.eos_id == tok.token_to_id("<|im_end|>")
    assert ours.chat_template == lf.CHAT_TEMPLATE
    assert ours.name == ("gguf" if fmt == "gguf" else "hf-json")
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == tok.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == text
        np.testing.assert_array_equal(ours.encode_bytes(text.encode()), np.array(ids, np.int32))
    assert ours.encode("<|im_end|>") == [ours.eos_id]  # control tokens are single tokens


@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_spec_contradicting_the_weights_names_both_values(files, fmt):
    path = files(fmt, "F32", False)
    bad = cfg_of(fmt, path, d_model=32, n_heads=2, n_kv_heads=2)
    with pytest.raises(ValueError, match="d_model: spec says 32, weights have 64") as e:
        weights.load_weights(fmt, path, bad)
    assert "n_heads: spec says 2, weights have 4" in str(e.value) and str(path) in str(e.value)
    with pytest.raises(ValueError, match="tie_embeddings: spec says True, weights have False"):
        weights.load_weights(fmt, path, cfg_of(fmt, path, tie_embeddings=True))
    with pytest.raises(ValueError, match="rope_theta: spec says 10000.0, weights have 50000.0"):
        weights.load_weights(fmt, path, cfg_of(fmt, path, rope_theta=10000.0))


def test_missing_and_corrupt_files(files, tmp_path):
    cfg = cfg_of("gguf", files("gguf", "F32", False))
    with pytest.raises(ValueError, match="does not exist.*tandemc pull smollm2-135m --dir"):
        weights.load_weights("gguf", tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf", cfg)
    with pytest.raises(ValueError, match="config.json does not exist"):
        weights.load_weights("safetensors", tmp_path, cfg)
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        weights.read_architecture("gguf", tmp_path / "x.gguf")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(files("gguf", "F32", False).read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        weights.load_weights("gguf", truncated, cfg)
    with pytest.raises(ValueError, match="unknown weight format"):
        weights.load_weights("onnx", tmp_path, cfg)


def test_unsupported_extras_are_rejected(tmp_path, tok, models, files):
    """A bias tensor would be silently dropped: it is an error instead (q/k/v biases are
    Qwen2's; no family has an output-projection bias)."""
    extra = {"blk.0.attn_output.bias": np.ones(lf.D, np.float32)}
    path = lf.save_gguf(models[False], tok, tmp_path / "bias.gguf", "F32", extra)
    with pytest.raises(ValueError, match="'blk.0.attn_output.bias' has no place"):
        weights.load_weights("gguf", path, cfg_of("gguf", path))
    folder = tmp_path / "scaled"
    shutil.copytree(files("safetensors", "F32", False), folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="RoPE scaling"):
        weights.read_architecture("safetensors", folder)


def test_unsupported_tokenizer_metadata_is_refused(tmp_path, models, tok, monkeypatch):
    import gguf

    monkeypatch.setattr(gguf.GGUFWriter, "add_tokenizer_pre", lambda self, pre: None)
    path = lf.save_gguf(models[False], tok, tmp_path / "nopre.gguf")
    with pytest.raises(ValueError, match="pre-tokenizer 'default' is not supported"):
        weights.load_tokenizer("gguf", path)


@pytest.mark.parametrize("family", ["llama", "llama3", "qwen2"])
def test_the_header_reader_agrees_with_gguf(family_files, family):
    """`tandemc check`'s own GGUF header reader sees what the `gguf` package sees: every
    metadata value (long arrays as their length) and every tensor's dims and data offset."""
    from tandem_dsl import gguf_header

    _, path = family_files(family, "gguf")
    ours = gguf_header.read_header(path)
    reader = gguf_io.open_gguf(path)
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = f.contents()
        if isinstance(value, list) and len(value) > gguf_header.KEPT_ITEMS:
            value = gguf_header.ArrayLength(len(value))
        assert ours.metadata[key] == pytest.approx(value), key
    assert set(ours.metadata) == {k for k in reader.fields if not k.startswith("GGUF.")}
    assert {
        t.name: (tuple(int(d) for d in t.shape), int(t.data_offset)) for t in reader.tensors
    } == {name: (info.dims, info.offset) for name, info in ours.tensors.items()}


@pytest.mark.parametrize(
    "head_dim,theta,scaling",
    [(16, 10000.0, (4.0, 1.0, 4.0, 64)), (32, 10000.0, (2.0, 2.0, 6.0, 256)),
     (128, 500000.0, (8.0, 1.0, 4.0, 8192))],
)  # fmt: skip
def test_llama3_frequencies_are_transformers(head_dim, theta, scaling):
    """Our llama3 rule gives transformers' frequencies, and a GGUF file's divisors (float32)
    give back a scaling with the same frequencies."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tandem_dsl import rope_scaling

    names = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    ours = dict(zip(names, scaling, strict=True), rope_type="llama3")
    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=2 * scaling[3], rope_scaling=dict(ours),
                         rope_theta=theta)  # fmt: skip
    theirs = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")[0].double().numpy()
    freqs = rope_scaling.frequencies(head_dim, theta, ours)
    np.testing.assert_allclose(freqs, theirs, rtol=1e-6)
    base = rope_scaling.base_frequencies(head_dim, theta)
    divisors = np.float32(np.array(base) / theirs).tolist()
    back = rope_scaling.llama3_from_divisors(divisors, head_dim, theta)
    assert back is not None and rope_scaling.same_frequencies(
        rope_scaling.frequencies(head_dim, theta, back), freqs
    )
    assert (
        rope_scaling.llama3_from_divisors([1.0] + divisors[1:-1] + [1.0], head_dim, theta) is None
    )
