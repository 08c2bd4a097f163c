"""data.generated: a model's own greedy text, generated once into the run directory, mixed into
training batches; regenerated (never reused) when anything it depends on changes."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from runtime import run
from runtime.corpus import SpecData
from runtime.selfgen import build_prompts, generated_documents

MINI = Path(__file__).parent / "specs/mini.yaml"
GEN = "data.generated={model: large, code_prompts: 6, chat_prompts: 0, batch: 4, new_tokens: 8}"


def _open(run_dir, *overrides, log=None):
    return run.open_run(MINI, [GEN, *overrides], run_dir=run_dir, log=log or (lambda *a: None))


def _docs(r):
    return generated_documents(r, run.initial_params(r), r.log)


def test_generated_text_is_the_models_greedy_continuation(tmp_path):
    r = _open(tmp_path)
    paths = _docs(r)
    assert len(paths) == 2 and all(p.suffix == ".ids" for p in paths)
    prompts = build_prompts(r, SpecData(r.spec, r.tokenizer).train_docs)
    assert len(prompts) == 6 and all("def " in p for p in prompts)
    first = np.frombuffer(paths[0].read_bytes(), "<i4").tolist()
    ids = r.tokenizer.encode(prompts[0])
    assert first[: len(ids)] == ids
    d = dataclasses.replace(run.autoregressive(r.prog.decode), max_new_tokens=8)
    expected = run.generate(r, [prompts[0]], d)
    assert first[len(ids) : len(ids) + 8] == expected.tokens[0]


def test_reused_while_unchanged_regenerated_when_anything_changes(tmp_path):
    said = []
    r = _open(tmp_path, log=said.append)
    paths = _docs(r)
    assert any("0 of 2 batches already there" in s for s in said)
    said.clear()
    assert _docs(r) == paths and not said  # reused: nothing generated
    paths[1].unlink()  # an interrupted generation resumes at the missing batch
    assert _docs(r) == paths
    assert any("1 of 2 batches already there" in s for s in said)
    changed = _docs(_open(tmp_path, "data.generated.new_tokens=4"))
    assert changed[0].parent != paths[0].parent  # new settings: a new folder, nothing reused
    other_model = _docs(_open(tmp_path, "models.large.n_heads=8"))
    assert other_model[0].parent not in (paths[0].parent, changed[0].parent)


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_training_batches_mix_the_generated_documents(tmp_path, share):
    docs = []
    for i in range(3):
        docs.append(tmp_path / f"{i}.ids")
        docs[-1].write_bytes(np.full(500, 300 + i, "<i4").tobytes())
    r = _open(tmp_path, f"data.generated.share={share}")
    data = SpecData(r.spec, r.tokenizer, docs)
    stream = data.train(seq_len=16, batch=4, seed=0, position=None)
    batches = [next(stream) for _ in range(5)]
    n_gen = round(share * 4)
    for b in batches:
        assert b.shape == (4, 17)
        assert ((b[:n_gen] >= 300).mean(1) > 0.8).all() and (b[n_gen:] < 256).all()
    # two processes, each reading its rows (`rows`), make up the same batches
    halves = [data.train(16, 4, 0, None, rows=rows) for rows in ([0, 1], [2, 3])]
    for b in batches:
        assert np.array_equal(np.concatenate([next(h) for h in halves]), b)
    for h in halves:
        h.close()
    position = stream.state()
    stream.close()
    again = data.train(seq_len=16, batch=4, seed=0, position=position)
    cont = data.train(seq_len=16, batch=4, seed=0, position=None)
    for _ in range(5):
        next(cont)
    assert np.array_equal(next(again), next(cont))  # resumes the mixed stream exactly
    again.close()
    cont.close()
