"""Weights packed for the CPU decode kernel, and the one mat-mul that takes either form.

`PackedWeight` holds W [in, out] (a logical shape such as wq [D, H, E] flattened at
`n_in_dims`) as panels [ceil(out/16), in, 16]: panels[p, i, c] = W[i, 16 p + c], zero past
`out` (the layout of `compiler/kernels/packed_matmul.cc`). Decoding params are packed once,
outside the jitted programs (`compiler.decode.backend.prepare`); training never sees them.

`dense(x, w)` is x [..., in] @ w. With a packed w it lowers per platform: the kernel's custom
call on CPU, a plain dot over the panels elsewhere (so a program with packed weights still
runs, and exports, for TPU/GPU). On CPU the kernel takes every row count: it beats XLA's
GEMM on the raw weights from 1 row (1.5x) to a 165-token prefill (1.1x), while XLA's dot
over the panel layout is 1.6-8x slower than either (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

PANEL = 16


@jax.tree_util.register_pytree_node_class
class PackedWeight:
    """W of logical `shape`, the first `n_in_dims` dims the input, packed into panels."""

    def __init__(self, panels, shape: tuple[int, ...], n_in_dims: int = 1):
        self.panels = panels
        self.shape = tuple(shape)
        self.n_in_dims = n_in_dims

    @property
    def d_in(self) -> int:
        return math.prod(self.shape[: self.n_in_dims])

    @property
    def d_out(self) -> int:
        return math.prod(self.shape[self.n_in_dims :])

    @property
    def dtype(self):
        return self.panels.dtype

    def tree_flatten(self):
        return (self.panels,), (self.shape, self.n_in_dims)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    def __repr__(self) -> str:
        return f"PackedWeight(shape={self.shape}, n_in_dims={self.n_in_dims})"


@jax.jit
def _panels(w2: jax.Array) -> jax.Array:
    d_in, d_out = w2.shape
    n = -(-d_out // PANEL)
    w2 = jnp.pad(w2, ((0, 0), (0, n * PANEL - d_out)))
    return w2.reshape(d_in, n, PANEL).transpose(1, 0, 2)  # a copy in the kernel's layout


def pack(w: jax.Array, n_in_dims: int = 1) -> PackedWeight:
    """Pack a float32 weight once (the first `n_in_dims` dims are the input)."""
    if w.dtype != jnp.float32:
        raise ValueError(f"the CPU kernel packs float32 weights, not {w.dtype}")
    d_in = math.prod(w.shape[:n_in_dims])
    return PackedWeight(_panels(w.reshape(d_in, -1)), w.shape, n_in_dims)


def dense(x: jax.Array, w) -> jax.Array:
    """x [..., in] @ w -> [..., out] for an array w [in, out] or a PackedWeight (float32)."""
    if not isinstance(w, PackedWeight):
        return x @ w
    lead = x.shape[:-1]
    rows = math.prod(lead)
    x2 = x.reshape(rows, w.d_in).astype(jnp.float32)
    if rows == 0:
        y = jnp.zeros((0, w.d_out), jnp.float32)
    else:
        y = jax.lax.platform_dependent(
            x2,
            w.panels,
            cpu=lambda a, p: _kernel_call(a, p, w.d_out),
            default=lambda a, p: _dot_panels(a, p, w.d_out),
        )
    return y.reshape(*lead, w.d_out)


def _dot_panels(x2: jax.Array, panels: jax.Array, d_out: int) -> jax.Array:
    y = jnp.einsum("ri,pic->rpc", x2, panels, preferred_element_type=jnp.float32)
    return y.reshape(x2.shape[0], -1)[:, :d_out]


def _kernel_call(x2: jax.Array, panels: jax.Array, d_out: int) -> jax.Array:
    from compiler import kernels

    out = jax.ShapeDtypeStruct((x2.shape[0], d_out), jnp.float32)
    return kernels.call(kernels.TARGET, out, x2, panels)


def is_packed(params: dict) -> bool:
    """Whether a layer's attention params were packed for the CPU kernel (then its attention
    over the cache runs the kernel too)."""
    return isinstance(params.get("wqkv"), PackedWeight)
