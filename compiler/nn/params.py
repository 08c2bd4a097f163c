"""Parameters of a whole program: every model and every wiring projection."""

from __future__ import annotations

import dataclasses
import zlib

import jax
import numpy as np

from compiler.ir import ProgramIR
from compiler.nn.decoder import init_decoder
from compiler.nn.projection import init_projection


def _key(rng, name: str):
    """A key per name, independent of the order and number of other parts."""
    return jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def init_params(prog: ProgramIR, rng) -> dict:
    """{model name: decoder params, projection name: projection params}.

    A projection is initialized in its query (small) model's dtype. Names must be unique
    across models and projections. Each part's values depend only on rng and its own name
    and shapes.
    """
    params = {}
    for cfg in prog.models:
        if cfg.name in params:
            raise ValueError(f"duplicate model name {cfg.name!r}")
        params[cfg.name] = init_decoder(cfg, _key(rng, cfg.name))
    model_names = set(params)
    for wiring in prog.wirings:
        proj = wiring.projection
        if wiring.kind == "none" or proj is None:
            continue
        if proj.name in model_names:
            raise ValueError(f"projection {proj.name!r} has the name of a model")
        if proj.name in params:
            continue  # a projection shared by two wirings is initialized once
        dtype = prog.model(wiring.query).dtype
        key = _key(rng, proj.name)
        params[proj.name] = init_projection(
            proj, wiring.wired_layers, key, dtype, fuses(prog, proj), predicts(prog, proj)
        )
    return params


def fuses(prog: ProgramIR, proj) -> bool:
    """Does a wiring through `proj` take a feature input (its params then hold "fuse")?"""
    return any(w.fuse is not None and w.projection == proj for w in prog.wirings)


def predicts(prog: ProgramIR, proj) -> bool:
    """Does a wiring through `proj` predict memory (its params then hold "predict")?"""
    return any(w.predict is not None and w.projection == proj for w in prog.wirings)


def init_model(prog: ProgramIR, name: str, seed: int = 0) -> dict:
    """Model `name`'s random decoder params as `tandemc run` draws them (its `init.seed`, 0 by
    default): `init_params(prog, PRNGKey(seed))[name]`, without drawing the other parts."""
    one = dataclasses.replace(prog, models=(prog.model(name),), wirings=())
    return init_params(one, jax.random.PRNGKey(seed))[name]


def reduced_embedding(table: np.ndarray, d: int) -> np.ndarray:
    """A [V, D] embedding table -> [V, d] (d <= D): its coordinates along the top-d right
    singular vectors (uncentred), so the d-dim table keeps the largest part of every dot
    product between rows - the tied output layer's logits included. Deterministic: each
    singular vector's sign is fixed by its largest entry. At d == D the table is returned as
    is: a full-rank rotation would keep every dot product but scramble the coordinates that
    layers copied from the same model read."""
    if d == table.shape[1]:
        return table.astype(np.float32)
    _, _, vt = np.linalg.svd(table.astype(np.float32), full_matrices=False)
    basis = vt[:d].T  # [D, d]
    basis = basis * np.sign(basis[np.abs(basis).argmax(0), np.arange(d)])
    return table.astype(np.float32) @ basis
