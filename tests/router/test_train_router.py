"""`tandemc run SPEC train-router` end to end on a tiny random-weight tandem: collection,
fit, checkpoint and final report, skip when done, resume from the data and the checkpoint;
`bench-rules` prints every rule with identical greedy output (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime import router, run

SPEC = """
tandem: 1
name: tiny-router
data: {corpus: stdlib, seq_len: 32}
models:
  large: {d_model: 32, n_layers: 2, n_heads: 2}
  small: {d_model: 16, n_layers: 1, n_heads: 2}
projections:
  l2s: {from: large, to: small}
wiring:
  - {query: small, memory: large, via: l2s, block: 2}
decode:
  policy: adaptive
  target: large
  draft: small
  adaptive: {rule: threshold, threshold: 0.6, max_gamma: 4, top_k: 3, hidden: 8}
  max_new_tokens: 12
shapes: {batch: 1, max_len: 64}
"""
SMALL = dict(batches=2, rows=2, prompt_len=16, rounds=4, steps=60)


@pytest.fixture
def r(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    return run.open_run(spec, run_dir=tmp_path / "run", log=lambda *a: None)


def test_train_router_stage(r):
    rep = router.train_router(r, **SMALL)
    stage = r.run_dir / "router"
    final = json.loads((stage / "final.json").read_text())
    assert final["checkpoint"] == "step_00000060" and (stage / final["checkpoint"]).is_dir()
    # 2 batches x 2 rows x up to 4 rounds x 4 drafts, rows stop after 12 tokens
    assert 16 <= rep["positions"] <= 64 and rep["positions"] % 4 == 0
    assert rep["val_positions"] + rep["train_positions"] == rep["positions"]
    assert 0.0 <= rep["val"]["auc_router"] <= 1.0 or np.isnan(rep["val"]["auc_router"])
    assert sum(b["n"] for b in rep["val"]["calibration"]) == rep["val_positions"]
    w = router.load_router(r)
    assert w["w1"].shape == (1 + 3 + 3 * 16, 8)
    # done: skipped; the stored report comes back
    assert router.train_router(r, **SMALL) == final
    # killed before the report: the data and the last checkpoint are reused
    (stage / "final.json").unlink()
    again = router.train_router(r, **SMALL)
    assert again["positions"] == rep["positions"]
    np.testing.assert_allclose(router.load_router(r)["w1"], w["w1"])


@pytest.mark.slow
def test_bench_rules_identical_outputs(r):
    router.train_router(r, **SMALL)
    out = router.bench_rules(r, batch=2, prompt_len=16, repeats=1, gammas=(2,), conf=(0.7,))
    rules = out["rules"]
    assert {"router threshold 0.6", "router expected_gain", "+2/-1 heuristic"} <= set(rules)
    assert all(row["identical"] for row in rules.values())


def test_spec_rules_generate_like_the_large_model(tmp_path, r):
    """`tandemc run SPEC generate` under every rule the spec can name equals greedy M_L."""
    prompts = ["def f(x):", "import os\n"]
    with pytest.raises(run.UserError, match="train-router"):
        run.generate(r, prompts)  # threshold without a trained router: a clear error
    router.train_router(r, **SMALL)
    spec = tmp_path / "tiny.yaml"
    ref = run.generate(r, prompts, run.autoregressive(r.prog.decode)).tokens
    for rule in ("threshold", "expected_gain", "heuristic", "confidence", "fixed"):
        ri = run.open_run(spec, [f"decode.adaptive.rule={rule}"], r.run_dir, log=lambda *a: None)
        out = run.generate(ri, prompts)
        assert out.tokens == ref, rule
        assert out.stats["rounds"] > 0
    other = run.open_run(spec, ["decode.adaptive.activation=relu"], r.run_dir)
    with pytest.raises(run.UserError, match="activation gelu"):
        run.generate(other, prompts)
