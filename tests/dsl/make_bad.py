"""One-off generator for tests/dsl/bad/*.yaml (kept for reference; the files are committed)."""

BASE = """tandem: 1
name: bad
models:
  large: {d_model: 64, n_layers: 4, n_heads: 4}
  small: {d_model: 32, n_layers: 2, n_heads: 2}
projections:
  l2s: {from: large, to: small}
wiring:
  - {query: small, memory: large, via: l2s}
decode: {policy: speed, target: large, draft: small, gamma: 4, max_new_tokens: 32}
data: {seq_len: 64}
shapes: {max_len: 128}
"""
CASES = {
    "yaml_syntax": BASE.replace("  small: {d_model: 32", "   small: {d_model: 32"),
    "yaml_dupkey": BASE.replace("name: bad\n", "name: bad\nname: again\n"),
    "yaml_root": "- tandem: 1\n- name: bad\n",
    "yaml_empty": "# nothing here\n",
    "yaml_key": BASE.replace("name: bad\n", "name: bad\n1: one\n"),
    "unknown_top_key": BASE.replace("models:", "modles: {}\nmodels:"),
    "unknown_model_key": BASE.replace("{d_model: 32,", "{d_modle: 32, d_model: 32,"),
    "type_int": BASE.replace("n_layers: 4", "n_layers: eight"),
    "type_bool": BASE.replace("n_heads: 2}", "n_heads: 2, tie_embeddings: yes please}"),
    "type_float": BASE.replace("gamma: 4,", "gamma: 4, sampling: {temperature: hot},"),
    "enum_norm": BASE.replace("n_heads: 2}", "n_heads: 2, norm: batchnorm}"),
    "enum_policy": BASE.replace("policy: speed", "policy: sped"),
    "missing_name": BASE.replace("name: bad\n", ""),
    "missing_version": BASE.replace("tandem: 1\n", ""),
    "missing_model_field": BASE.replace("d_model: 32, ", ""),
    "range_layers": BASE.replace("n_layers: 2", "n_layers: 0"),
    "version_newer": BASE.replace("tandem: 1", "tandem: 2"),
    "expr_syntax": BASE.replace("n_heads: 2}", 'n_heads: 2, d_ff: "4 * * 32"}'),
    "expr_unknown_ref": BASE.replace(
        "n_heads: 2}", 'n_heads: 2, d_ff: "4 * ${models.big.d_model}"}'
    ),
    "expr_div_zero": BASE.replace(
        "n_heads: 2}", 'n_heads: 2, d_ff: "${models.small.d_model} // 0"}'
    ),
    "expr_ref_type": BASE.replace("n_heads: 2}", 'n_heads: 2, d_ff: "2 * ${models.small.norm}"}'),
    "expr_negative": BASE.replace("n_layers: 2", 'n_layers: "2 - 5"'),
    "ref_cycle": BASE.replace("d_model: 64", 'd_model: "${models.small.d_model} * 2"').replace(
        "d_model: 32", 'd_model: "${models.large.d_model} // 2"'
    ),
    "ref_unknown_whole": BASE.replace("target: large", 'target: "${models.big}"'),
    "heads_dim": BASE.replace("d_model: 64", "d_model: 66"),
    "kv_heads": BASE.replace("n_heads: 4}", "n_heads: 4, n_kv_heads: 3}"),
    "rope_dim": BASE.replace(
        "{d_model: 32, n_layers: 2, n_heads: 2}", "{d_model: 30, n_layers: 2, n_heads: 10}"
    ),
    "layer_map_range": BASE.replace(
        "via: l2s}", 'via: l2s, layers: "small[0:2] <- large[2:12:2]"}'
    ),
    "layer_map_sizes": BASE.replace("via: l2s}", 'via: l2s, layers: "small[0:2] <- large[1:4]"}'),
    "layer_map_syntax": BASE.replace("via: l2s}", 'via: l2s, layers: "small[0:2] <- large[2:5:2"}'),
    "layer_map_name": BASE.replace("via: l2s}", 'via: l2s, layers: "smal[0:2] <- large[2:5:2]"}'),
    "layer_map_twice": BASE.replace(
        "via: l2s}", 'via: l2s, layers: "small[0:2] <- large[1:3], small[1] <- large[4]"}'
    ),
    "unknown_projection": BASE.replace("via: l2s}", "via: l2x}"),
    "projection_endpoints": BASE.replace("{from: large, to: small}", "{from: small, to: large}"),
    "projection_hidden": BASE.replace(
        "{from: large, to: small}", "{from: large, to: small, type: mlp}"
    ),
    "unknown_model": BASE.replace("memory: large", "memory: larg"),
    "wiring_dup": BASE.replace(
        "  - {query: small, memory: large, via: l2s}\n",
        "  - {query: small, memory: large, via: l2s}\n  - {query: small, kind: none}\n",
    ),
    "wiring_none_via": BASE.replace(
        "{query: small, memory: large, via: l2s}", "{query: small, kind: none, via: l2s}"
    ),
    "wiring_missing_via": BASE.replace(
        "{query: small, memory: large, via: l2s}", "{query: small, memory: large}"
    ),
    "block_max": BASE.replace("via: l2s}", "via: l2s, block: 4, block_max: 2}"),
    "vocab_mismatch": BASE.replace("n_heads: 2}", "n_heads: 2, vocab: 300}"),
    "decode_no_draft": BASE.replace(" draft: small,", ""),
    "adaptive_no_section": BASE.replace("policy: speed", "policy: adaptive"),
    "standalone_independent": BASE.replace(
        "{query: small, memory: large, via: l2s}", "{query: small, kind: none}"
    ).replace("policy: speed", "policy: standalone"),
    "gamma_too_big": BASE.replace("gamma: 4", "gamma: 200"),
    "cache_overflow": BASE.replace("max_new_tokens: 32", "max_new_tokens: 125"),
    "trainable_unknown": BASE + "train:\n  - {name: t, trainable: [smal, l2s], steps: 10}\n",
    "trainable_frozen": BASE.replace("n_heads: 4}", "n_heads: 4, trainable: false}")
    + "train:\n  - {name: t, trainable: [large], steps: 10}\n",
    "distil_no_teacher": BASE
    + "train:\n  - {name: t, trainable: [small], steps: 10, objective: {kind: distil}}\n",
    "trained_draft_vocab": BASE.replace("gamma: 4,", "gamma: 4, draft_vocab: 48,")
    + "train:\n  - {name: t, trainable: [small, l2s], steps: 10,\n"
    + "     objective: {kind: distil, teacher: large, draft_vocab: 32}}\n",
    "fuse_layer": BASE.replace("via: l2s}", "via: l2s, fuse: 5}"),
    "fuse_partial": BASE.replace("via: l2s}", 'via: l2s, layers: "small[1] <- large[4]", fuse: 4}'),
    "predict_partial": BASE.replace(
        "via: l2s}", 'via: l2s, layers: "small[1] <- large[4]", predict: 1.0}'
    ),
    "seq_len_too_long": BASE
    + "train:\n  - {name: t, trainable: [small], steps: 10, seq_len: 256}\n",
    "mesh_axis": BASE + "sharding: [[heads, modle]]\n",
    "logical_axis": BASE + "sharding: [[head, model]]\n",
    "sharding_pair": BASE + "sharding: [[heads, model, data]]\n",
    "bpe_vocab": BASE.replace(
        "data: {seq_len: 64}", "data: {seq_len: 64}\ntokenizer: {kind: bpe, vocab_size: 100}"
    ),
    "no_data": BASE.replace("data: {seq_len: 64}", "data: {seq_len: 64, corpus: null}"),
    "generated_chat": BASE.replace(
        "data: {seq_len: 64}", "data: {seq_len: 64, generated: {model: large, chat_prompts: 8}}"
    ),
    "generated_empty": BASE.replace(
        "data: {seq_len: 64}",
        "data: {seq_len: 64, generated: {model: large, code_prompts: 0, chat_prompts: 0}}",
    ),
    "generated_model": BASE.replace(
        "data: {seq_len: 64}", "data: {seq_len: 64, generated: {model: lage, chat_prompts: 0}}"
    ),
    "generated_share": BASE.replace(
        "data: {seq_len: 64}",
        "data: {seq_len: 64, generated: {model: large, chat_prompts: 0, share: 0.75}}",
    )
    + "train:\n  - {name: s, trainable: [small, l2s], steps: 2, batch: 2}\n",
    "include_missing": BASE.replace("name: bad\n", "name: bad\ninclude: [nowhere.yaml]\n"),
    "include_cycle": "tandem: 1\nname: bad\ninclude: [includes/cycle_a.yaml]\n",
    "bench_drafter": BASE + "bench: {drafter: drafer}\n",
    "bench_gamma": BASE + "bench: {gammas: [2, 0]}\n",
    "bench_prompts": BASE + "bench: {code_prompts: 0}\n",
    "draft_vocab_big": BASE.replace("gamma: 4,", "gamma: 4, draft_vocab: 99999,"),
    "draft_vocab_standalone": BASE.replace("policy: speed", "policy: standalone").replace(
        "gamma: 4,", "gamma: 4, draft_vocab: 100,"
    ),
    "embed_from_wider": BASE.replace("n_heads: 4}", "n_heads: 4, init: {embed_from: small}}"),
    "copy_layers_shape": BASE.replace(
        "n_heads: 2}", "n_heads: 2, init: {embed_from: large, copy_layers: [3]}}"
    ),
    "copy_layers_range": BASE.replace(
        "small: {d_model: 32, n_layers: 2, n_heads: 2}",
        "small: {d_model: 64, n_layers: 2, n_heads: 4, init: {embed_from: large, "
        "copy_layers: [3, 4]}}",
    ),
    "projection_identity": BASE.replace(
        "l2s: {from: large, to: small}", "l2s: {from: large, to: small, init: identity}"
    ),
    "trainable_no_gradient": BASE
    + "train:\n  - {name: s, trainable: [large, l2s], objective: {kind: ce, model: large}, "
    "steps: 2}\n",
    "teacher_cache_nothing": BASE
    + "train:\n  - {name: s, trainable: [large], objective: {kind: ce, model: large}, "
    "steps: 2,\n     teacher_cache: {top_k: 8}}\n",
    "grad_accum_split": BASE
    + "train:\n  - {name: s, trainable: [large], objective: {kind: ce, model: large}, "
    "steps: 2,\n     batch: 6, scale: {grad_accum: 4}}\n",
    "rope_scaling_bands": BASE.replace(
        "n_heads: 4}",
        "n_heads: 4,\n          rope_scaling: {factor: 8, high_freq_factor: 1, "
        "original_max_position_embeddings: 64}}",
    ),
    "head_dim_odd": BASE.replace("n_heads: 2}", "n_heads: 2, head_dim: 7}"),
    "weights_unreadable": BASE.replace(
        "large: {d_model: 64, n_layers: 4, n_heads: 4}",
        "large: {n_heads: 4, init: {from: gguf, path: tests/dsl/bad/kv_heads.yaml}}",
    ),
    "tokenizer_unreadable": BASE.replace(
        "models:", "tokenizer: {kind: hf-json, path: nowhere/tokenizer.json}\nmodels:"
    ),
    "decode_ngram_adaptive": BASE.replace(
        "policy: speed, target: large, draft: small,",
        "policy: adaptive, target: large, draft: {kind: ngram, n: 2}, adaptive: {},",
    ),
    "decode_draft_memory": BASE.replace(
        "  small: {d_model: 32",
        "  other: {d_model: 64, n_layers: 2, n_heads: 4}\n  small: {d_model: 32",
    )
    .replace("l2s: {from: large,", "l2s: {from: other,")
    .replace("memory: large,", "memory: other,"),
    "override_key": "# overrides: decode.gama=3\n" + BASE,
    "override_syntax": "# overrides: decode.gamma\n" + BASE,
    "override_exists": "# overrides: +decode.gamma=3\n" + BASE,
    "override_type": "# overrides: decode.gamma=many\n" + BASE,
    "override_delete_required": "# overrides: ~models.small.d_model\n" + BASE,
}
if __name__ == "__main__":
    from pathlib import Path

    here = Path(__file__).parent / "bad"
    for name, text in CASES.items():
        (here / f"{name}.yaml").write_text(text)
    (here / "includes/cycle_a.yaml").write_text("include: [cycle_b.yaml]\n")
    (here / "includes/cycle_b.yaml").write_text("include: [cycle_a.yaml]\n")
    print(len(CASES))
