"""Data pipeline: documents, split, packing order, seeding, resume, stdlib corpus, prefetcher."""

import itertools
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from runtime.corpus import SpecData
from runtime.data import (
    Prefetcher,
    document_keys,
    iter_texts,
    list_documents,
    make_batches,
    split_documents,
    stdlib_documents,
)
from runtime.tokenizer import ByteTokenizer, make_tokenizer

BYTE = ByteTokenizer()


@pytest.fixture
def tiny(tmp_path):
    """Seven small files of different lengths (one empty), in two folders."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        words = rng.choice(["def", "x", "return", "é", "(", ")", "\n", "    "], size=40 * i)
        paths.append(sub / f"doc{i}.txt")
        paths[-1].write_text(f"# doc {i}\n" * (i > 0) + " ".join(words), encoding="utf-8")
    return list_documents(None, [str(tmp_path / "*" / "*.txt")])


def take(stream, n):
    return [b.copy() for b in itertools.islice(stream, n)]


def test_list_documents_paths_and_errors(tiny, tmp_path):
    assert len(tiny) == 7 and len(document_keys(tiny)) == 7
    assert document_keys(tiny)[0] == "a/doc1.txt"
    assert list_documents("stdlib", [str(tiny[0])]) == [tiny[0]]  # paths replace the corpus
    assert len(list_documents(None, [str(tmp_path / "a"), str(tiny[0])])) == 3  # deduplicated
    with pytest.raises(ValueError, match=r"data file .*missing\.txt not found"):
        list_documents(None, [str(tiny[0]), str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match=r"'.*\*\.md' matches no files"):
        list_documents(None, [str(tmp_path / "*.md")])
    with pytest.raises(ValueError, match="corpus is null and paths is empty"):
        list_documents(None, [])
    with pytest.raises(ValueError, match="unknown corpus 'wiki'"):
        list_documents("wiki", [])
    gone = tmp_path / "gone.txt"
    gone.write_text("x")
    docs = list_documents(None, [str(gone)])
    gone.unlink()
    with pytest.raises(ValueError, match=r"cannot read data file .*gone\.txt"):
        next(make_batches(docs, BYTE, seq_len=4, batch=1))


def test_split_is_deterministic_disjoint_and_complete():
    docs = stdlib_documents()
    train, val = split_documents(docs, 0.05, seed=0)
    assert (train, val) == split_documents(docs, 0.05, seed=0)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(docs)
    assert 0.02 < len(val) / len(docs) < 0.08
    assert split_documents(docs, 0.05, seed=1)[1] != val
    # Membership depends only on a document's own key: dropping others does not move it.
    half = set(docs[::2])
    assert split_documents(docs[::2], 0.05, seed=0)[1] == [d for d in val if d in half]
    two = docs[:2]
    assert [len(s) for s in split_documents(two, 1e-9)] == [1, 1]
    assert [len(s) for s in split_documents(two, 0.5 - 1e-9)] == [1, 1]
    assert split_documents(docs, 0.0) == (docs, [])
    with pytest.raises(ValueError, match="at least 2 documents"):
        split_documents(docs[:1], 0.1)


def test_batches_pack_documents_in_the_documented_order(tiny):
    seq = 15
    stream = make_batches(tiny, BYTE, seq_len=seq, batch=3, seed=5, train=False, window=1)
    batches = list(stream)
    assert batches and all(b.shape == (3, seq + 1) and b.dtype == np.int32 for b in batches)
    order = np.random.default_rng((5, 0)).permutation(len(tiny))
    expected = b"".join(tiny[i].read_bytes() + b"\n\n" for i in order)
    got = np.concatenate([b.reshape(-1) for b in batches]).astype(np.uint8).tobytes()
    assert expected.startswith(got) and len(expected) - len(got) < 3 * (seq + 1)
    # Inputs and targets are the same row shifted by one.
    inputs, targets = batches[0][:, :-1], batches[0][:, 1:]
    assert (inputs[:, 1:] == targets[:, :-1]).all()


def test_shuffle_window_permutes_whole_rows(tiny):
    plain = np.concatenate(take(make_batches(tiny, BYTE, seq_len=7, batch=2, window=1), 10))
    mixed = np.concatenate(take(make_batches(tiny, BYTE, seq_len=7, batch=2, window=5), 10))
    assert not (plain == mixed).all()
    assert sorted(map(bytes, plain)) == sorted(map(bytes, mixed))


def test_same_seed_same_batches_other_seed_differs(tiny):
    a = take(make_batches(tiny, BYTE, seq_len=16, batch=2, seed=3), 40)
    b = take(make_batches(tiny, BYTE, seq_len=16, batch=2, seed=3), 40)
    c = take(make_batches(tiny, BYTE, seq_len=16, batch=2, seed=4), 40)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not all((x == y).all() for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_resume_reproduces_the_continuation(tiny, kind):
    tok = BYTE if kind == "byte" else make_tokenizer("bpe", 300, texts=iter_texts(tiny))
    opts = dict(seq_len=16, batch=2, seed=7, window=3)
    n = 200
    full = make_batches(tiny, tok, **opts)
    reference, states = [], [full.state()]
    for batch, state in itertools.islice(full.with_state(), n):
        reference.append(batch.copy())
        states.append(state)
    epochs = {s["epoch"] for s in states}
    assert len(epochs) >= 3, epochs  # the run crosses at least two epoch boundaries
    for k in [
        *range(0, n, 9),
        n - 1,
        *(i for i in range(1, n) if states[i]["epoch"] > states[i - 1]["epoch"]),
    ]:
        saved = json.loads(json.dumps(states[k]))  # states survive a JSON checkpoint
        resumed = take(make_batches(tiny, tok, state=saved, **opts), n - k)
        assert all((x == y).all() for x, y in zip(resumed, reference[k:], strict=True)), k


def test_resume_rejects_other_settings_and_bad_states(tiny):
    stream = make_batches(tiny, BYTE, seq_len=16, batch=2)
    take(stream, 5)
    state = stream.state()
    with pytest.raises(ValueError, match="other data settings"):
        make_batches(tiny, BYTE, seq_len=32, batch=2, state=state)
    with pytest.raises(ValueError, match="other data settings"):
        make_batches(tiny[1:], BYTE, seq_len=16, batch=2, state=state)
    with pytest.raises(ValueError, match="bad data state"):
        make_batches(tiny, BYTE, seq_len=16, batch=2, state={"epoch": 0})
    with pytest.raises(ValueError, match="past the end of"):
        next(make_batches(tiny, BYTE, seq_len=16, batch=2, state={**state, "offset": 10**6}))


def test_processes_reading_their_rows_make_up_the_one_process_batches(tiny):
    """Each process of a multi-host run reads only its rows of every batch; together they are
    the single-process batches, from the start and from any saved state."""
    opts = dict(seq_len=16, batch=6, seed=2, window=3)
    shares = [[0, 1, 4], [2, 3, 5]]  # rows need not be contiguous
    whole = make_batches(tiny, BYTE, **opts)
    reference = take(whole, 20)
    state = whole.state()
    after = take(whole, 5)
    parts = [take(make_batches(tiny, BYTE, rows=rows, **opts), 20) for rows in shares]
    for k, batch in enumerate(reference):
        assert parts[0][k].shape == (3, 17)
        assert (batch[shares[0]] == parts[0][k]).all() and (batch[shares[1]] == parts[1][k]).all()
    resumed = [take(make_batches(tiny, BYTE, rows=r, state=state, **opts), 5) for r in shares]
    for k, batch in enumerate(after):
        assert (batch[shares[0]] == resumed[0][k]).all()
        assert (batch[shares[1]] == resumed[1][k]).all()
    with pytest.raises(ValueError, match="ascending indices into a batch of 6"):
        make_batches(tiny, BYTE, rows=[3, 6], **opts)
    one_pass = dict(opts, window=1, max_batches=None)
    halves = [list(make_batches(tiny, BYTE, train=False, rows=r, **one_pass)) for r in shares]
    assert len(halves[0]) == len(list(make_batches(tiny, BYTE, train=False, **one_pass)))


def test_validation_is_one_pass_and_bounded(tiny):
    val = list(make_batches(tiny, BYTE, seq_len=16, batch=2, train=False))
    again = list(make_batches(tiny, BYTE, seq_len=16, batch=2, train=False))
    total = sum(len(p.read_bytes()) + 2 for p in tiny)
    assert len(val) == total // 17 // 2
    assert all((x == y).all() for x, y in zip(val, again, strict=True))
    assert len(list(make_batches(tiny, BYTE, seq_len=16, batch=2, train=False, max_batches=3))) == 3
    with pytest.raises(ValueError, match="fewer tokens than one batch"):
        next(make_batches(tiny, BYTE, seq_len=1000, batch=8, train=False))


def test_validation_batches_spread_over_the_held_out_files(tmp_path):
    """Held-out files longer than the rows evaluated: the rows come from several files, not
    all from the first."""
    for i in range(20):
        (tmp_path / f"{i:02d}.txt").write_text(chr(ord("a") + i) * 200)
    data = SimpleNamespace(corpus=None, paths=[str(tmp_path)], seed=0, val_fraction=0.5)
    spec_data = SpecData(SimpleNamespace(data=data), BYTE)
    val = spec_data.validation(seq_len=16, batch=2, n_batches=3)
    assert len(val) == 3 and all(b.shape == (2, 17) for b in val)
    files = {int(np.bincount(row).argmax()) for b in val for row in b}
    assert len(files) >= 4, files
    again = spec_data.validation(seq_len=16, batch=2, n_batches=3)
    assert all((x == y).all() for x, y in zip(val, again, strict=True))


def test_stdlib_corpus_first_batch_is_fast():
    start = time.perf_counter()
    docs = list_documents("stdlib", [])
    train, val = split_documents(docs, 0.01, seed=0)
    batch = next(make_batches(train, BYTE, seq_len=256, batch=16))
    elapsed = time.perf_counter() - start
    assert len(docs) >= 500 and len(val) >= 1
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in docs)
    assert batch.shape == (16, 257) and batch.max() < 256
    assert elapsed < 10, elapsed  # about 0.1 s here


def test_prefetcher_same_sequence_and_with_state(tiny):
    raw = take(make_batches(tiny, BYTE, seq_len=16, batch=2), 50)
    stream = make_batches(tiny, BYTE, seq_len=16, batch=2)
    with Prefetcher(stream.with_state(), depth=3) as pre:
        pairs = list(itertools.islice(pre, 50))
    assert all((x == y).all() for x, (y, _) in zip(raw, pairs, strict=True))
    # The state paired with batch k resumes at batch k + 1, however far the thread ran ahead.
    resumed = next(make_batches(tiny, BYTE, seq_len=16, batch=2, state=pairs[19][1]))
    assert (resumed == raw[20]).all()
    assert list(Prefetcher(range(5))) == [0, 1, 2, 3, 4]


def test_prefetcher_propagates_errors_and_closes():
    def broken():
        yield 1
        raise RuntimeError("disk on fire")

    pre = Prefetcher(broken())
    assert next(pre) == 1
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(pre)
    with pytest.raises(StopIteration):
        next(pre)

    pre = Prefetcher(itertools.count(), depth=2)  # endless: close() must still stop it
    assert next(pre) == 0
    pre.close()
    assert not pre._thread.is_alive()
    assert pre._thread.daemon
