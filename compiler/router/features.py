"""The router MLP (Tandem paper, section 3.1): after M_S drafts a token, predict the chance that
M_L rejects it from M_S's own state at that position.

Features (per row): the entropy of M_S's draft distribution, its top-k probabilities, and M_S's
input embeddings of those top-k tokens (concatenated, k * d_S values): 1 + k + k * d_S inputs.
They are standardized with the training set's mean and std (stored with the weights), then a
2-layer MLP: hidden = act(x W1 + b1), logit = hidden W2 + b2, p_reject = sigmoid(logit).

Router params are a plain dict {"mean", "std", "w1", "b1", "w2", "b2"}; the decode loop reads
them from `params["router"]`, so a retrained router needs no recompile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "silu": jax.nn.silu, "tanh": jnp.tanh}
ROUTER = "router"  # the key of the router's params in the decode params dict


def n_features(top_k: int, d_small: int) -> int:
    return 1 + top_k + top_k * d_small


def features(probs: jax.Array, embed: jax.Array, top_k: int) -> jax.Array:
    """probs [..., V] M_S's draft distribution, embed [V, D] its token embeddings ->
    [..., 1 + k + k*D] float32."""
    p = probs.astype(jnp.float32)
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    top_p, top_i = jax.lax.top_k(p, top_k)  # [..., k]
    emb = jnp.take(embed, top_i, axis=0).astype(jnp.float32)  # [..., k, D]
    emb = emb.reshape(emb.shape[:-2] + (-1,))
    return jnp.concatenate([ent[..., None], top_p, emb], axis=-1)


def init_router(key, n_in: int, hidden: int) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "mean": jnp.zeros((n_in,), jnp.float32),
        "std": jnp.ones((n_in,), jnp.float32),
        "w1": jax.random.normal(k1, (n_in, hidden), jnp.float32) * n_in**-0.5,
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jax.random.normal(k2, (hidden, 1), jnp.float32) * hidden**-0.5,
        "b2": jnp.zeros((1,), jnp.float32),
    }


def reject_logit(router: dict, x: jax.Array, activation: str = "gelu") -> jax.Array:
    """x [..., F] features -> [...] logit of p(M_L rejects the token)."""
    x = (x - router["mean"]) / router["std"]
    h = ACTIVATIONS[activation](x @ router["w1"] + router["b1"])
    return (h @ router["w2"] + router["b2"])[..., 0]


def p_reject(router: dict, x: jax.Array, activation: str = "gelu") -> jax.Array:
    return jax.nn.sigmoid(reject_logit(router, x, activation))
