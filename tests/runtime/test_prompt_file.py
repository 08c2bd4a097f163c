"""Prompt files (JSONL) for `bench` and `generate`: parsing, chat prompts in the template, errors
located at the file and line, per-class speedup columns, and both commands end to end on a tiny
random-weight spec."""

from __future__ import annotations

import json

import pytest
from chat_fixtures import save_tokenizer

from runtime import bench, run
from runtime.cli import main
from runtime.errors import UserError
from runtime.prompts import read_prompt_file
from runtime.weights.tokenizer import hf_tokenizer

SPEC = """
tandem: 1
name: tiny-prompts
data: {corpus: stdlib, seq_len: 32}
models:
  large: {d_model: 32, n_layers: 2, n_heads: 2}
  small: {d_model: 16, n_layers: 1, n_heads: 2}
projections:
  l2s: {from: large, to: small}
wiring:
  - {query: small, memory: large, via: l2s, block: 2}
decode: {policy: speed, target: large, draft: small, gamma: 2, max_new_tokens: 6}
bench: {gammas: [2], prompt_lookup: 0, code_prompts: 0, repeats: 1, prompt_file: PROMPTS}
shapes: {batch: 1, max_len: 64}
"""


def _write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_a_prompt_file_gives_prompts_kinds_and_chats(tmp_path):
    path = _write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "def fib(n):", "kind": "code", "question_id": 3},
            "",
            {"messages": [{"role": "user", "content": "Name a prime."}]},
            {"prompt": "Once upon"},
        ],
    )
    got = read_prompt_file(path)
    assert [(p.where, p.kind) for p in got] == [
        (f"{path}:1", "code"),
        (f"{path}:3", "chat"),
        (f"{path}:4", "text"),
    ]
    tok = hf_tokenizer(save_tokenizer(tmp_path / "tok"))
    assert got[0].text(tok) == "def fib(n):"
    assert got[1].text(tok) == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a prime.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ("{nope", "not JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ({"turns": ["hi"], "category": "qa"}, 'neither "prompt" and "messages"'),
        ({"prompt": "a", "messages": []}, 'both "prompt" and "messages"'),
        ({"prompt": 3}, '"prompt" is a number, not a non-empty string'),
        ({"prompt": ""}, '"prompt" is a empty string'),
        ({"messages": [{"role": "user"}]}, 'messages[0] has no "content"'),
        (
            {"messages": [{"role": "assistant", "content": "x"}]},
            "the last message is the assistant",
        ),
        ({"prompt": "a", "kind": "no spaces"}, '"kind" "no spaces" cannot be a prompt class'),
    ],
)
def test_a_bad_line_is_located(tmp_path, line, message):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "fine"}, line])
    with pytest.raises(UserError) as e:
        read_prompt_file(path, field=("bench", "prompt_file"))
    assert str(e.value).startswith(f"prompt file {path}:2: ") and message in str(e.value)
    assert e.value.field == ("bench", "prompt_file") and e.value.hint


def test_a_missing_or_empty_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read it"):
        read_prompt_file(tmp_path / "gone.jsonl")
    with pytest.raises(UserError, match="holds no prompts"):
        read_prompt_file(_write(tmp_path / "empty.jsonl", ["", " "]))
    spec_bench_line = {"question_id": 81, "category": "writing", "turns": ["Write a poem."]}
    with pytest.raises(UserError) as e:
        read_prompt_file(_write(tmp_path / "q.jsonl", [spec_bench_line]))
    assert "turns[0]" in e.value.hint  # how to convert Spec-Bench / MT-Bench questions


def _run(tmp_path, lines):
    """The tiny spec, with a prompt file of these lines as bench.prompt_file."""
    prompts = _write(tmp_path / "p.jsonl", lines)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC.replace("PROMPTS", json.dumps(str(prompts))))
    return run.open_run(spec, run_dir=tmp_path / "run", log=lambda *a: None), prompts


def test_a_chat_line_needs_a_template(tmp_path):
    r, path = _run(tmp_path, [{"messages": [{"role": "user", "content": "hi"}]}])
    (p,) = read_prompt_file(path)
    with pytest.raises(UserError, match=f"{path}:1: chat prompts .*chat template"):
        p.text(r.tokenizer)


def test_the_bench_reads_the_prompt_file_and_reports_each_class(tmp_path):
    r, _ = _run(
        tmp_path,
        [
            {"prompt": "def add(a, b):\n    return", "kind": "code"},
            {"prompt": "The quick brown fox", "kind": "story"},
            {"prompt": "import os\nimport sys\n", "kind": "code"},
        ],
    )
    out = bench.run_bench(r)
    assert [(p["kind"], p["text"][:6]) for p in out["prompts"]] == [
        ("code", "def ad"),
        ("story", "The qu"),
        ("code", "import"),
    ]
    for row in out["rows"].values():
        assert row["identical"] and {"speedup_code", "speedup_story"} <= set(row)
        assert "speedup_chat" not in row
    head = bench.markdown(out).splitlines()[2]
    assert "| speedup code | speedup story |" in head


def test_a_prompt_too_long_stops_the_bench_before_any_work(tmp_path):
    r, path = _run(tmp_path, [{"prompt": "x" * 200}])  # 200 byte tokens > the budget
    with pytest.raises(UserError, match=f"{path}:1: the prompt has 200 tokens") as e:
        bench.run_bench(r)
    assert e.value.field == ("bench", "prompt_file")


def test_generate_takes_a_prompt_file(tmp_path, capsys):
    _, prompts = _run(tmp_path, [{"prompt": "def f(x):"}, {"prompt": "import re"}])
    spec = tmp_path / "tiny.yaml"
    out = tmp_path / "out.json"
    argv = ["run", str(spec), "generate", "--prompt-file", str(prompts), "--run-dir",
            str(tmp_path / "run"), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert len(json.loads(out.read_text())["generate"]["texts"]) == 2
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"messages": "hi"}])
    argv[argv.index(str(prompts))] = str(bad)
    assert main(argv) == 2
    assert f"{bad}:2: messages must be a non-empty list" in capsys.readouterr().err
