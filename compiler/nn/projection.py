"""Tandem projections P_j: large-model residual vectors (d_in) -> small-model ones (d_out).

Params, keyed by the small layer that reads them (per_layer) or one shared copy:
  per_layer: {"layers_<j>": copy} for every wired small layer j
  shared:    {"shared": copy}
  fuse:      {"fuse": {"w": [d_in, d_out], "gain": [d_out] zeros}} (a wiring's `fuse`,
             `fused_input`)
  predict:   {"predict": {"layers_<j>": {"w": [d_out, d_out]}}} for every wired small layer j
             (a wiring's `predict`, `compiler.nn.tandem.predicted_memory`)
A copy's leaves are what its kind says (`KINDS`). The spec names the kinds
(`tandem_dsl.model.PROJECTION_KINDS`, with whether each needs `hidden`); every name has one
entry here, which owns its params (shapes, init, logical axes) and its map
(docs/extending.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from compiler.ir import ProjectionIR
from compiler.nn.layers import DTYPES, materialize, normal


@dataclass(frozen=True)
class Leaf:
    shape: tuple[int, ...]
    std: float  # normal init with this std; 0: zeros


@dataclass(frozen=True)
class Kind:
    """One projection kind: the leaves of a copy, their logical axes (the input side, the
    large model's width, None) and the map x [B, T, d_in] -> [B, T, d_out]."""

    leaves: Callable[[ProjectionIR], dict[str, Leaf]]
    axes: dict[str, tuple[str | None, ...]]
    apply: Callable[[dict, jax.Array], jax.Array]


def _linear_leaves(p: ProjectionIR) -> dict[str, Leaf]:
    out = {"w": Leaf((p.d_in, p.d_out), p.d_in**-0.5)}
    return {**out, "b": Leaf((p.d_out,), 0.0)} if p.bias else out


def _linear(c: dict, x: jax.Array) -> jax.Array:
    y = jnp.einsum("bti,io->bto", x.astype(c["w"].dtype), c["w"])
    return y + c["b"] if "b" in c else y


def _mlp_leaves(p: ProjectionIR) -> dict[str, Leaf]:
    h = p.hidden_dim
    out = {"w_in": Leaf((p.d_in, h), p.d_in**-0.5), "w_out": Leaf((h, p.d_out), h**-0.5)}
    if p.bias:
        out |= {"b_in": Leaf((h,), 0.0), "b_out": Leaf((p.d_out,), 0.0)}
    return out


def _mlp(c: dict, x: jax.Array) -> jax.Array:
    """gelu (tanh) between the two layers."""
    hid = jnp.einsum("bti,ih->bth", x.astype(c["w_in"].dtype), c["w_in"])
    hid = hid + c["b_in"] if "b_in" in c else hid
    y = jnp.einsum("bth,ho->bto", jax.nn.gelu(hid, approximate=True), c["w_out"])
    return y + c["b_out"] if "b_out" in c else y


def _lowrank_leaves(p: ProjectionIR) -> dict[str, Leaf]:
    """W = A B of rank r = hidden: r (d_in + d_out) params instead of d_in d_out."""
    r = p.hidden_dim
    out = {"w_a": Leaf((p.d_in, r), p.d_in**-0.5), "w_b": Leaf((r, p.d_out), r**-0.5)}
    return {**out, "b": Leaf((p.d_out,), 0.0)} if p.bias else out


def _lowrank(c: dict, x: jax.Array) -> jax.Array:
    y = jnp.einsum("bti,ir->btr", x.astype(c["w_a"].dtype), c["w_a"])
    y = jnp.einsum("btr,ro->bto", y, c["w_b"])
    return y + c["b"] if "b" in c else y


KINDS: dict[str, Kind] = {
    "linear": Kind(_linear_leaves, {"w": (None, "embed"), "b": ("embed",)}, _linear),
    "mlp": Kind(
        _mlp_leaves,
        {"w_in": (None, "mlp"), "b_in": ("mlp",), "w_out": ("mlp", "embed"), "b_out": ("embed",)},
        _mlp,
    ),
    "lowrank": Kind(
        _lowrank_leaves, {"w_a": (None, None), "w_b": (None, "embed"), "b": ("embed",)}, _lowrank
    ),
}


def kind_of(proj: ProjectionIR) -> Kind:
    try:
        return KINDS[proj.kind]
    except KeyError:
        raise ValueError(f"projection {proj.name!r}: unknown kind {proj.kind!r}") from None


def leaf_axes() -> dict[str, tuple[str | None, ...]]:
    """Every projection leaf name -> its logical axes (one meaning per name across kinds)."""
    out: dict[str, tuple[str | None, ...]] = {}
    for kind in KINDS.values():
        out |= kind.axes
    return out


def _init_copy(proj: ProjectionIR, dt) -> dict:
    if proj.init == "identity":  # checked: linear, d_in == d_out
        return {
            name: jnp.eye(*leaf.shape, dtype=dt) if name == "w" else jnp.zeros(leaf.shape, dt)
            for name, leaf in kind_of(proj).leaves(proj).items()
        }
    return {
        name: normal(leaf.shape, leaf.std, dt) if leaf.std else jnp.zeros(leaf.shape, dt)
        for name, leaf in kind_of(proj).leaves(proj).items()
    }


def param_count(proj: ProjectionIR, n_wired: int, fuse: bool = False, predict: bool = False) -> int:
    """Exact size of `init_projection` for `n_wired` wired small layers."""
    one = sum(math.prod(leaf.shape) for leaf in kind_of(proj).leaves(proj).values())
    n = one * (n_wired if proj.per_layer else 1)
    n += (proj.d_in + 1) * proj.d_out if fuse else 0
    return n + (n_wired * proj.d_out * proj.d_out if predict else 0)


@partial(jax.jit, static_argnums=(0, 1, 3, 4, 5))
def init_projection(
    proj: ProjectionIR,
    wired_layers: tuple[int, ...],
    rng,
    dtype: str = "float32",
    fuse: bool = False,
    predict: bool = False,
) -> dict:
    return materialize(projection_spec(proj, wired_layers, dtype, fuse, predict), rng)


def projection_spec(
    proj: ProjectionIR,
    wired_layers: tuple[int, ...],
    dtype: str,
    fuse: bool = False,
    predict: bool = False,
) -> dict:
    dt = DTYPES[dtype]
    if not proj.per_layer:
        out = {"shared": _init_copy(proj, dt)}
    else:
        out = {f"layers_{j}": _init_copy(proj, dt) for j in wired_layers}
    if fuse:  # gain zeros: the feature input starts switched off, as a model without it
        out["fuse"] = {
            "w": normal((proj.d_in, proj.d_out), proj.d_in**-0.5, dt),
            "gain": jnp.zeros((proj.d_out,), dt),
        }
    if predict:
        d = proj.d_out
        out["predict"] = {f"layers_{j}": {"w": normal((d, d), d**-0.5, dt)} for j in wired_layers}
    return out


def fused_input(params: dict, x: jax.Array) -> jax.Array:
    """The feature input: gain * rms_norm(x @ w), x [B, T, d_in] -> [B, T, d_out]. Normalized
    after the map, as the attention path does: a large model's residual has a few huge
    dimensions (SmolLM2's last layer: half the squared norm in 5 of 576) that the map learns
    to weigh down; the gain, zero at init, sets the size against the token embedding."""
    c = params["fuse"]
    y = jnp.einsum("bti,io->bto", x.astype(c["w"].dtype), c["w"]).astype(jnp.float32)
    y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + 1e-6)
    return (y * c["gain"]).astype(c["w"].dtype)


def project(params: dict, proj: ProjectionIR, layer: int, x: jax.Array) -> jax.Array:
    """P_layer: x [B, T, d_in] -> [B, T, d_out] in the projection's dtype."""
    copy = params[f"layers_{layer}"] if proj.per_layer else params["shared"]
    return kind_of(proj).apply(copy, x)
