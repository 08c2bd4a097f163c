"""A spec leaves a pretrained model's architecture to its weight file: the values come from
the file's header (shown as such by `render --resolved` / `--provenance`), agree with what the
runtime loads, a stated value that contradicts the file is an error at that field, and a
gguf / hf-json tokenizer gives the vocabulary size. `tandemc check` reads headers only."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from compiler.build import build_ir
from compiler.ir import DecoderIR
from runtime import run, weights
from runtime.cli import main
from tandem_dsl import api
from tandem_dsl.diagnostics import SpecError

FILE_VALUES = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=160, vocab=300,
                   norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", pos="rope")  # fmt: skip
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip
FAMILY_VALUES = {
    "llama3": dict(rope_theta=10000.0, rope_scaling=LLAMA3, qkv_bias=False, head_dim=None),
    "qwen2": dict(rope_theta=50000.0, rope_scaling=None, qkv_bias=True, head_dim=None),
    "head_dim": dict(rope_theta=50000.0, rope_scaling=None, qkv_bias=False, head_dim=32),
}


def spec_file(tmp_path, fmt: str, path, model: str = "", tokenizer: bool = True) -> str:
    """A spec whose model `large` reads `path` and states only `model` (YAML mapping items)."""
    kind, tok = ("gguf", path) if fmt == "gguf" else ("hf-json", path / "tokenizer.json")
    lines = ["tandem: 1", "name: byo"]
    if tokenizer:
        lines.append(f'tokenizer: {{kind: {kind}, path: "{tok}"}}')
    lines += [
        "models:",
        f'  large: {{{model}{", " if model else ""}init: {{from: {fmt}, path: "{path}"}}}}',
        "shapes: {batch: 1, max_len: 64}",
    ]
    out = tmp_path / f"{fmt}.yaml"
    out.write_text("\n".join(lines) + "\n")
    return str(out)


CASES = [("llama3", "gguf", False), ("qwen2", "safetensors", True), ("qwen2", "gguf", False),
         ("head_dim", "safetensors", False)]  # fmt: skip


@pytest.mark.parametrize("family,fmt,tied", CASES)
def test_the_architecture_comes_from_the_file(tmp_path, family_files, family, fmt, tied):
    _, path = family_files(family, fmt, tied)
    loaded = api.load_checked(spec_file(tmp_path, fmt, path))
    tree = api.to_tree(loaded.spec.models["large"])
    expected = FILE_VALUES | FAMILY_VALUES[family] | {"tie_embeddings": tied}
    assert {k: tree[k] for k in expected} == expected
    # the model the spec compiles is the one the runtime reads from the file
    ours = build_ir(loaded.spec).model("large")
    theirs = DecoderIR(name="large", **weights.read_architecture(fmt, path))
    assert ours == DecoderIR(**(theirs.__dict__ | {"max_len": 64, "trainable": True}))


def test_provenance_and_the_resolved_spec_name_the_file(tmp_path, family_files, capsys):
    _, gguf = family_files("llama3", "gguf")
    _, folder = family_files("qwen2", "safetensors")
    spec = spec_file(tmp_path, "gguf", gguf)
    assert main(["render", spec, "--provenance"]) == 0
    rows = capsys.readouterr().out
    assert f"models.large.d_model: 64  # {gguf}: llama.embedding_length" in rows
    assert f"models.large.rope_scaling.factor: 4.0  # {gguf}: rope_freqs.weight" in rows
    assert f"models.large.tie_embeddings: false  # {gguf}: output.weight" in rows
    assert main(["render", spec, "--resolved"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["models"]["large"]["n_layers"] == 2
    assert main(["render", spec_file(tmp_path, "safetensors", folder), "--provenance"]) == 0
    rows = capsys.readouterr().out
    assert f"models.large.n_kv_heads: 2  # {folder / 'config.json'}: num_key_value_heads" in rows
    assert f"models.large.qkv_bias: true  # {folder / 'config.json'}: model_type" in rows


def test_a_model_left_to_the_file_loads_its_weights(tmp_path, family_files):
    _, path = family_files("qwen2", "gguf")
    r = run.open_run(spec_file(tmp_path, "gguf", path, "trainable: false"), run_dir=tmp_path / "r")
    params = run.initial_params(r)["large"]
    assert params["layers_1"]["attn"]["bk"].shape == (2, 16)


@pytest.mark.parametrize(
    "stated,field,line_text",
    [
        ("n_kv_heads: 4", "n_kv_heads", "have 2"),
        ("head_dim: 16", "head_dim", "have 32"),
        ("qkv_bias: true", "qkv_bias", "have False"),
        ("tie_embeddings: true", "tie_embeddings", "have False"),
    ],
)
def test_a_stated_value_the_file_contradicts_is_an_error_there(
    tmp_path, family_files, stated, field, line_text
):
    _, path = family_files("head_dim", "gguf")
    spec = spec_file(tmp_path, "gguf", path, stated)
    with pytest.raises(SpecError) as e:
        api.load(spec)
    (d,) = e.value.diagnostics
    assert (d.code, d.path) == ("E-CHECK-WEIGHTS", f"models.large.{field}")
    assert line_text in d.message and d.hint.startswith(f"remove {field}")
    col = open(spec).read().splitlines()[4].index(stated) + len(field) + 3
    assert (d.origin.source, d.origin.line, d.origin.col) == (spec, 5, col)


def test_a_rope_scaling_is_compared_by_its_frequencies(tmp_path, family_files):
    _, path = family_files("llama3", "gguf")
    same = "rope_scaling: {factor: 4.0, low_freq_factor: 2, high_freq_factor: 8, original_max_position_embeddings: 128}"  # noqa: E501
    assert api.load(spec_file(tmp_path, "gguf", path, same)).models["large"].rope_scaling
    other = same.replace("factor: 4.0", "factor: 8.0")
    with pytest.raises(SpecError, match="rope_scaling is .* but the weights"):
        api.load(spec_file(tmp_path, "gguf", path, other))


@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_the_vocabulary_size_comes_from_the_tokenizer(tmp_path, files, fmt):
    kind, tok = ("gguf", files(fmt, "F32", False)) if fmt == "gguf" else (
        "hf-json", files(fmt, "F32", False) / "tokenizer.json")  # fmt: skip
    spec = tmp_path / "tok.yaml"
    spec.write_text(
        f'tandem: 1\nname: tok\ntokenizer: {{kind: {kind}, path: "{tok}"}}\n'
        "models:\n  small: {d_model: 32, n_layers: 1, n_heads: 2}\n"
    )
    loaded = api.load_checked(spec)
    assert loaded.spec.models["small"].vocab == 300
    assert loaded.doc.value_origin(("models", "small", "vocab")).label().startswith(str(tok))


def test_a_file_that_is_not_there(tmp_path, capsys):
    missing = tmp_path / "later.gguf"
    spec = spec_file(tmp_path, "gguf", missing, tokenizer=False)
    assert main(["check", spec]) == 2
    err = capsys.readouterr().err
    assert "error[E-WEIGHTS-READ]" in err and "leaves d_model, n_layers, n_heads" in err
    assert f"{spec}:4:" in err and "does not exist" in err and "Traceback" not in err
    # a spec that states what it needs is checked before the file is fetched
    stated = "d_model: 64, n_layers: 2, n_heads: 4, vocab: 300"
    assert main(["check", spec_file(tmp_path, "gguf", missing, stated, tokenizer=False)]) == 0


def test_check_reads_headers_only(tmp_path, family_files):
    _, path = family_files("qwen2", "gguf")
    spec = spec_file(tmp_path, "gguf", path)
    code = (
        "import sys; from runtime.cli import main; "
        f"rc = main(['check', {spec!r}]); assert rc == 0; "
        "heavy = {'jax', 'gguf', 'safetensors', 'tokenizers', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
