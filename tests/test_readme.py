"""The README's Python examples run as written."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    (tmp_path / "specs").symlink_to(ROOT / "specs")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the examples write runs/<name>/ under the working directory
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    assert (tmp_path / "runs/quickstart-short/tandem/final.json").exists()
