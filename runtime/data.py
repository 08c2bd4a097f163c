"""Training data: documents, a deterministic split, and resumable packed batches.

Order of the token stream (documented because resuming depends on it):

1. Epoch `e` visits every document once, in the order `default_rng((seed, e)).permutation(n)`.
   (A tuple, not `seed + e`: with a sum, seed 1's first epoch would be seed 0's second.)
2. Each document is tokenized on its own (lazily, when the stream reaches it), led by the BOS
   token where the tokenizer asks for one (`runtime.tokenizer.bos_prefix`), and followed by a
   separator: the tokenizer's EOS id, or the bytes of "\\n\\n" when it has none. A `.ids` file is
   already tokenized (little-endian int32 ids, e.g. generated text) and read as it is. Every
   record (non-blank line) of a `.jsonl` file is a document of its own (`Record`, see below).
3. The stream is cut into rows of `seq_len + 1` tokens (inputs `row[:-1]`, targets `row[1:]`);
   rows do not overlap, and the stream runs on across document and epoch boundaries.
4. `window * batch` consecutive rows form a shuffle window; its rows are permuted with
   `default_rng((seed, epoch, doc, offset))` of the window's first token, then served as
   `window` batches. Without it a batch would be 8 neighbouring slices of one file.

`TokenStream.state()` is `{"epoch", "doc", "offset", "skip", "fingerprint"}`: where the current
window starts (epoch, index into that epoch's permutation, token offset in that document), how
many of its batches were served, and a checksum of the settings and document list. Passing it
back as `state=` rebuilds that window and continues with exactly the batches an uninterrupted
run would have produced. Numpy only (and Jinja, through `runtime.chat`, for chat records).

With several processes (multi-host), each one passes `rows`: the rows of every batch that its
devices hold (`compiler.sharding.Sharder.local_batch_rows`). Every process reads the same
stream (the packing is sequential, so a window is tokenized whole) and keeps only those rows;
the state does not depend on `rows`, so the global batch, and resuming it, are the same
whatever the process count.

JSONL. A `.jsonl` file is one JSON object per line, each a document (`Record`: the file, the
line, its bytes), so the split, the epoch order and the resume position work per record, as
they do per file. A record is text or a chat:
- `{"text": "..."}` (the field `data.text_field` names, "text" by default): the string is the
  document, trained on every token as any text file is.
- `{"messages": [{"role": ..., "content": ...}, ...]}` (or the text field holding such a list):
  the conversation rendered with the tokenizer's chat template, and the loss counts only the
  assistant's replies (`runtime.chat`): every other token carries the no-loss flag of
  `compiler.loss_mask` (as does the separator after it), which rides in the token ids through
  the packing, shuffling, resuming, mixing, per-process rows and the teacher cache unchanged.
A line that is not a JSON object, a record with neither field, a value of another type, or a
chat record with a tokenizer that has no chat template is a UserError naming the file and line.
The records' offsets are indexed when the documents are listed (one read of each file); each
record is parsed when the stream reaches it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import queue
import sysconfig
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.loss_mask import no_loss, token_ids

from .chat import ChatError, check_messages, json_kind, require_template, valid_text
from .chat import encode as encode_chat
from .errors import UserError
from .tokenizer import bos_prefix

STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_documents() -> list[Path]:
    """The standard library's own `.py` files (tests included), sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for d, dirs, files in os.walk(root):  # os.walk with pruning: 15 ms, rglob: ~1 s
        dirs[:] = [x for x in dirs if x not in STDLIB_SKIP]
        docs += [Path(d, f) for f in files if f.endswith(".py")]
    return sorted(docs, key=lambda p: p.relative_to(root).as_posix())


def _expand(entry: str) -> list[Path]:
    if not entry.strip():
        raise ValueError("data.paths has an empty entry; give a file, a folder or a glob")
    path = Path(entry).expanduser()
    if glob.has_magic(entry):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise ValueError(f"data.paths entry {entry!r} matches no files; fix the pattern")
        return found
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(s.startswith(".") or s == "__pycache__" for s in p.parts)
        )
        if not found:
            raise ValueError(f"data directory {path} holds no files; add text files to it")
        return found
    if not path.is_file():
        raise ValueError(f"data file {path} not found; fix data.paths")
    return [path]


def list_documents(
    corpus: str | None, paths: Sequence[str] = (), text_field: str = "text"
) -> list[Path | Record]:
    """Documents of the spec's `data` section: `paths` (files, directories, globs) when given,
    otherwise the built-in corpus (`stdlib`). A `.jsonl` file gives one `Record` per non-blank
    line, whose text is in `text_field` (or a chat in `messages`)."""
    if paths:
        seen: dict[str, Path] = {}
        for entry in paths:
            for p in _expand(str(entry)):
                seen.setdefault(os.path.abspath(p), p)
        docs: list[Path | Record] = []
        for p in seen.values():
            docs += jsonl_records(p, text_field) if p.suffix == JSONL else [p]
        if not docs:
            raise ValueError("the JSONL files of data.paths hold no records; add some lines")
        return docs
    if corpus == "stdlib":
        docs = stdlib_documents()
        if not docs:
            where = sysconfig.get_paths()["stdlib"]
            raise ValueError(
                f"no .py files under the stdlib path {where}; list files in data.paths"
            )
        return docs
    if corpus is None:
        raise ValueError(
            "no training data: corpus is null and paths is empty; "
            "use corpus: stdlib or list text files under data.paths"
        )
    raise ValueError(f"unknown corpus {corpus!r}; use corpus: stdlib or list files in data.paths")


def document_keys(docs: Sequence[Path | Record]) -> list[str]:
    """Stable names of documents: their paths relative to the deepest common folder, and for a
    JSONL record its line (`data/chat.jsonl:12`)."""
    absolute = [os.path.abspath(d.path if isinstance(d, Record) else d) for d in docs]
    if not absolute:
        return []
    root = os.path.commonpath([os.path.dirname(a) for a in absolute])
    keys = [Path(os.path.relpath(a, root)).as_posix() for a in absolute]
    return [
        f"{k}:{d.line}" if isinstance(d, Record) else k for k, d in zip(keys, docs, strict=True)
    ]


def split_documents(
    docs: Sequence[Path], val_fraction: float, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """(train, validation): a document is held out iff a hash of (seed, its key) is below
    `val_fraction`, so the split does not depend on which other documents exist. With
    `val_fraction > 0` both sides get at least one document."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    docs = list(docs)
    if val_fraction == 0:
        return docs, []
    if len(docs) < 2:
        raise ValueError(
            f"a validation split needs at least 2 documents, got {len(docs)}; "
            "add files or set data.val_fraction: 0"
        )
    u = np.array([_unit_hash(f"{seed}/{k}") for k in document_keys(docs)])
    held = u < val_fraction
    if not held.any():
        held[np.argmin(u)] = True
    if held.all():
        held[np.argmax(u)] = False
    return [d for d, h in zip(docs, held, strict=True) if not h], [
        d for d, h in zip(docs, held, strict=True) if h
    ]


def _unit_hash(text: str) -> float:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def iter_texts(docs: Iterable[Path | Record], max_bytes: int | None = None) -> Iterator[str]:
    """Document texts (UTF-8, bad bytes replaced; a JSONL record's text, or its messages'
    contents), stopping once `max_bytes` were read: the input for training a BPE tokenizer."""
    total = 0
    for d in docs:
        data = d.read_text().encode("utf-8") if isinstance(d, Record) else _read(d)
        yield data.decode("utf-8", errors="replace")
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            return


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(
            f"cannot read data file {path} ({e.strerror}); restore it or remove it from data.paths"
        ) from None


JSONL_HINT = (
    'each line of a .jsonl file is one JSON object: {"text": "..."} (the field data.text_field '
    'names) or {"messages": [{"role": "user", "content": "..."}, ...]}'
)


@dataclass(frozen=True, slots=True)
class Record:
    """One record (non-blank line) of a JSONL file, a document of its own: the file, its line
    number (from 1), the line's bytes `[start, end)` in the file, and the field holding its
    text. Like a path it has `read_text()` (the text, or a chat's message contents)."""

    path: Path
    line: int
    start: int
    end: int
    field: str = "text"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"

    def error(self, problem: str, hint: str = JSONL_HINT) -> UserError:
        return UserError(f"{self}: {problem}", field=("data", "paths"), hint=hint)

    def value(self) -> str | list:
        """The record's text (a string) or its chat messages (a list), checked."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.start)
                raw = f.read(self.end - self.start)
        except OSError as e:
            raise self.error(f"cannot read the file ({e.strerror})", "restore it") from None
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise self.error("the line is not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise self.error(f"not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise self.error(f"a JSON {json_kind(obj)}, not an object")
        key = self.field if self.field in obj else "messages" if "messages" in obj else None
        if key is None:
            keys = ", ".join(map(repr, list(obj)[:8])) or "none"
            raise self.error(
                f'the record has no "{self.field}" field and no "messages" (its keys: {keys})',
                "set data.text_field to the field that holds each record's text, or give "
                'chat records a "messages" list of {role, content} objects',
            )
        value = obj[key]
        if isinstance(value, str):
            if not valid_text(value):
                raise self.error(f'"{key}" is not valid Unicode (a lone surrogate)')
            return value
        if isinstance(value, list):
            try:
                return check_messages(value, key)
            except ChatError as e:
                raise self.error(str(e)) from None
        raise self.error(f'"{key}" is a {json_kind(value)}, not a string (text) or a list (a chat)')

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        value = self.value()
        return value if isinstance(value, str) else "\n".join(m["content"] for m in value)

    def tokens(self, tokenizer) -> tuple[np.ndarray, bool]:
        """(ids, is a chat): a chat's ids carry NO_LOSS outside the assistant's replies."""
        value = self.value()
        if isinstance(value, str):
            return _encode(tokenizer, value.encode("utf-8")), False
        try:
            require_template(tokenizer, "chat records (messages)")
        except UserError as e:
            raise self.error(str(e), e.hint) from None
        try:
            return encode_chat(tokenizer, value), True
        except ChatError as e:
            raise self.error(
                str(e), "fix the record, or use a tokenizer whose template fits"
            ) from None


def jsonl_records(path: Path, text_field: str = "text") -> list[Record]:
    """A `Record` for every non-blank line of the JSONL file (read once, not parsed)."""
    data = _read(path)
    out, start = [], 0
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            out.append(Record(path, number, start, start + len(line), text_field))
        start += len(line) + 1
    return out


class TokenStream:
    """Batches `[batch, seq_len + 1]` int32 of packed documents (order: module docstring).

    `loop=True` (training) runs forever over epochs; `loop=False` (validation) makes one pass
    over epoch 0 and drops the last partial batch. `max_batches` stops after that many batches.
    `rows`: serve only these rows of each batch (indices into it, in order; None: all).
    Memory: one shuffle window of the rows served, `window * len(rows) * (seq_len + 1)` int32
    (the whole window while it is cut into rows), plus one document.
    """

    def __init__(
        self,
        docs: Sequence[Path],
        tokenizer,
        *,
        seq_len: int,
        batch: int,
        seed: int = 0,
        loop: bool = True,
        window: int = 64,
        max_batches: int | None = None,
        state: dict | None = None,
        rows: Sequence[int] | None = None,
    ):
        if not docs:
            raise ValueError("no documents to make batches from")
        if seq_len < 1 or batch < 1 or window < 1:
            raise ValueError(
                f"seq_len, batch and window must be >= 1 (got {seq_len}, {batch}, {window})"
            )
        self.docs, self.tokenizer = list(docs), tokenizer
        self.seq_len, self.batch, self.seed = seq_len, batch, seed
        self.loop, self.window, self.max_batches = loop, window, max_batches
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        if self.rows is not None and (
            np.any(np.diff(self.rows) <= 0) or self.rows.min(initial=0) < 0
            or self.rows.max(initial=0) >= batch
        ):  # fmt: skip
            raise ValueError(f"rows must be ascending indices into a batch of {batch}")
        self._rows_per_batch = batch if self.rows is None else len(self.rows)
        eos = getattr(tokenizer, "eos_id", -1)
        self._sep = np.array([eos], np.int32) if eos >= 0 else _encode(tokenizer, b"\n\n")
        setting = (
            f"{seed} {seq_len} {batch} {window} {loop} {tokenizer.name} {tokenizer.vocab_size}"
        )
        if bos_prefix(tokenizer, None):  # documents start with BOS (others: unchanged)
            setting += " bos"
        fields = sorted({d.field for d in self.docs if isinstance(d, Record)})
        if fields:  # what a record's tokens are depends on these too (plain files: unchanged)
            template = getattr(tokenizer, "chat_template", None) or ""
            setting += f" jsonl {fields} {zlib.crc32(template.encode())}"
        self.fingerprint = zlib.crc32("\n".join([setting, *document_keys(self.docs)]).encode())
        self._start, self._skip = (0, 0, 0), 0
        if state is not None:
            self._restore(state)
        self._rows: np.ndarray | None = None  # the current window's rows, shuffled
        self._next_start = self._start
        self._served = 0
        self._order: tuple = (-1, None)  # (epoch, permutation of document indices)
        self._cache: tuple = (-1, -1, None, None)  # (epoch, index, path, tokens)

    def state(self) -> dict:
        """Position of the next batch: pass as `state=` to continue from here."""
        pos = dict(zip(("epoch", "doc", "offset"), self._start, strict=True))
        return {**pos, "skip": self._skip, "fingerprint": self.fingerprint}

    def _restore(self, state: dict) -> None:
        try:
            epoch, doc, offset, skip = (int(state[k]) for k in ("epoch", "doc", "offset", "skip"))
            fingerprint = int(state["fingerprint"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"bad data state {state!r}: expected the dict TokenStream.state() returns"
            ) from None
        if fingerprint != self.fingerprint:
            raise ValueError(
                "the data state was saved with other data settings or documents "
                "(seed, seq_len, batch, tokenizer or file list changed); restore "
                "them or start the data stream afresh"
            )
        if min(epoch, doc, offset, skip) < 0 or doc >= len(self.docs) or skip >= self.window:
            raise ValueError(f"data state {state!r} is out of range for {len(self.docs)} documents")
        self._start, self._skip = (epoch, doc, offset), skip

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> np.ndarray:
        if self.max_batches is not None and self._served >= self.max_batches:
            raise StopIteration
        if self._rows is None:
            self._fill()
        k, b = self._skip, self._rows_per_batch
        if k >= self._batches_held:  # only at the end of a one-pass stream
            if self._served == 0 and self._start == (0, 0, 0) and k == 0:
                raise ValueError(
                    f"{len(self.docs)} documents hold fewer tokens than one batch "
                    f"of {self.batch} x {self.seq_len + 1}; add data or lower batch/seq_len"
                )
            raise StopIteration
        out = self._rows[k * b : (k + 1) * b]
        self._skip += 1
        self._served += 1
        if self._skip == self.window:
            self._start, self._skip, self._rows = self._next_start, 0, None
        return out

    def with_state(self) -> Iterator[tuple[np.ndarray, dict]]:
        """(batch, state after it): the pairs to prefetch, so a checkpoint can record the state
        belonging to the last batch actually trained on rather than the prefetcher's."""
        for batch in self:
            yield batch, self.state()

    def _fill(self) -> None:
        row = self.seq_len + 1
        tokens, self._next_start = self._take(self._start, self.window * self.batch * row)
        rows = tokens[: len(tokens) // row * row].reshape(-1, row)
        if self.window > 1:
            rows = rows[np.random.default_rng((self.seed, *self._start)).permutation(len(rows))]
        self._batches_held = len(rows) // self.batch  # a partial last batch is never served
        if self.rows is not None:
            rows = rows[: self._batches_held * self.batch].reshape(-1, self.batch, row)
            rows = rows[:, self.rows].reshape(-1, row)
        self._rows = rows

    def _take(self, start: tuple, n: int) -> tuple[np.ndarray, tuple]:
        """The `n` tokens from position `start` (fewer only where a one-pass stream ends) and
        the position after them."""
        epoch, doc, offset = start
        parts, empty = [], 0
        while n > 0 and (self.loop or epoch == 0):
            path, tokens = self._document(epoch, doc)
            if offset and offset >= len(tokens):  # an empty document has nothing to skip
                raise ValueError(
                    f"data state offset {offset} is past the end of {path} ({len(tokens)} "
                    "tokens): the file changed since the state was saved; restore it or start "
                    "the data stream afresh"
                )
            parts.append(tokens[offset : offset + n])
            n -= len(parts[-1])
            offset += len(parts[-1])
            if offset == len(tokens):
                doc, offset = doc + 1, 0
                if doc == len(self.docs):
                    epoch, doc = epoch + 1, 0
            empty = empty + 1 if len(parts[-1]) == 0 else 0
            if empty > len(self.docs):  # only with a tokenizer whose separator is empty
                raise ValueError("every document tokenizes to nothing; check the data files")
        return (np.concatenate(parts) if parts else np.zeros(0, np.int32)), (epoch, doc, offset)

    def _document(self, epoch: int, index: int) -> tuple[Path, np.ndarray]:
        """The `index`-th document of `epoch` and its tokens, separator included. The last one
        is cached: a window usually starts inside the document where the previous one ended."""
        if self._cache[:2] != (epoch, index):
            if self._order[0] != epoch:
                order = np.random.default_rng((self.seed, epoch)).permutation(len(self.docs))
                self._order = (epoch, order)
            path = self.docs[self._order[1][index]]
            tokens, chat = _tokens(self.tokenizer, path)
            first = int(token_ids(tokens[0])) if len(tokens) else None
            bos = np.array(bos_prefix(self.tokenizer, first), np.int32)
            # no loss on predicting the separator after a chat (its replies end as the
            # template ends a turn), nor on the BOS in front of one
            sep = no_loss(self._sep) if chat else self._sep
            tokens = np.concatenate([no_loss(bos) if chat else bos, tokens, sep])
            self._cache = (epoch, index, path, tokens)
        return self._cache[2], self._cache[3]


TOKEN_IDS = ".ids"  # a pre-tokenized document: little-endian int32 token ids
JSONL = ".jsonl"  # one JSON object per line, each a document (`Record`)


def _tokens(tokenizer, path: Path | Record) -> tuple[np.ndarray, bool]:
    """A document's ids, and whether it is a chat (its ids carry no-loss flags)."""
    if isinstance(path, Record):
        return path.tokens(tokenizer)
    if path.suffix == TOKEN_IDS:
        return np.frombuffer(_read(path), dtype="<i4").astype(np.int32), False
    return _encode(tokenizer, _read(path)), False


def _encode(tokenizer, data: bytes) -> np.ndarray:
    if hasattr(tokenizer, "encode_bytes"):
        return np.asarray(tokenizer.encode_bytes(data), dtype=np.int32)
    return np.asarray(tokenizer.encode(data.decode("utf-8", errors="replace")), dtype=np.int32)


class Prefetcher:
    """Iterates `iterable` in a daemon thread, keeping up to `depth` items ready.

    An exception raised by the iterable is re-raised by `next()` in the consumer. `close()`
    (or leaving a `with` block) stops the thread; items still queued are dropped.
    """

    def __init__(self, iterable: Iterable, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(iter(iterable),), name="prefetch", daemon=True
        )
        self._thread.start()

    def _run(self, it: Iterator) -> None:
        try:
            for item in it:
                if not self._put(("item", item)):
                    return
        except BaseException as e:  # anything, so the consumer never waits forever
            self._put(("error", e))
        else:
            self._put(("end", None))

    def _put(self, message: tuple) -> bool:
        while not self._stop.is_set():  # poll, so close() can stop a producer blocked on put
            try:
                self._queue.put(message, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._done = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self._done = True
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_batches(docs: Sequence[Path], tokenizer, *, train: bool = True, **options) -> TokenStream:
    """Training batches (endless, `train=True`) or one validation pass (`train=False`);
    `options` are TokenStream's: seq_len, batch, seed, window, max_batches, state."""
    return TokenStream(docs, tokenizer, loop=train, **options)
