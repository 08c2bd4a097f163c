"""`init: {from: gguf | safetensors}` and `tokenizer.kind: gguf | hf-json` through runtime.run."""

from __future__ import annotations

import dataclasses

import jax
import llama_fixtures as lf
import numpy as np
import pytest

from runtime import run, weights
from runtime.errors import UserError
from tandem_dsl.diagnostics import SpecError


def write_spec(tmp_path, fmt: str, path, d_model: int = lf.D) -> str:
    kind = "gguf" if fmt == "gguf" else "hf-json"
    tok_path = path if fmt == "gguf" else path / "tokenizer.json"
    spec = tmp_path / f"{fmt}.yaml"
    spec.write_text(
        f"""tandem: 1
name: imported-{fmt}
tokenizer: {{kind: {kind}, path: "{tok_path}"}}
models:
  large: {{d_model: {d_model}, n_layers: {lf.LAYERS}, n_heads: {lf.HEADS},
          n_kv_heads: {lf.KV_HEADS}, d_ff: {lf.FF}, vocab: 300, rope_theta: {lf.THETA},
          trainable: false, init: {{from: {fmt}, path: "{path}"}}}}
shapes: {{batch: 1, max_len: 64}}
"""
    )
    return str(spec)


@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_initial_params_load_the_file(tmp_path, files, fmt):
    path = files(fmt, "F32", False)
    r = run.open_run(write_spec(tmp_path, fmt, path), run_dir=tmp_path / "run")
    assert r.tokenizer.eos_id == 2 and r.tokenizer.bos_id == 1
    assert r.tokenizer.chat_template == lf.CHAT_TEMPLATE
    params = run.initial_params(r)["large"]
    expected = weights.load_weights(fmt, path, r.prog.model("large"))
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_contradicting_spec_is_an_error_at_the_field(tmp_path, files):
    path = files("gguf", "F32", False)
    with pytest.raises(SpecError) as e:
        run.open_run(write_spec(tmp_path, "gguf", path, d_model=128), run_dir=tmp_path / "run")
    (d,) = e.value.diagnostics  # head_dim (null: d_model / n_heads) follows d_model
    assert d.code == "E-CHECK-WEIGHTS" and d.path == "models.large.d_model"
    assert "d_model is 128, but the weights" in d.message and "have 64" in d.message
    assert (d.origin.line, d.origin.col) == (5, 20)


def test_the_runtime_guard_names_both_values(tmp_path, files):
    """IR built in Python (not a checked spec) is checked when the weights load."""
    path = files("gguf", "F32", False)
    r = run.open_run(write_spec(tmp_path, "gguf", path), run_dir=tmp_path / "run")
    r.prog = dataclasses.replace(
        r.prog, models=(dataclasses.replace(r.prog.model("large"), d_ff=64),)
    )
    with pytest.raises(UserError, match="d_ff: spec says 64, weights have 160"):
        run.initial_params(r)
