"""Drafters that start from the large model: a token table that training leaves fixed
(embed_trainable False) and a linear projection that starts as the identity, so a layer
copied from M_L reads M_L's own keys and values of the past."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_ir import VOCAB, large_cfg, program, stage, tandem_wiring

from compiler.errors import IRInvariantError
from compiler.ir import ObjectiveIR, ProjectionIR
from compiler.nn import decoder_forward, init_params
from compiler.nn.attention import keys_values
from compiler.nn.layers import norm
from compiler.nn.tandem import _projected_kv
from compiler.train import init_train_state, make_train_step

LARGE = large_cfg(n_layers=2)
# the small model has M_L's layer shape: one copied layer, M_L's table, fixed
SMALL = dataclasses.replace(LARGE, name="small", n_layers=1, embed_trainable=False)
WIRING = tandem_wiring(SMALL, LARGE, (1,), init="identity")
TANDEM = stage(ObjectiveIR(kind="distil", model="small", teacher="large"), ["small", "l2s"])
PROG = program([LARGE, SMALL], [WIRING], [TANDEM])


@pytest.fixture(scope="module")
def params():
    p = init_params(PROG, jax.random.PRNGKey(0))
    small = dict(p["small"], embed=p["large"]["embed"], layers_0=p["large"]["layers_1"])
    return dict(p, small=small)


def test_identity_projection_reads_the_large_layers_own_keys_and_values(params):
    assert np.array_equal(params["l2s"]["layers_0"]["w"], np.eye(LARGE.d_model))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 12)), jnp.int32)
    _, hiddens = decoder_forward(params["large"], LARGE, tokens)
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    k, v = _projected_kv(params["small"], params["l2s"], SMALL, WIRING, 0, hiddens[1], positions)
    layer = params["large"]["layers_1"]
    k_l, v_l = keys_values(
        layer["attn"], LARGE, norm(layer["attn_norm"], LARGE, hiddens[1]), positions
    )
    np.testing.assert_array_equal(k, k_l)
    np.testing.assert_array_equal(v, v_l)


def test_a_fixed_table_stays_while_the_rest_trains(params):
    state = init_train_state(PROG, TANDEM, params)
    step = jax.jit(make_train_step(PROG, TANDEM))
    batch = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (4, 17)), jnp.int32)
    for i in range(3):
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
    trained = state["params"]["small"]
    np.testing.assert_array_equal(trained["embed"]["tokens"], params["small"]["embed"]["tokens"])
    assert not np.allclose(
        trained["layers_0"]["attn"]["wq"], params["small"]["layers_0"]["attn"]["wq"]
    )
    assert not np.allclose(state["params"]["l2s"]["layers_0"]["w"], params["l2s"]["layers_0"]["w"])
    # no Adam moments for the fixed table: 2 per trained value
    n_trained = sum(x.size for x in jax.tree.leaves(state["params"]))
    n_moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0)
    assert n_moments == 2 * (n_trained - trained["embed"]["tokens"].size)


def test_the_table_trains_by_default(params):
    prog = program([LARGE, dataclasses.replace(SMALL, embed_trainable=True)], [WIRING], [TANDEM])
    state = init_train_state(prog, TANDEM, params)
    batch = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (4, 17)), jnp.int32)
    state, _ = jax.jit(make_train_step(prog, TANDEM))(state, batch, jax.random.PRNGKey(0))
    assert not np.allclose(
        state["params"]["small"]["embed"]["tokens"], params["small"]["embed"]["tokens"]
    )


@pytest.mark.parametrize("kw", [dict(kind="mlp"), dict(d_out=32)])
def test_identity_needs_a_linear_map_between_equal_widths(kw):
    with pytest.raises(IRInvariantError, match="identity"):
        ProjectionIR(**dict(name="p", kind="linear", d_in=48, d_out=48, init="identity") | kw)
