"""A spec's `data` section as batch sources for the training loop."""

from __future__ import annotations

import zlib

from .data import Prefetcher, TokenStream, list_documents, split_documents
from .errors import UserError


class _Resumable:
    """Prefetched training batches that report the data position of the last batch taken."""

    def __init__(self, stream: TokenStream):
        self._position = stream.state()
        self._items = Prefetcher(stream.with_state(), depth=2)

    def __iter__(self):
        return self

    def __next__(self):
        batch, self._position = next(self._items)
        return batch

    def state(self) -> dict:
        return self._position

    def close(self) -> None:
        self._items.close()


class SpecData:
    """Documents of the spec's corpus split into train and validation, tokenized lazily."""

    def __init__(self, spec, tokenizer):
        try:
            docs = list_documents(spec.data.corpus, spec.data.paths)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.tokenizer = tokenizer
        self.seed = spec.data.seed
        self.train_docs, self.val_docs = split_documents(docs, spec.data.val_fraction, self.seed)

    def _seed(self, stage_seed: int) -> int:
        return zlib.crc32(f"{self.seed}/{stage_seed}".encode())

    def train(self, seq_len: int, batch: int, seed: int, position: dict | None) -> _Resumable:
        try:
            stream = TokenStream(
                self.train_docs, self.tokenizer, seq_len=seq_len, batch=batch,
                seed=self._seed(seed), state=position,
            )  # fmt: skip
        except ValueError as e:
            raise UserError(f"cannot resume the training data: {e}") from None
        return _Resumable(stream)

    def validation(self, seq_len: int, batch: int, n_batches: int) -> list:
        stream = TokenStream(
            self.val_docs, self.tokenizer, seq_len=seq_len, batch=batch, seed=self.seed,
            loop=False, window=1, max_batches=n_batches,
        )  # fmt: skip
        return list(stream)


def data_for_spec(spec, tokenizer) -> SpecData:
    return SpecData(spec, tokenizer)
