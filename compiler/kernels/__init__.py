"""CPU kernels: C++ compiled from source with this machine's compiler on first use, cached, and
registered with XLA through `jax.ffi` for the CPU platform only.

`load()` builds one library (once per source, jaxlib and compiler) and registers its two
targets, the packed mat-mul (`packed_matmul.cc`) and the decode-time attention over a KV cache
(`cache_attention.cc`), or says in one warning line why it cannot, and decoding then keeps
XLA's dots and attention. The cache folder is `$TANDEM_KERNEL_CACHE`, else
`$XDG_CACHE_HOME/tandem-dsl`, else `~/.cache/tandem-dsl`; the compiler is `$CXX`, else g++,
c++ or clang++.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
import jaxlib

SOURCES = tuple(Path(__file__).with_name(f) for f in ("packed_matmul.cc", "cache_attention.cc"))
TARGET = "tandem_packed_matmul"
ATTENTION_TARGET = "tandem_cache_attention"
HEADER = Path(__file__).with_name("chunks.h")  # included by both sources
ISAS = ("scalar", "avx2", "avx512")  # the kernel's instruction-set codes 0, 1, 2


@dataclass(frozen=True)
class Kernel:
    """A loaded kernel library: its path and the instruction-set switch (tests, benches)."""

    path: Path
    lib: ctypes.CDLL

    @property
    def isa(self) -> str:
        """The instruction set the kernel runs now: scalar, avx2 or avx512."""
        return ISAS[self.lib.tandem_kernel_isa()]

    @property
    def best_isa(self) -> str:
        return ISAS[self.lib.tandem_kernel_best_isa()]

    def set_isa(self, name: str) -> str:
        """Use `name` or the best this CPU has below it; returns the one in use."""
        return ISAS[self.lib.tandem_kernel_set_isa(ISAS.index(name))]


def cache_dir() -> Path:
    if os.environ.get("TANDEM_KERNEL_CACHE"):
        return Path(os.environ["TANDEM_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tandem-dsl"


def _compiler() -> str | None:
    return os.environ.get("CXX") or next(
        (c for c in ("g++", "c++", "clang++") if shutil.which(c)), None
    )


def _build(cxx: str) -> Path:
    """Compile the kernel into the cache (atomic rename: concurrent builds are harmless)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    key = hashlib.sha256(
        b"\0".join(
            x.encode()
            for x in (
                *(f.read_text() for f in (*SOURCES, HEADER)),
                jaxlib.__version__,
                version.stdout,
                platform.machine(),
            )  # fmt: skip
        )
    ).hexdigest()[:16]
    out = cache_dir() / f"tandem_kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # no -march=native: the library picks AVX-512 / AVX2 / scalar code at run time, so a cache
    # shared between machines never runs an instruction the CPU lacks
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-I", jax.ffi.include_dir(),
           *map(str, SOURCES), "-o", tmp]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"{cxx} failed: {tail[0]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


@functools.cache
def load() -> Kernel | None:
    """The registered kernel, or None (with one warning line on stderr) when it cannot be had."""
    reason = unavailable_reason()
    if reason is None:
        try:
            path = _build(_compiler())
            lib = ctypes.cdll.LoadLibrary(str(path))
            for target, symbol in ((TARGET, lib.TandemPackedMatmul),
                                   (ATTENTION_TARGET, lib.TandemCacheAttention)):  # fmt: skip
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
            return Kernel(path, lib)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            reason = f"could not build it ({e})"
    print(f"warning: CPU decode kernel off, using XLA dots: {reason}", file=sys.stderr)
    return None


def call(target: str, result: jax.ShapeDtypeStruct, *args, **attrs) -> jax.Array:
    """The CPU kernel `target` on args (inside a CPU lowering; registers it on first use)."""
    if load() is None:
        raise RuntimeError("this program needs the CPU kernel, which is not available here")
    return jax.ffi.ffi_call(target, result, vmap_method="sequential")(*args, **attrs)


def unavailable_reason() -> str | None:
    """Why the kernel cannot be built here, before trying (None: it can be tried)."""
    if os.environ.get("TANDEM_KERNEL") == "off":
        return "TANDEM_KERNEL=off"
    if _compiler() is None:
        return "no C++ compiler found (install g++ or set CXX)"
    return None
