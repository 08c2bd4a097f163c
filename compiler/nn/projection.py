"""Tandem projections P_j: large-model residual vectors (d_in) -> small-model ones (d_out).

Params, keyed by the small layer that reads them (per_layer) or one shared copy:
  per_layer: {"layers_<j>": copy} for every wired small layer j
  shared:    {"shared": copy}
  copy (linear): w [d_in, d_out] (+ b [d_out] with bias)
  copy (mlp):    w_in [d_in, hidden], w_out [hidden, d_out] (+ b_in [hidden], b_out [d_out]),
                 gelu (tanh) in between; hidden = ProjectionIR.hidden_dim
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from compiler.ir import ProjectionIR
from compiler.nn.layers import DTYPES, materialize, normal


def _init_copy(proj: ProjectionIR, dt) -> dict:
    if proj.kind == "linear":
        p = {"w": normal((proj.d_in, proj.d_out), proj.d_in**-0.5, dt)}
        if proj.bias:
            p["b"] = jnp.zeros((proj.d_out,), dt)
        return p
    if proj.kind == "mlp":
        hid = proj.hidden_dim
        p = {
            "w_in": normal((proj.d_in, hid), proj.d_in**-0.5, dt),
            "w_out": normal((hid, proj.d_out), hid**-0.5, dt),
        }
        if proj.bias:
            p["b_in"] = jnp.zeros((hid,), dt)
            p["b_out"] = jnp.zeros((proj.d_out,), dt)
        return p
    raise ValueError(f"projection {proj.name!r}: unknown kind {proj.kind!r}")


@partial(jax.jit, static_argnums=(0, 1, 3))
def init_projection(
    proj: ProjectionIR, wired_layers: tuple[int, ...], rng, dtype: str = "float32"
) -> dict:
    return materialize(projection_spec(proj, wired_layers, dtype), rng)


def projection_spec(proj: ProjectionIR, wired_layers: tuple[int, ...], dtype: str) -> dict:
    dt = DTYPES[dtype]
    if not proj.per_layer:
        return {"shared": _init_copy(proj, dt)}
    return {f"layers_{j}": _init_copy(proj, dt) for j in wired_layers}


def project(params: dict, proj: ProjectionIR, layer: int, x: jax.Array) -> jax.Array:
    """P_layer: x [B, T, d_in] -> [B, T, d_out] in the projection's dtype."""
    p = params[f"layers_{layer}"] if proj.per_layer else params["shared"]
    if proj.kind == "linear":
        w = p["w"]
        y = jnp.einsum("bti,io->bto", x.astype(w.dtype), w)
        return y + p["b"] if "b" in p else y
    w_in = p["w_in"]
    hid = jnp.einsum("bti,ih->bth", x.astype(w_in.dtype), w_in)
    if "b_in" in p:
        hid = hid + p["b_in"]
    y = jnp.einsum("bth,ho->bto", jax.nn.gelu(hid, approximate=True), p["w_out"])
    return y + p["b_out"] if "b_out" in p else y
