"""Without the optional `gguf` / `safetensors` packages, importing weights is a user error that
says how to install them (not a ModuleNotFoundError traceback)."""

import sys

import pytest

from runtime.errors import UserError
from runtime.weights import gguf_io, hf_io


@pytest.mark.parametrize("module", ["gguf", "safetensors"])
def test_missing_optional_package_says_how_to_install_it(monkeypatch, tmp_path, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(UserError, match=rf"`{module}` package.*tandem-dsl\[import\]"):
        if module == "gguf":
            gguf_io._reader.__wrapped__(str(path), 0.0)
        else:
            next(hf_io.read_tensors(tmp_path, 4, 4))
