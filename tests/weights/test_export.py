"""`tandemc export`: our models as Hugging Face folders and GGUF files that transformers and
our own import read back, the run's tokenizer with them, and the models that are refused."""

from __future__ import annotations

import dataclasses
import inspect
import json

import jax
import jax.numpy as jnp
import llama_fixtures as lf
import numpy as np
import pytest
import torch

from compiler import nn
from compiler.ir import DecoderIR, RopeScalingIR
from runtime import checkpoint, run, weights
from runtime.cli import main
from runtime.tokenizer import BPETokenizer, ByteTokenizer
from runtime.weights import gguf_io

RTOL = 1e-4  # max |diff| relative to the largest reference logit, as in test_parity
TEXTS = ["def f(x):\n    return x  # ok", "Héllo wörld — 你好 🚀", "<|im_start|>hi<|im_end|>"]


def config(**changes) -> DecoderIR:
    base = dict(name="m", vocab=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)
    base |= dict(max_len=64, rope_theta=5000.0, norm_eps=1e-6)
    return DecoderIR(**(base | changes))


def random_params(cfg: DecoderIR, seed: int = 0) -> dict:
    """Our init with every leaf scaled by 1 + 0.3 N(0, 1): norms are not all ones."""
    rng = np.random.default_rng(seed)

    def noisy(a):
        scaled = np.asarray(a, np.float32) * (1 + 0.3 * rng.standard_normal(a.shape))
        return jnp.asarray(scaled, a.dtype)

    return jax.tree.map(noisy, nn.init_decoder(cfg, jax.random.PRNGKey(seed)))


def assert_same_params(a: dict, b: dict) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_gives_our_logits(tmp_path, tied):
    cfg = config(tie_embeddings=tied)
    params = random_params(cfg)
    weights.export_weights("hf", tmp_path, cfg, params)
    ids = np.random.default_rng(0).integers(0, cfg.vocab, (2, 20)).astype(np.int32)
    ours, _ = nn.decoder_forward(params, cfg, jnp.asarray(ids))
    with torch.no_grad():
        ref = hf_model(tmp_path)(torch.from_numpy(ids).long()).logits.numpy()
    diff = float(np.abs(np.asarray(ours) - ref).max())
    assert diff <= RTOL * float(np.abs(ref).max()), f"max |diff| {diff}"


def test_exported_drafter_is_a_transformers_assistant(tmp_path, models):
    """Greedy assisted generation with our drafter gives the target's own output."""
    target = models[False]
    weights.export_weights("hf", tmp_path, config(n_layers=1), random_params(config(n_layers=1)))
    drafter = hf_model(tmp_path)
    drafted = []
    drafter.register_forward_hook(lambda *_: drafted.append(1))
    ids = torch.from_numpy(np.random.default_rng(1).integers(3, 300, (1, 8))).long()
    settings = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        alone = target.generate(ids, **settings)
        assisted = target.generate(ids, assistant_model=drafter, **settings)
    assert drafted, "the drafter never ran"
    assert torch.equal(alone, assisted)


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
@pytest.mark.parametrize("dtype,tied", [("float32", False), ("float32", True), ("bfloat16", False)])
def test_our_import_reads_the_export_back_exactly(tmp_path, fmt, dtype, tied):
    cfg = config(dtype=dtype, tie_embeddings=tied)
    params = random_params(cfg)
    out = tmp_path / ("m.gguf" if fmt == "gguf" else "m")
    weights.export_weights(fmt, out, cfg, params)
    kind = "gguf" if fmt == "gguf" else "safetensors"
    arch = weights.read_architecture(kind, out)  # GGUF holds norm_eps as float32
    assert arch == pytest.approx({field: getattr(cfg, field) for field in arch}, rel=1e-6)
    assert_same_params(weights.load_weights(kind, out, cfg), params)


def test_gguf_q_and_k_rows_are_in_llama_cpp_order(tmp_path):
    cfg = config()
    params = random_params(cfg)
    weights.export_weights("gguf", tmp_path / "m.gguf", cfg, params)
    stored = {t.name: t for t in gguf_io.open_gguf(tmp_path / "m.gguf").tensors}
    canonical = dict(weights.layout.from_params(params, cfg))
    for name, heads in (("attn_q", cfg.n_heads), ("attn_k", cfg.n_kv_heads)):
        expected = lf.permute(canonical[f"layers.1.self_attn.{name[-1]}_proj.weight"], heads)
        np.testing.assert_array_equal(gguf_io.dequantize(stored[f"blk.1.{name}.weight"]), expected)


def _tokenizer(kind: str, files):
    """A tokenizer of each kind a run can have, and a model vocab that holds it."""
    if kind == "byte":
        return ByteTokenizer(), 256
    if kind == "bpe":  # fewer tokens than the model's ids: GGUF pads the vocabulary
        return BPETokenizer.train([inspect.getsource(json)], 280), 320
    source = files("gguf" if kind == "gguf" else "safetensors", "F32", False)
    return weights.load_tokenizer("gguf" if kind == "gguf" else "hf-json", source), 300


@pytest.mark.parametrize("kind", ["byte", "bpe", "gguf", "hf-json"])
def test_the_tokenizer_is_exported_with_the_same_ids(tmp_path, files, kind):
    from transformers import AutoTokenizer

    ours, vocab = _tokenizer(kind, files)
    cfg = config(vocab=vocab, n_layers=1)
    params = random_params(cfg)
    weights.export_weights("hf", tmp_path / "hf", cfg, params, ours)
    weights.export_weights("gguf", tmp_path / "m.gguf", cfg, params, ours)
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    back = weights.load_tokenizer("gguf", tmp_path / "m.gguf")
    for text in TEXTS:
        ids = ours.encode(text)
        assert hf(text, add_special_tokens=False).input_ids == ids, text
        assert back.encode(text) == ids, text
        assert back.decode(ids) == text
    assert hf.eos_token_id == (ours.eos_id if ours.eos_id >= 0 else None)
    assert back.eos_id == ours.eos_id and back.bos_id == getattr(ours, "bos_id", -1)
    assert back.chat_template == getattr(ours, "chat_template", None)
    tokens = gguf_io.field(gguf_io.open_gguf(tmp_path / "m.gguf"), "tokenizer.ggml.tokens")
    assert len(tokens) == vocab


def test_a_tokenizer_gguf_cannot_hold_is_left_out_and_said_so(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    word_level = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.save(str(tmp_path / "tokenizer.json"))
    ours = weights.load_tokenizer("hf-json", tmp_path / "tokenizer.json")
    cfg = config(n_layers=1)
    _, about = weights.export_weights("gguf", tmp_path / "m.gguf", cfg, random_params(cfg), ours)
    assert about.startswith("no vocabulary") and "--format hf" in about
    assert gguf_io.field(gguf_io.open_gguf(tmp_path / "m.gguf"), "tokenizer.ggml.model") == "none"


def test_a_model_that_is_not_llama_is_refused(tmp_path):
    cfg = config(mlp="gelu", norm="layernorm")
    with pytest.raises(ValueError, match=r"'m' is not a Llama decoder \(norm is layernorm"):
        weights.export_weights("hf", tmp_path, cfg, {})
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        weights.export_weights("onnx", tmp_path, config(), {})


# --- `tandemc export` on a spec: an imported large model, a Tandem small model, a drafter ----


@pytest.fixture(scope="module")
def trained(tmp_path_factory, files):
    """A spec whose large model is a GGUF file and whose drafter is trained for 2 steps."""
    root = tmp_path_factory.mktemp("export")
    gguf_file = files("gguf", "F32", False)
    (root / "text.txt").write_text(inspect.getsource(json.decoder))
    spec = root / "spec.yaml"
    spec.write_text(
        f"""tandem: 1
name: export-me
data: {{paths: ["{root / "text.txt"}"], seq_len: 16, val_fraction: 0}}
tokenizer: {{kind: gguf, path: "{gguf_file}"}}
models:
  large: {{d_model: {lf.D}, n_layers: {lf.LAYERS}, n_heads: {lf.HEADS},
          n_kv_heads: {lf.KV_HEADS}, d_ff: {lf.FF}, vocab: 300, rope_theta: {lf.THETA},
          trainable: false, init: {{from: gguf, path: "{gguf_file}"}}}}
  small: {{d_model: 32, n_layers: 1, n_heads: 2, vocab: 300}}
  drafter: {{d_model: 32, n_layers: 1, n_heads: 2, n_kv_heads: 1, vocab: 300}}
projections: {{l2s: {{from: large, to: small}}}}
wiring:
  - {{query: small, memory: large, via: l2s}}
  - {{query: drafter, kind: none}}
train:
  - {{name: drafter, trainable: [drafter], steps: 2, batch: 2,
     objective: {{kind: ce, model: drafter}}}}
shapes: {{batch: 1, max_len: 64}}
"""
    )
    run_dir = root / "run"
    run.train(run.open_run(spec, run_dir=run_dir, log=lambda *a: None))
    return spec, run_dir


def tandemc(spec, model: str, fmt: str, out, *more) -> int:
    return main(["export", str(spec), "--model", model, "--format", fmt, "--out", str(out), *more])


def test_cli_exports_the_trained_drafter(trained, tmp_path, capsys):
    from transformers import AutoTokenizer

    spec, run_dir = trained
    assert tandemc(spec, "drafter", "hf", tmp_path, "--run-dir", str(run_dir)) == 0
    info = checkpoint.finished(run_dir / "drafter")
    assert info["checkpoint"] in capsys.readouterr().out
    r = run.open_run(spec, run_dir=run_dir, log=lambda *a: None)
    ckpt = run_dir / "drafter" / info["checkpoint"]
    expected = checkpoint.load_subtree(ckpt, "drafter", run.initial_params(r)["drafter"])
    assert_same_params(
        weights.load_weights("safetensors", tmp_path, r.prog.model("drafter")), expected
    )
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf(TEXTS[0], add_special_tokens=False).input_ids == r.tokenizer.encode(TEXTS[0])
    assert hf.eos_token_id == r.tokenizer.eos_id == 2 and hf.bos_token_id == 1


def test_cli_exports_the_imported_large_model_as_gguf(trained, tmp_path, files):
    spec, run_dir = trained
    out = tmp_path / "large.gguf"
    assert tandemc(spec, "large", "gguf", out, "--run-dir", str(run_dir)) == 0
    source = files("gguf", "F32", False)
    cfg = DecoderIR(name="large", **weights.read_architecture("gguf", source))
    exported, imported = (weights.load_weights("gguf", p, cfg) for p in (out, source))
    assert_same_params(exported, imported)
    back, original = weights.load_tokenizer("gguf", out), weights.load_tokenizer("gguf", source)
    assert [back.encode(t) for t in TEXTS] == [original.encode(t) for t in TEXTS]


def test_cli_refuses_the_tandem_small_model(trained, tmp_path, capsys):
    spec, run_dir = trained
    out = tmp_path / "small.gguf"
    assert tandemc(spec, "small", "gguf", out, "--run-dir", str(run_dir)) == 2
    err = capsys.readouterr().err
    assert "model 'small' is a Tandem small model" in err and "Traceback" not in err
    assert "hidden states of model 'large'" in err
    assert "export 'large' or 'drafter' instead" in err
    assert not out.exists()


def test_cli_bad_model_format_and_missing_training_are_clean_errors(trained, tmp_path, capsys):
    spec, run_dir = trained
    assert tandemc(spec, "nope", "hf", tmp_path, "--run-dir", str(run_dir)) == 2
    assert "no model 'nope' (its models: large, small, drafter)" in capsys.readouterr().err
    assert tandemc(spec, "drafter", "onnx", tmp_path) == 2
    assert "unknown export format 'onnx'" in capsys.readouterr().err
    assert tandemc(spec, "drafter", "hf", tmp_path, "--run-dir", str(tmp_path / "empty")) == 2
    err = capsys.readouterr().err
    assert "stage 'drafter', which has not finished" in err and "Traceback" not in err


EXPORT_FAMILIES = [("llama3", False), ("qwen2", True), ("qwen2", False), ("head_dim", False)]


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
@pytest.mark.parametrize("family,tied", EXPORT_FAMILIES)
def test_other_families_export_and_read_back(tmp_path, family_files, fmt, family, tied):
    """Llama 3 RoPE scaling, Qwen2 biases and a separate head width survive an export: our
    import reads the same model and params back, and transformers loads the folder as the
    model it was made from (a Qwen2ForCausalLM for biases)."""
    model, source = family_files(family, "safetensors", tied)
    cfg = DecoderIR(name="m", **weights.read_architecture("safetensors", source))
    params = weights.load_weights("safetensors", source, cfg)
    out = tmp_path / ("m.gguf" if fmt == "gguf" else "m")
    weights.export_weights(fmt, out, cfg, params)
    kind = "gguf" if fmt == "gguf" else "safetensors"
    assert DecoderIR(name="m", **weights.read_architecture(kind, out)) == cfg
    assert_same_params(weights.load_weights(kind, out, cfg), params)
    if fmt == "hf":
        ids = np.random.default_rng(0).integers(0, cfg.vocab, (2, 20))
        back = hf_model(out)
        assert type(back) is type(model)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)).logits.numpy()
            got = back(torch.from_numpy(ids)).logits.numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


def test_biases_with_llama3_scaling_have_no_gguf_architecture(tmp_path, family_files):
    _, source = family_files("qwen2", "safetensors")
    cfg = DecoderIR(name="m", **weights.read_architecture("safetensors", source))
    params = weights.load_weights("safetensors", source, cfg)
    scaled = dataclasses.replace(cfg, rope_scaling=RopeScalingIR(factor=8.0))
    with pytest.raises(ValueError, match="no GGUF architecture holds both"):
        weights.export_weights("gguf", tmp_path / "m.gguf", scaled, params)
    assert not list(tmp_path.iterdir())
