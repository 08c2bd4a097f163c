"""The header of a GGUF file (llama.cpp's format), read without the `gguf` package.

`tandemc check` reads a model's shape from here, so it stays fast: long arrays (the
vocabulary, the merges) are skipped and only their length kept, and no tensor data is read
except what `read_f32` is asked for (a few floats). Layout: magic, version, tensor count,
metadata count, the metadata (key, type, value), then per tensor its name, dims (innermost
first), type and offset into the data, which starts at the next `general.alignment` boundary.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

MAGIC = b"GGUF"
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}  # fmt: skip
STRING, ARRAY = 8, 9
F32 = 0  # ggml tensor type
KEPT_ITEMS = 64  # arrays longer than this keep only their length (ArrayLength)
MAX_COUNT = 1 << 32  # more tensors or keys than this is a corrupt count


class HeaderError(ValueError):
    """The file is not a GGUF file, or its header is cut short or corrupt."""


@dataclass(frozen=True)
class ArrayLength:
    """A long metadata array, of which only the length was kept."""

    length: int


@dataclass(frozen=True)
class TensorInfo:
    dims: tuple[int, ...]  # innermost first: a [rows, cols] matrix is (cols, rows)
    type: int
    offset: int  # from the start of the file


@dataclass
class Header:
    metadata: dict = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)


class _Reader:
    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise HeaderError(f"{self.path}: the GGUF header is cut short (truncated or corrupt)")
        return data

    def scalar(self, kind: int):
        fmt = SCALARS.get(kind)
        if fmt is None:
            raise HeaderError(f"{self.path}: unknown GGUF value type {kind} (corrupt header)")
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self) -> int:
        n = self.scalar(10)
        if n > MAX_COUNT:
            raise HeaderError(f"{self.path}: impossible count {n} in the GGUF header (corrupt)")
        return n

    def string(self) -> str:
        return self.take(self.count()).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind == STRING:
            return self.string()
        if kind != ARRAY:
            return self.scalar(kind)
        item, n = self.scalar(4), self.count()
        if n <= KEPT_ITEMS:
            return [self.value(item) for _ in range(n)]
        if item == STRING:
            for _ in range(n):
                self.f.seek(self.count(), 1)
        elif item == ARRAY:
            for _ in range(n):
                self.value(item)
        else:
            self.scalar(item)  # checks the type; the rest is skipped by size
            self.f.seek((n - 1) * struct.calcsize(SCALARS[item]), 1)
        return ArrayLength(n)


def read_header(path: str | Path) -> Header:
    """The metadata and tensor table of a GGUF file; HeaderError when it is not one."""
    path = Path(path)
    st = path.stat()  # FileNotFoundError for a missing file
    return _read(str(path.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int, size: int) -> Header:
    with open(path, "rb") as f:
        r = _Reader(f, Path(path))
        magic = f.read(4)
        if magic != MAGIC:
            raise HeaderError(
                f"{path} is not a GGUF file (it starts with {magic!r}, not {MAGIC!r}); point "
                "the path at a .gguf file written by llama.cpp or gguf-py"
            )
        r.scalar(4)  # version
        n_tensors, n_keys = r.count(), r.count()
        header = Header()
        for _ in range(n_keys):
            key = r.string()
            header.metadata[key] = r.value(r.scalar(4))
        infos = []
        for _ in range(n_tensors):
            name = r.string()
            dims = tuple(r.scalar(10) for _ in range(r.scalar(4)))
            infos.append((name, dims, r.scalar(4), r.scalar(10)))
        align = int(header.get("general.alignment", 32)) or 32
        start = -(-f.tell() // align) * align
        for name, dims, kind, offset in infos:
            header.tensors[name] = TensorInfo(dims, kind, start + offset)
        if infos and start + max(i[3] for i in infos) > size:
            raise HeaderError(
                f"{path}: tensor data lies past the end of the file (truncated or corrupt)"
            )
        return header


def read_f32(path: str | Path, info: TensorInfo) -> list[float]:
    """The values of a small F32 tensor."""
    n = 1
    for d in info.dims:
        n *= d
    if info.type != F32:
        raise HeaderError(f"{path}: expected an F32 tensor, found ggml type {info.type}")
    with open(path, "rb") as f:
        f.seek(info.offset)
        data = f.read(4 * n)
    if len(data) != 4 * n:
        raise HeaderError(f"{path}: a tensor is cut short (truncated or corrupt)")
    return list(struct.unpack(f"<{n}f", data))
