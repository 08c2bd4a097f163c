"""`tandemc run SPEC bench` with a `bench:` section, on tiny random-weight models: every
method's greedy output equals the target's, the table, JSON and plot are written, held-out
code prompts fit the budget, and chat prompts use the tokenizer's chat template."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from compiler.ir import DecodeIR
from runtime import bench, prompts, run

SPEC = """
tandem: 1
name: tiny-bench
data: {corpus: stdlib, seq_len: 32}
models:
  large: {d_model: 32, n_layers: 2, n_heads: 2}
  small: {d_model: 16, n_layers: 1, n_heads: 2}
  drafter: {d_model: 16, n_layers: 1, n_heads: 2}
projections:
  l2s: {from: large, to: small}
wiring:
  - {query: small, memory: large, via: l2s, block: 2}
  - {kind: none, query: drafter}
decode: {policy: speed, target: large, draft: small, gamma: 2, max_new_tokens: 12}
bench: {gammas: [1, 3], drafter: drafter, prompt_lookup: 2, code_prompts: 2, repeats: 1}
shapes: {batch: 1, max_len: 96}
"""


@pytest.fixture
def r(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    return run.open_run(spec, run_dir=tmp_path / "run", log=lambda *a: None)


def test_bench_rows_are_lossless_and_saved(r):
    out = bench.run_bench(r)
    rows = out["rows"]
    assert list(rows) == [
        "autoregressive",
        "prompt lookup n=2 gamma=4",
        "standard SPEED (drafter) gamma=1",
        "standard SPEED (drafter) gamma=3",
        "Tandem + SPEED (small) gamma=1",
        "Tandem + SPEED (small) gamma=3",
        "standard SPEED + lookup n=2 (drafter) gamma=1",
        "standard SPEED + lookup n=2 (drafter) gamma=3",
        "Tandem + SPEED + lookup n=2 (small) gamma=1",
        "Tandem + SPEED + lookup n=2 (small) gamma=3",
    ]
    assert all(row["identical"] for row in rows.values())
    assert rows["autoregressive"]["large_calls_per_token"] == 1.0
    assert rows["autoregressive"]["speedup"] == 1.0
    assert all(row["prefill_seconds"] > 0 for row in rows.values())
    assert rows["autoregressive"]["decode_speedup"] in (1.0, None)  # None: noise on tiny models
    assert rows["Tandem + SPEED (small) gamma=3"]["small_calls_per_token"] > 0
    assert "gain_over_standard" in rows["Tandem + SPEED (small) gamma=1"]
    assert set(out["costs"]["step_ms"]) == {"small", "drafter"}
    assert set(out["costs"]["verify_ms"]) == {1, 3} and out["costs"]["ar_step_ms"] > 0
    assert rows["standard SPEED (drafter) gamma=3"]["ceiling"] > 0
    assert "ceiling" not in rows["autoregressive"]
    assert "ceiling" not in rows["prompt lookup n=2 gamma=4"]
    hybrid = rows["Tandem + SPEED + lookup n=2 (small) gamma=3"]
    assert 0 <= hybrid["lookup_share"] <= 1 and "ceiling" not in hybrid
    assert "gain_over_standard" in hybrid and "lookup_share" not in rows["autoregressive"]
    assert [p["kind"] for p in out["prompts"]] == ["code", "code"]
    assert all(p["text"].splitlines()[-1].lstrip().startswith("def ") for p in out["prompts"])
    saved = json.loads((r.run_dir / "bench.json").read_text())
    assert saved["rows"].keys() == rows.keys()
    assert (r.run_dir / "bench.png").stat().st_size > 0
    backend = "xla" if os.environ.get("TANDEM_KERNEL") == "off" else "kernel"  # auto, one CPU
    assert out["backend"].startswith(backend) and "GB/s" in out["machine"]
    header, _, *table = (r.run_dir / "bench.md").read_text().splitlines()
    assert header.startswith("machine: ") and f"decode backend: {backend}" in header
    assert len(table) == 2 + len(rows) and table[0].startswith("| method | tokens/s")


def test_chat_prompts_need_a_chat_template(r):
    with pytest.raises(run.UserError, match="chat template"):
        prompts.chat_prompt(r.tokenizer, "hi")

    class ChatML:
        chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )

    text = prompts.chat_prompt(ChatML(), "hi")
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_flag_without_a_template_is_a_user_error(tmp_path, capsys):
    from runtime.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    argv = ["run", str(spec), "generate", "--chat", "--prompt", "hi", "--run-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "chat template" in capsys.readouterr().err


def test_embed_from_starts_the_small_model_from_the_large_embeddings(tmp_path):
    from compiler.nn import reduced_embedding

    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        SPEC.replace("drafter: {d_model: 16,", "drafter: {init: {embed_from: large}, d_model: 16,")
    )
    r = run.open_run(spec, run_dir=tmp_path / "run", log=lambda *a: None)
    params = run.initial_params(r)
    large = np.asarray(params["large"]["embed"]["tokens"])
    np.testing.assert_allclose(
        params["drafter"]["embed"]["tokens"], reduced_embedding(large, 16), rtol=1e-6
    )
    assert not np.allclose(params["small"]["embed"]["tokens"][:, :16], reduced_embedding(large, 16))


def test_copy_layers_starts_the_drafter_as_a_slice_of_the_large_model(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        SPEC.replace(
            "drafter: {d_model: 16,",
            "drafter: {init: {embed_from: large, copy_layers: [1]}, d_model: 32,",
        )
    )
    r = run.open_run(spec, run_dir=tmp_path / "run", log=lambda *a: None)
    params = run.initial_params(r)
    large, drafter = params["large"], params["drafter"]
    for part in ("layers_1", "final_norm", "embed"):
        mine = drafter["layers_0" if part == "layers_1" else part]
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(large[part]), strict=True):
            np.testing.assert_array_equal(a, b)


def test_prefill_program_is_the_generate_programs_prompt_pass(r):
    """The program the bench times apart runs the prompt pass that generate starts with."""
    from compiler.decode.programs import make_programs
    from compiler.sharded_programs import prefill_program
    from compiler.sharding import Sharder

    dec = r.prog.decode
    params, backend = run.decode_params(r, dec)  # packed for the CPU kernel where it runs
    prompt, lens = np.array([[5, 9, 2, 7, 1, 3]], np.int32), np.array([4], np.int32)
    key = jax.random.key(0)
    sh = Sharder.for_run(r.prog)
    timed = prefill_program(r.prog, dec, sh, batch=1, packed=backend.packed)
    timed = timed(params, prompt, lens, key)
    plain = make_programs(r.prog, dec).prefill(params, prompt, lens, key)
    timed, plain = (s.replace(key=jax.random.key_data(s.key)) for s in (timed, plain))
    for a, b in zip(jax.tree.leaves(timed), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_ceiling_is_the_all_accepted_speedup():
    """gamma 3 at 1 ms per draft + 6 ms verify = 9 ms per round of 4 tokens, 3 ms per AR token:
    12 ms / 9 ms."""
    table = {"autoregressive": DecodeIR(policy="autoregressive", target="large"),
             "speed": DecodeIR(policy="speed", target="large", draft="small", gamma=3)}  # fmt: skip
    rows = {"autoregressive": {}, "speed": {}}
    costs = {"ar_step_ms": 3.0, "step_ms": {"small": 1.0}, "verify_ms": {3: 6.0}}
    bench._add_ceilings(rows, table, costs)
    assert rows["speed"]["ceiling"] == pytest.approx(12 / 9)
    assert "ceiling" not in rows["autoregressive"]
