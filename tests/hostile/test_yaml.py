"""Hostile input, category 1: YAML loading. Files that expand exponentially or refer to
themselves, nest deeply, carry tags, merge keys, include devices, FIFOs, directories, binary or
huge files or files outside the spec's folder; files that are empty, not text or not a mapping;
the same through command-line overrides."""

import os
from pathlib import Path

import pytest
from hostile_harness import assert_clean, run_cli

from tandem_dsl import api

ROOT = Path(__file__).resolve().parents[2]
BASE = (ROOT / "tests/dsl/bad/no_data.yaml").read_text().replace(", corpus: null", "")
LAUGHS = "{a0: &a0 [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)
)
# name: (file text, code, where in the first line)
FILES = {
    "laughs": (f"bench: {LAUGHS}}}\n" + BASE, "E-YAML-SIZE", "laughs.yaml:1:"),
    "laughs_keys": (
        "x: {" + ", ".join(f"k{i}: [1, 2, 3, 4, 5, 6, 7, 8, 9]" for i in range(12000)) + "}\n",
        "E-YAML-SIZE",
        "laughs_keys.yaml:1:",
    ),
    "self_alias": ("x: &x [*x]\n" + BASE, "E-YAML-SIZE", "self_alias.yaml:1:"),
    "undefined_alias": ("x: *nowhere\n" + BASE, "E-YAML-SYNTAX", "undefined_alias.yaml:1:"),
    "deep_flow": (BASE + "bench: " + "[" * 5000 + "]" * 5000 + "\n", "E-YAML-DEPTH", ":1:1"),
    "deep_block": (
        BASE + "".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "v: 1\n",
        "E-YAML-DEPTH",
        ":1:1",
    ),
    "unclosed": (BASE + "bench: [2, 4\n", "E-YAML-SYNTAX", "unclosed.yaml:"),
    "tab_indent": (BASE.replace("  small:", "\tsmall:"), "E-YAML-SYNTAX", "tab_indent.yaml:5:"),
    "bad_indent": (BASE.replace("  small:", "   small:"), "E-YAML-SYNTAX", "bad_indent.yaml:"),
    "dup_key": (BASE.replace("name: bad\n", "name: bad\nname: two\n"), "E-YAML-DUPKEY", ":3:"),
    "tag_env": (BASE.replace("gamma: 4", "gamma: !env GAMMA"), "E-YAML-TAG", ":10:61"),
    "tag_python": (
        BASE.replace("gamma: 4", "gamma: !!python/object/apply:os.system [ls]"),
        "E-YAML-TAG",
        ":10:61",
    ),
    "tag_key": (BASE.replace("gamma: 4", "!env gamma: 4"), "E-YAML-KEY", ":10:"),
    "tag_bad_int": (BASE.replace("gamma: 4", "gamma: !!int four"), "E-YAML-TAG", ":10:61"),
    "int_key": (BASE.replace("name: bad\n", "name: bad\n1: one\n"), "E-YAML-KEY", ":3:1"),
    "null_key": (BASE.replace("name: bad\n", "name: bad\n~: one\n"), "E-YAML-KEY", ":3:1"),
    "list_key": (BASE.replace("name: bad\n", "name: bad\n[a, b]: one\n"), "E-YAML-KEY", ":3:"),
    "merge_scalar": (BASE.replace("{d_model: 32,", "{<<: 3, d_model: 32,"), "E-YAML-MERGE", ":5:"),
    "two_documents": (BASE + "---\n" + BASE, "E-YAML-SYNTAX", "two_documents.yaml:"),
    "empty": ("", "E-YAML-EMPTY", "empty.yaml:1:1"),
    "only_comments": ("# nothing\n# here\n", "E-YAML-EMPTY", "only_comments.yaml:1:1"),
    "list_root": ("- tandem: 1\n- name: x\n", "E-YAML-ROOT", "list_root.yaml:1:1"),
    "scalar_root": ("just words\n", "E-YAML-ROOT", "scalar_root.yaml:1:1"),
    "no_version": (BASE.replace("tandem: 1\n", ""), "E-SCHEMA-MISSING", "no_version.yaml:1:1"),
    "version_2": (BASE.replace("tandem: 1", "tandem: 2"), "E-VERSION", "version_2.yaml:1:"),
    "no_models": ("tandem: 1\nname: x\nmodels: {}\n", "E-CHECK-UNKNOWN-MODEL", ":3:"),
    "version_str": (BASE.replace("tandem: 1", "tandem: one"), "E-SCHEMA-TYPE", ":1:"),
    "include_zero": (BASE + "include: [/dev/zero]\n", "E-INCLUDE-OUTSIDE", ":13:"),
    "include_up": (BASE + "include: [../outside.yaml]\n", "E-INCLUDE-OUTSIDE", ":13:"),
    "include_dir": (BASE + "include: [folder]\n", "E-FILE-READ", ":13:"),
    "include_binary": (BASE + "include: [binary.yaml]\n", "E-FILE-READ", ":13:"),
    "include_fifo": (BASE + "include: [fifo.yaml]\n", "E-FILE-READ", ":13:"),
    "include_huge": (BASE + "include: [huge.yaml]\n", "E-FILE-READ", ":13:"),
    "include_missing": (BASE + "include: [nowhere.yaml]\n", "E-INCLUDE-MISSING", ":13:"),
    "include_self": (BASE + "include: [include_self.yaml]\n", "E-INCLUDE-CYCLE", ":13:"),
    "include_list_root": (BASE + "include: [list.yaml]\n", "E-YAML-ROOT", "list.yaml:1:1"),
    "include_not_list": (BASE + "include: {a: 1}\n", "E-SCHEMA-TYPE", ":13:"),
}


@pytest.fixture
def folder(tmp_path):
    spec = tmp_path / "specs"
    spec.mkdir()
    (tmp_path / "outside.yaml").write_text(BASE)
    (spec / "folder").mkdir()
    (spec / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    (spec / "huge.yaml").write_text("# " + "x" * (2 << 20) + "\n")
    (spec / "list.yaml").write_text("- 1\n")
    os.mkfifo(spec / "fifo.yaml")
    return spec


@pytest.mark.parametrize("name", sorted(FILES))
def test_hostile_file(folder, name):
    text, code, where = FILES[name]
    (folder / f"{name}.yaml").write_text(text)
    o = run_cli(["check", folder / f"{name}.yaml"])
    assert_clean(o, where, code)
    assert "list.yaml" in o.first_line or f"{name}.yaml" in o.first_line


@pytest.mark.parametrize(
    "path, said",
    [
        ("missing.yaml", "E-FILE-MISSING"),
        (".", "E-FILE-READ"),
        ("/dev/null", "E-FILE-READ"),
        ("latin1.yaml", "E-FILE-READ"),
        ("big.yaml", "E-FILE-READ"),
    ],
)
def test_hostile_spec_path(folder, path, said):
    (folder / "latin1.yaml").write_bytes(b"tandem: 1\nname: caf\xe9\n")
    (folder / "big.yaml").write_text("# " + "x" * (2 << 20) + "\n")
    target = path if path.startswith("/") else folder / path
    assert_clean(run_cli(["check", target]), str(target), said)


@pytest.mark.parametrize(
    "value, code",
    [
        (f"bench={LAUGHS}}}", "E-YAML-SIZE"),
        ("bench=&x [*x]", "E-YAML-SIZE"),
        ("decode.gamma=!env GAMMA", "E-YAML-TAG"),
        ("decode.gamma=!!int four", "E-YAML-TAG"),
        ("decode.gamma=!!python/name:os.system", "E-YAML-TAG"),
        ("decode.gamma=" + "[" * 5000 + "]" * 5000, "E-OVERRIDE-VALUE"),
        ("decode={!env a: 1}", "E-YAML-KEY"),
        ("decode.gamma=[1, 2", "E-OVERRIDE-VALUE"),
        ("decode.gamma=*nowhere", "E-OVERRIDE-VALUE"),
        ("include=[other.yaml]", "E-OVERRIDE-KEY"),
        ("+include=[other.yaml]", "E-OVERRIDE-KEY"),
        ("a..b=1", "E-OVERRIDE-SYNTAX"),
        ("=3", "E-OVERRIDE-SYNTAX"),
        ("name", "E-OVERRIDE-SYNTAX"),
        ("nosuch.a.b=3", "E-OVERRIDE-KEY"),
        ("train.5.steps=3", "E-OVERRIDE-KEY"),
        ("+models.large.d_model=3", "E-OVERRIDE-EXISTS"),
    ],
)
def test_hostile_override(folder, value, code):
    (folder / "ok.yaml").write_text(BASE)
    o = run_cli(["check", folder / "ok.yaml", value])
    assert_clean(o, "cli:1:", code)


def test_merge_keys_merge_and_explicit_keys_win(tmp_path):
    text = BASE.replace(
        "  small: {d_model: 32, n_layers: 2, n_heads: 2}",
        "  small: &small {d_model: 32, n_layers: 2, n_heads: 2}\n"
        "  drafter: {<<: *small, n_layers: 1}",
    )
    (tmp_path / "merge.yaml").write_text(text)
    spec = api.load(tmp_path / "merge.yaml")
    assert (spec.models["drafter"].d_model, spec.models["drafter"].n_layers) == (32, 1)


def test_include_below_the_spec_folder_still_works(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base/models.yaml").write_text(BASE)
    (tmp_path / "top.yaml").write_text("include: [base/models.yaml]\nname: top\n")
    assert api.load(tmp_path / "top.yaml").name == "top"


def test_an_override_may_set_a_field_whose_section_the_file_leaves_out(tmp_path):
    (tmp_path / "ok.yaml").write_text(BASE)
    spec = api.load(tmp_path / "ok.yaml", ["decode.sampling.top_k=5", "models.small.init.seed=3"])
    assert spec.decode.sampling.top_k == 5 and spec.models["small"].init.seed == 3
