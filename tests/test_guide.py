"""The guide's Python examples (docs/guide.md) run as written."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_guide_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/guide.md").read_text(), re.S)
    assert any("nnx.Optimizer" in b for b in blocks)  # section 6: a model as an nnx Module
    (tmp_path / "specs").symlink_to(ROOT / "specs")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # an example may write runs/<name>/ under the working directory
    try:
        for block in blocks:
            exec(compile(block, "docs/guide.md", "exec"), {})
    finally:
        os.chdir(cwd)
