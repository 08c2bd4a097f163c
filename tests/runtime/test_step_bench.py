"""`python -m runtime.step_bench`: our decoder step (XLA dots and the packed CPU kernel) and
the hand-written Llama step agree on logits and all get timed; models without a hand-written
twin are refused with the reason."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from compiler.ir import DecoderIR
from compiler.nn import init_decoder
from runtime import step_bench

CFG = DecoderIR(name="large", vocab=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                d_ff=64, max_len=48, tie_embeddings=True)  # fmt: skip


@pytest.mark.parametrize("tied", [True, False])
def test_steps_agree_and_are_timed(tied):
    cfg = dataclasses.replace(CFG, tie_embeddings=tied)
    params = init_decoder(cfg, jax.random.key(0))
    res = step_bench.compare(params, cfg, max_len=48, ks=(1, 3), n=2)
    assert set(res["steps"]) == {1, 3}
    for s in res["steps"].values():
        assert s["xla_ms"] > 0 and s["kernel_ms"] > 0 and s["hand_ms"] > 0
        assert s["xla_loop_ms"] > 0 and s["kernel_loop_ms"] > 0
        assert max(s["max_abs_diff"].values()) < 1e-4
    assert "GB/s" in res["machine"]
    text = step_bench.table(res, "large")
    assert "| 3 |" in text and "kernel speedup over xla" in text and "in-loop ms" in text


def test_a_different_model_is_caught(monkeypatch):
    """The agreement check has teeth: the hand-written step with other weights fails it."""
    params = init_decoder(CFG, jax.random.key(0))
    other = init_decoder(CFG, jax.random.key(1))

    original = step_bench.hand_written_step

    def wrong(cfg):
        hand = original(cfg)
        return lambda p, *a: hand(other, *a)

    monkeypatch.setattr(step_bench, "hand_written_step", wrong)
    with pytest.raises(AssertionError, match="logits differ"):
        step_bench.compare(params, CFG, max_len=48, ks=(1,), n=1)


def test_non_llama_models_are_refused():
    cfg = dataclasses.replace(CFG, mlp="gelu", norm="layernorm")
    with pytest.raises(ValueError, match="not a float32 Llama"):
        step_bench.compare({}, cfg, max_len=48)
