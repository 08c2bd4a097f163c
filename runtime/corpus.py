"""A spec's `data` section as batch sources for the training loop."""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import numpy as np

from .data import Prefetcher, Record, TokenStream, list_documents, split_documents
from .errors import UserError, at_field

# The stdlib's held-out split starts with a 5.8k-token character table: read in order, the
# flagship's 4 validation batches were all that one file.
VAL_SPREAD = 64


class _Resumable:
    """Prefetched training batches that report the data position of the last batch taken."""

    def __init__(self, stream, field: tuple = ()):
        self._position = stream.state()
        self._items = Prefetcher(stream.with_state(), depth=2)
        self._field = field

    def __iter__(self):
        return self

    def __next__(self):
        try:
            batch, self._position = next(self._items)
        except ValueError as e:
            raise UserError(f"training data: {e}", field=self._field) from None
        return batch

    def state(self) -> dict:
        return self._position

    def close(self) -> None:
        self._items.close()


class MixedStream:
    """Each batch: rows from several TokenStreams stacked in a fixed order (their batch sizes
    set the mix); its state is every part's position, by name."""

    def __init__(self, parts: dict[str, TokenStream]):
        self.parts = parts

    def state(self) -> dict:
        return {name: s.state() for name, s in self.parts.items()}

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return np.concatenate([next(s) for s in self.parts.values()])

    def with_state(self):
        for batch in self:
            yield batch, self.state()


class SpecData:
    """Documents of the spec's corpus split into train and validation, tokenized lazily; with
    `generated` (pre-tokenized `.ids` documents) a `share` of each training batch's rows comes
    from those.

    `loss_mask`: the documents include JSONL records, whose tokens may carry no-loss flags (a
    chat trains on its replies only, `runtime.data`): the stages that read them compile the
    masked loss (`program_for_data`)."""

    def __init__(self, spec, tokenizer, generated: list[Path] = ()):
        text_field = getattr(spec.data, "text_field", "text")
        if not text_field:
            raise UserError(
                "data.text_field is empty", field=("data", "text_field"),
                hint='name the JSONL records\' text field, e.g. "text"',
            )  # fmt: skip
        with at_field(("data", "paths" if spec.data.paths else "corpus"), values=True):
            docs = list_documents(spec.data.corpus, spec.data.paths, text_field)
        self.loss_mask = any(isinstance(d, Record) for d in docs)
        self.tokenizer = tokenizer
        self.seed = spec.data.seed
        with at_field(("data", "val_fraction"), values=True):
            self.train_docs, self.val_docs = split_documents(
                docs, spec.data.val_fraction, self.seed
            )
        self.generated = list(generated)
        self.share = spec.data.generated.share if self.generated else 0.0

    def _seed(self, stage_seed: int) -> int:
        return zlib.crc32(f"{self.seed}/{stage_seed}".encode())

    def train(
        self,
        seq_len: int,
        batch: int,
        seed: int,
        position: dict | None,
        field: tuple = (),
        rows: np.ndarray | None = None,
    ) -> _Resumable:
        """Training batches from `position` (None: the start); `rows`: only these rows of
        each batch (this process's share, `runtime.data.TokenStream`)."""
        n_gen = round(self.share * batch)
        sizes = {"generated": n_gen, "corpus": batch - n_gen}
        docs = {"generated": self.generated, "corpus": self.train_docs}
        parts = [name for name, n in sizes.items() if n > 0]
        local = {name: None for name in parts}
        if rows is not None:  # a batch is its generated rows, then its corpus rows
            rows = np.asarray(rows)
            local = {"generated": rows[rows < n_gen], "corpus": rows[rows >= n_gen] - n_gen}
        try:
            streams = {
                name: TokenStream(
                    docs[name],
                    self.tokenizer,
                    seq_len=seq_len,
                    batch=sizes[name],
                    seed=self._seed(seed),
                    state=position if parts == ["corpus"] else (position or {}).get(name),
                    rows=local[name],
                )  # fmt: skip
                for name in parts
            }
        except ValueError as e:
            raise UserError(f"cannot resume the training data: {e}", field=field) from None
        if parts == ["corpus"]:
            return _Resumable(streams["corpus"], field)
        return _Resumable(MixedStream(streams), field)

    def validation(self, seq_len: int, batch: int, n_batches: int, field: tuple = ()) -> list:
        """Up to n_batches held-out batches, their rows spread evenly over the split's first
        VAL_SPREAD x that many rows (in packing order), so that one long file does not fill
        every batch; none with data.val_fraction 0."""
        if not self.val_docs:
            return []
        stream = TokenStream(
            self.val_docs, self.tokenizer, seq_len=seq_len, batch=1, seed=self.seed,
            loop=False, window=1, max_batches=VAL_SPREAD * batch * n_batches,
        )  # fmt: skip
        try:
            rows = np.concatenate(list(stream))
            if len(rows) < batch:
                raise ValueError(f"fewer tokens than one batch ({batch} x {seq_len + 1})")
        except ValueError as e:
            raise UserError(
                f"validation data: {e}",
                field=field or ("data", "val_fraction"),
                hint="raise data.val_fraction, add data, or lower this stage's batch or seq_len",
            ) from None
        n = min(n_batches, len(rows) // batch) * batch
        picked = rows[np.arange(n) * len(rows) // n]
        return list(picked.reshape(-1, batch, seq_len + 1))


def data_for_spec(spec, tokenizer, generated: list[Path] = ()) -> SpecData:
    return SpecData(spec, tokenizer, generated)


def program_for_data(prog, data: SpecData):
    """The program's IR as its data needs it: every stage with `loss_mask` when the tokens may
    carry no-loss flags (`compiler.loss_mask`); as it is otherwise, so plain text compiles the
    programs it always did."""
    if not data.loss_mask:
        return prog
    train = tuple(dataclasses.replace(s, loss_mask=True) for s in prog.train)
    return dataclasses.replace(prog, train=train)
