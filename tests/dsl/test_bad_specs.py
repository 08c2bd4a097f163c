"""Every diagnostic code, with its exact location, from a bad spec under tests/dsl/bad/.

A file's first lines may say `# overrides: a.b=1` to apply CLI overrides.
"""

from pathlib import Path

import pytest

from tandem_dsl import api
from tandem_dsl.diagnostics import SpecError

BAD = Path(__file__).parent / "bad"

# name: (code, line, col[, source file suffix]) of the first diagnostic.
EXPECTED = {
    "adaptive_no_section": ("E-CHECK-DECODE-MISSING", 10, 18),
    "bench_drafter": ("E-CHECK-UNKNOWN-MODEL", 13, 18),
    "bench_gamma": ("E-CHECK-GAMMA", 13, 21),
    "bench_prompts": ("E-CHECK-BENCH-PROMPTS", 13, 23),
    "block_max": ("E-CHECK-BLOCK", 9, 66),
    "bpe_vocab": ("E-CHECK-TOKENIZER", 12, 36),
    "cache_overflow": ("E-CHECK-CACHE", 10, 80),
    "copy_layers_range": ("E-CHECK-EMBED-INIT", 5, 92),
    "copy_layers_shape": ("E-CHECK-EMBED-INIT", 5, 88),
    "decode_draft_memory": ("E-CHECK-DRAFT", 11, 47),
    "decode_ngram_adaptive": ("E-CHECK-DRAFT", 10, 18),
    "decode_no_draft": ("E-CHECK-DECODE-MISSING", 10, 18),
    "distil_no_teacher": ("E-CHECK-OBJECTIVE", 14, 64),
    "draft_vocab_big": ("E-CHECK-DRAFT-VOCAB", 10, 77),
    "draft_vocab_standalone": ("E-CHECK-DRAFT-VOCAB", 10, 82),
    "trained_draft_vocab": ("E-CHECK-DRAFT-VOCAB", 15, 61),
    "fuse_layer": ("E-CHECK-FUSE", 9, 51),
    "fuse_partial": ("E-CHECK-FUSE", 9, 83),
    "predict_partial": ("E-CHECK-PREDICT", 9, 86),
    "embed_from_wider": ("E-CHECK-EMBED-INIT", 4, 68),
    "enum_norm": ("E-SCHEMA-ENUM", 5, 55),
    "enum_policy": ("E-SCHEMA-ENUM", 10, 18),
    "expr_div_zero": ("E-EXPR-VALUE", 5, 83),
    "expr_negative": ("E-VALUE-RANGE", 5, 35),
    "expr_ref_type": ("E-EXPR-TYPE", 5, 60),
    "expr_syntax": ("E-EXPR-SYNTAX", 5, 60),
    "expr_unknown_ref": ("E-EXPR-REF", 5, 60),
    "gamma_too_big": ("E-CHECK-GAMMA", 10, 61),
    "generated_chat": ("E-CHECK-DATA", 11, 61),
    "generated_empty": ("E-CHECK-DATA", 11, 32),
    "generated_model": ("E-CHECK-UNKNOWN-MODEL", 11, 40),
    "generated_share": ("E-CHECK-DATA", 11, 71),
    "heads_dim": ("E-CHECK-HEAD-DIM", 4, 46),
    "include_cycle": ("E-INCLUDE-CYCLE", 1, 11, "includes/cycle_b.yaml"),
    "include_missing": ("E-INCLUDE-MISSING", 3, 11),
    "kv_heads": ("E-CHECK-KV-HEADS", 4, 61),
    "head_dim_odd": ("E-CHECK-ROPE-DIM", 5, 59),
    "rope_scaling_bands": ("E-CHECK-ROPE-SCALING", 5, 55),
    "weights_unreadable": ("E-WEIGHTS-READ", 4, 48),
    "tokenizer_unreadable": ("E-WEIGHTS-READ", 3, 34),
    "layer_map_name": ("E-EXPR-VALUE", 9, 54),
    "layer_map_range": ("E-EXPR-VALUE", 9, 76),
    "layer_map_sizes": ("E-EXPR-VALUE", 9, 68),
    "layer_map_syntax": ("E-EXPR-SYNTAX", 9, 79),
    "layer_map_twice": ("E-EXPR-VALUE", 9, 80),
    "logical_axis": ("E-CHECK-LOGICAL-AXIS", 13, 13),
    "mesh_axis": ("E-CHECK-MESH-AXIS", 13, 20),
    "missing_model_field": ("E-SCHEMA-MISSING", 5, 3),
    "missing_name": ("E-SCHEMA-MISSING", 1, 1),
    "missing_version": ("E-SCHEMA-MISSING", 1, 1),
    "no_data": ("E-CHECK-DATA", 11, 7),
    "override_delete_required": ("E-SCHEMA-MISSING", 6, 3),
    "override_exists": ("E-OVERRIDE-EXISTS", 1, 2, "cli:1"),
    "override_key": ("E-OVERRIDE-KEY", 1, 1, "cli:1"),
    "override_syntax": ("E-OVERRIDE-SYNTAX", 1, 1, "cli:1"),
    "override_type": ("E-SCHEMA-TYPE", 1, 14, "cli:1"),
    "projection_identity": ("E-CHECK-PROJECTION-INIT", 7, 39),
    "teacher_cache_nothing": ("E-CHECK-TEACHER-CACHE", 15, 21),
    "grad_accum_split": ("E-CHECK-GRAD-ACCUM", 15, 36),
    "projection_endpoints": ("E-CHECK-PROJECTION-ENDPOINTS", 9, 40),
    "projection_hidden": ("E-CHECK-PROJECTION-HIDDEN", 7, 39),
    "range_layers": ("E-SCHEMA-RANGE", 5, 34),
    "ref_cycle": ("E-REF-CYCLE", 4, 21),
    "ref_unknown_whole": ("E-EXPR-REF", 10, 34),
    "rope_dim": ("E-CHECK-ROPE-DIM", 5, 46),
    "seq_len_too_long": ("E-CHECK-SEQ-LEN", 14, 55),
    "sharding_pair": ("E-CHECK-SHARDING-RULE", 13, 12),
    "standalone_independent": ("E-CHECK-STANDALONE", 10, 52),
    "trainable_frozen": ("E-CHECK-FROZEN", 14, 27),
    "trainable_unknown": ("E-CHECK-UNKNOWN-TRAINABLE", 14, 27),
    "trainable_no_gradient": ("E-CHECK-TRAINABLE", 14, 34),
    "type_bool": ("E-SCHEMA-TYPE", 5, 65),
    "type_float": ("E-SCHEMA-TYPE", 10, 88),
    "type_int": ("E-SCHEMA-TYPE", 4, 34),
    "unknown_model": ("E-CHECK-UNKNOWN-MODEL", 9, 28),
    "unknown_model_key": ("E-SCHEMA-UNKNOWN-KEY", 5, 11),
    "unknown_projection": ("E-CHECK-UNKNOWN-PROJECTION", 9, 40),
    "unknown_top_key": ("E-SCHEMA-UNKNOWN-KEY", 3, 1),
    "version_newer": ("E-VERSION", 1, 9),
    "vocab_mismatch": ("E-CHECK-VOCAB", 10, 47),
    "wiring_dup": ("E-CHECK-WIRING-DUP", 10, 13),
    "wiring_missing_via": ("E-CHECK-WIRING-MISSING", 9, 5),
    "wiring_none_via": ("E-CHECK-WIRING-NONE", 9, 32),
    "yaml_dupkey": ("E-YAML-DUPKEY", 3, 1),
    "yaml_empty": ("E-YAML-EMPTY", 1, 1),
    "yaml_key": ("E-YAML-KEY", 3, 1),
    "yaml_root": ("E-YAML-ROOT", 1, 1),
    "yaml_syntax": ("E-YAML-SYNTAX", 5, 4),
}


def _overrides(path: Path) -> list[str]:
    prefix = "# overrides: "
    lines = path.read_text().splitlines()
    return [line[len(prefix) :].strip() for line in lines if line.startswith(prefix)]


def test_every_bad_spec_has_an_expectation():
    assert {p.stem for p in BAD.glob("*.yaml")} == set(EXPECTED)
    assert len(EXPECTED) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_spec(name):
    code, line, col, *source = EXPECTED[name]
    path = BAD / f"{name}.yaml"
    with pytest.raises(SpecError) as info:
        api.load(path, _overrides(path))
    first = info.value.diagnostics[0]
    assert (first.code, first.origin.line, first.origin.col) == (code, line, col), first.render()
    assert first.origin.source.endswith(source[0] if source else f"{name}.yaml")
    text = info.value.render()
    assert f"error[{code}]" in text and "__ANON" not in text
    if first.origin.line and not first.origin.source.startswith("python:"):
        assert "^" in text  # a caret under the span


def test_all_errors_of_a_stage_are_reported(tmp_path):
    spec = (BAD / "heads_dim.yaml").read_text().replace("n_heads: 2}", "n_heads: 2, n_kv_heads: 3}")
    (tmp_path / "two.yaml").write_text(spec)
    with pytest.raises(SpecError) as info:
        api.load(tmp_path / "two.yaml")
    assert info.value.codes == ["E-CHECK-HEAD-DIM", "E-CHECK-KV-HEADS"]


def test_unknown_key_hint_is_did_you_mean():
    with pytest.raises(SpecError) as info:
        api.load(BAD / "unknown_model_key.yaml")
    assert info.value.diagnostics[0].hint == "did you mean 'd_model'?"
    assert info.value.diagnostics[0].path == "models.small.d_modle"


def test_expression_caret_points_inside_the_string():
    with pytest.raises(SpecError) as info:
        api.load(BAD / "expr_unknown_ref.yaml")
    rendered = info.value.render().splitlines()
    source, caret = rendered[1], rendered[2]
    start = caret.index("^")
    assert source[start : start + caret.count("^")] == "${models.big.d_model}"
