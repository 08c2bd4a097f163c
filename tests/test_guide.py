"""The guide's Python examples (docs/guide.md) run as written."""

import importlib.util
import json
import os
import re
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]


def _my_llama(folder: Path) -> None:
    """Section 7's "your model": a small random Llama as a Hugging Face folder, with a
    ChatML tokenizer (the chat-data tests' fixture) and its chat template."""
    from compiler.ir import DecoderIR
    from compiler.nn import init_decoder
    from runtime.weights import export_weights

    path = ROOT / "tests/runtime/chat_fixtures.py"
    spec = importlib.util.spec_from_file_location("chat_fixtures", path)
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    fixtures.save_tokenizer(folder)
    vocab = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    cfg = DecoderIR(name="large", vocab=vocab, d_model=64, n_layers=2, n_heads=4,
                    n_kv_heads=2, d_ff=160, max_len=256)  # fmt: skip
    export_weights("hf", folder, cfg, init_decoder(cfg, jax.random.PRNGKey(0)))


def test_guide_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/guide.md").read_text(), re.S)
    assert any("nnx.Optimizer" in b for b in blocks)  # section 6: a model as an nnx Module
    assert any("data/chat.jsonl" in b for b in blocks)  # section 7: your model, your data
    (tmp_path / "specs").symlink_to(ROOT / "specs")
    _my_llama(tmp_path / "models/my-llama")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # an example may write runs/<name>/ under the working directory
    try:
        for block in blocks:
            exec(compile(block, "docs/guide.md", "exec"), {})
    finally:
        os.chdir(cwd)
    exported = tmp_path / "out/my-drafter"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        f.name for f in exported.iterdir()
    }
    assert (tmp_path / "runs/my-drafter/drafter/final.json").exists()
