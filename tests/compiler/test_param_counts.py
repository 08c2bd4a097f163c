"""The IR's derived sizes equal the real param trees, caches and compiled FLOPs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest
from tiny_ir import large_cfg, program, small_cfg, tandem_wiring

from compiler.errors import IRInvariantError
from compiler.ir import ProjectionIR, RopeScalingIR, WiringIR
from compiler.nn import (
    decoder_block,
    init_cache,
    init_decoder,
    init_params,
    init_projection,
    logical_axes,
)
from compiler.nn.projection import KINDS, param_count
from compiler.plan import param_counts

KEY = jax.random.PRNGKey(0)


def n_params(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


DECODERS = {
    "llama-gqa-untied": large_cfg(),
    "mha-tied": small_cfg(tie_embeddings=True),
    "gpt-layernorm-gelu-learned": small_cfg(norm="layernorm", mlp="gelu", pos="learned"),
    "gpt-tied-learned-bf16": small_cfg(
        norm="layernorm", mlp="gelu", pos="learned", tie_embeddings=True, dtype="bfloat16"
    ),
    "mqa-odd-ff": large_cfg(n_kv_heads=1, d_ff=50, n_layers=1),
    "qwen2-qkv-bias-tied": large_cfg(qkv_bias=True, tie_embeddings=True),
    "wide-heads": large_cfg(head_dim=20, n_heads=6, n_kv_heads=3),  # 6 x 20 != d_model 48
}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_param_count(name):
    cfg = DECODERS[name]
    shapes = jax.eval_shape(lambda k: init_decoder(cfg, k), KEY)
    assert n_params(shapes) == cfg.param_count
    dtypes = {x.dtype for x in jax.tree.leaves(shapes)}
    assert dtypes == {jnp.dtype(cfg.dtype)}


def test_real_init_matches_count_and_is_deterministic():
    cfg = small_cfg(norm="layernorm", mlp="gelu", pos="learned", tie_embeddings=True)
    a, b = init_decoder(cfg, KEY), init_decoder(cfg, KEY)
    assert n_params(a) == cfg.param_count
    assert all(
        jnp.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    c = init_decoder(cfg, jax.random.PRNGKey(1))
    assert not jnp.array_equal(a["layers_0"]["attn"]["wq"], c["layers_0"]["attn"]["wq"])


PROJECTIONS = [  # every kind, with and without bias, per layer and shared
    dict(kind=kind, per_layer=per_layer, bias=bias, hidden=hidden)
    for kind in KINDS
    for per_layer, bias, hidden in ((True, False, 24), (True, True, 0), (False, True, 24))
]


@pytest.mark.parametrize("kw", PROJECTIONS, ids=lambda kw: "-".join(map(str, kw.values())))
@pytest.mark.parametrize("wired", [(0, 2), (1,)])
@pytest.mark.parametrize("fuse,predict", [(False, False), (True, False), (False, True)])
def test_projection_param_count(kw, wired, fuse, predict):
    proj = ProjectionIR(name="p", d_in=48, d_out=32, **kw)
    shapes = jax.eval_shape(
        lambda k: init_projection(proj, wired, k, "float32", fuse, predict), KEY
    )
    assert n_params(shapes) == param_count(proj, len(wired), fuse, predict)
    copies = {f"layers_{j}" for j in wired} if proj.per_layer else {"shared"}
    extras = ({"fuse"} if fuse else set()) | ({"predict"} if predict else set())
    assert set(shapes) == copies | extras
    if predict:  # one d_out x d_out map per wired small layer
        assert {j: v["w"].shape for j, v in shapes["predict"].items()} == {
            f"layers_{j}": (32, 32) for j in wired
        }


def test_fused_program_params():
    """A wiring with a feature input adds a d_in x d_out map and a zero gain to its projection's
    params."""
    large, small = large_cfg(), small_cfg()
    prog = program([large, small], [tandem_wiring(small, large, (2, 3), fuse=3)])
    params = init_params(prog, KEY)
    assert {k: n_params(v) for k, v in params.items()} == param_counts(prog)
    assert params["l2s"]["fuse"]["w"].shape == (48, 32)
    assert params["l2s"]["fuse"]["gain"].shape == (32,)
    assert not params["l2s"]["fuse"]["gain"].any()


def test_program_params_and_stable_names():
    large, small = large_cfg(), small_cfg(tie_embeddings=True)
    drafter = small_cfg(name="drafter")
    wiring = tandem_wiring(small, large, (2, 3), bias=True)
    none = WiringIR(kind="none", query="drafter", memory=None, layer_map=(None, None),
                    projection=None)  # fmt: skip
    prog = program([large, small, drafter], [wiring, none])
    params = init_params(prog, KEY)
    assert set(params) == {"large", "small", "drafter", "l2s"}
    assert {k: n_params(v) for k, v in params.items()} == param_counts(prog)
    # a model's init does not depend on which other models the program has
    alone = init_params(program([large]), KEY)
    assert jnp.array_equal(alone["large"]["embed"]["tokens"], params["large"]["embed"]["tokens"])

    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    for expected in [
        "['large']['embed']['tokens']",
        "['large']['layers_2']['attn']['wq']",
        "['large']['layers_2']['attn']['wk']",
        "['large']['layers_2']['attn']['wv']",
        "['large']['layers_2']['attn']['wo']",
        "['large']['layers_0']['attn_norm']['scale']",
        "['large']['layers_0']['mlp_norm']['scale']",
        "['large']['layers_0']['mlp']['w_gate']",
        "['large']['layers_0']['mlp']['w_up']",
        "['large']['layers_0']['mlp']['w_down']",
        "['large']['final_norm']['scale']",
        "['large']['lm_head']['w']",
        "['l2s']['layers_0']['w']",
        "['l2s']['layers_1']['b']",
    ]:
        assert expected in paths, expected
    assert "['small']['lm_head']['w']" not in paths  # tied
    assert params["large"]["layers_2"]["attn"]["wq"].shape == (48, 4, 12)
    assert params["large"]["layers_2"]["attn"]["wk"].shape == (48, 2, 12)
    assert params["large"]["layers_2"]["attn"]["wo"].shape == (4, 12, 48)
    assert params["l2s"]["layers_0"]["w"].shape == (48, 32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kv_cache_bytes_per_token(dtype):
    cfg = large_cfg(dtype=dtype)
    cache = init_cache(cfg, 2, 10)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    assert total == cfg.kv_cache_bytes_per_token * 2 * 10


def test_flops_formula_and_compiled_cost():
    cfg = large_cfg(vocab=512, d_model=64, d_ff=256)
    # attention part grows linearly with the context
    per_ctx = cfg.n_layers * 4 * cfg.n_heads * cfg.head_dim
    assert cfg.flops_per_token(100) - cfg.flops_per_token(0) == 100 * per_ctx
    non_matmul = cfg.embed_params + (2 * cfg.n_layers + 1) * cfg.norm_params
    assert cfg.flops_per_token(0) == 2 * (cfg.param_count - non_matmul)
    # within a few percent of what XLA counts for one cached decode step over S slots
    s = 128
    params = jax.eval_shape(lambda k: init_decoder(cfg, k), KEY)
    cache = jax.eval_shape(lambda: init_cache(cfg, 1, s))
    tok = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    start = jax.ShapeDtypeStruct((1,), jnp.int32)
    compiled = jax.jit(decoder_block, static_argnums=1).lower(params, cfg, cache, tok, start)
    cost = compiled.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert 0.95 < cost["flops"] / cfg.flops_per_token(s) < 1.15


def test_logical_axes_cover_every_param_and_cache():
    large, small = large_cfg(qkv_bias=True), small_cfg(pos="learned", norm="layernorm")
    wiring = tandem_wiring(small, large, (2, 3), kind="mlp", bias=True, hidden=16)
    prog = program([large, small], [wiring])
    params = jax.eval_shape(lambda k: init_params(prog, k), KEY)
    axes = logical_axes(params)
    leaves = jax.tree.leaves(params)
    axes_leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    assert len(axes_leaves) == len(leaves)
    for a, x in zip(axes_leaves, leaves, strict=True):
        assert len(a) == x.ndim
    assert axes["large"]["layers_1"]["attn"]["wk"] == ("embed", "kv_heads", "head_dim")
    assert axes["large"]["layers_1"]["attn"]["bq"] == ("heads", "head_dim")
    assert axes["l2s"]["layers_0"]["w_in"] == (None, "mlp")
    cache_axes = logical_axes(init_cache(large, 1, 4))
    assert cache_axes[0]["k"] == ("batch", "length", "kv_heads", "head_dim")


def test_a_decoder_ir_refuses_what_the_model_code_cannot_run():
    """The one invariant pass: however a DecoderIR is built, a bad option never reaches init."""
    with pytest.raises(IRInvariantError, match="'small'.*norm"):
        small_cfg(norm="batchnorm")
    with pytest.raises(IRInvariantError, match="divide"):
        small_cfg(n_heads=3)
    assert small_cfg(n_heads=3, n_kv_heads=3, head_dim=8).head_dim == 8  # need not divide d
    with pytest.raises(IRInvariantError, match="rope_scaling"):
        small_cfg(pos="learned", rope_scaling=RopeScalingIR(factor=8.0))
