"""compiler.nnx_module: a decoder as a flax.nnx Module computes what the functional decoder
computes, round-trips its params, fine-tunes with nnx.Optimizer, and carries each param's
logical axes as nnx sharding metadata."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from compiler import nn
from compiler.build import build_ir
from compiler.errors import InputError
from compiler.nnx_module import DecoderModule, check_params, nnx_rules
from compiler.sharding import Sharder, rules_of
from tandem_dsl import api
from tandem_dsl.builder import SpecBuilder

MINI = Path(__file__).parents[1] / "runtime/specs/mini.yaml"


def _tiny(**large):
    return (
        SpecBuilder("nnx-tiny")
        .model("large", d_model=32, n_layers=2, n_heads=2, **large)
        .model("small", d_model=16, n_layers=1, n_heads=2)
        .projection("l2s", from_="large", to="small")
        .wire(query="small", memory="large", via="l2s", block=2)
        .decode(policy="autoregressive", target="large", max_new_tokens=4)
    )


def _tokens(vocab, shape=(2, 12), seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, shape), jnp.int32)


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    return all(
        x.dtype == y.dtype and np.array_equal(x, y) for (_, x), (_, y) in zip(la, lb, strict=True)
    )


@pytest.mark.parametrize("large", [{}, {"tie_embeddings": False, "pos": "learned"}])
def test_logits_equal_the_functional_decoder(large):
    # The module's __call__ is decoder_forward on the Params' current values: the same
    # function of the same arrays, so the logits are equal bit for bit, eagerly and jitted
    # (each jitted side compiles the same computation).
    m = DecoderModule.from_spec(_tiny(**large), "large")
    params, cfg = m.to_params(), m.cfg
    tokens = _tokens(cfg.vocab)
    positions = jnp.broadcast_to(jnp.arange(3, 15, dtype=jnp.int32), tokens.shape)
    for pos in (None, positions):
        want = nn.decoder_forward(params, cfg, tokens, pos)[0]
        assert want.dtype == jnp.float32 and want.shape == (*tokens.shape, cfg.vocab)
        assert np.array_equal(m(tokens, pos), want)
        jitted = jax.jit(lambda p, t, q: nn.decoder_forward(p, cfg, t, q)[0])(params, tokens, pos)
        assert np.array_equal(nnx.jit(lambda m, t, q: m(t, q))(m, tokens, pos), jitted)


def test_from_spec_is_the_init_tandemc_run_draws():
    spec = api.load(MINI, ["models.drafter.init.seed=7"])
    prog = build_ir(spec)
    everything = nn.init_params(prog, jax.random.PRNGKey(0))
    assert _leaves_equal(DecoderModule.from_spec(spec, "large").to_params(), everything["large"])
    seeded = nn.init_params(prog, jax.random.PRNGKey(7))["drafter"]
    assert _leaves_equal(
        DecoderModule.from_spec(MINI, "drafter").to_params(), everything["drafter"]
    )
    assert _leaves_equal(DecoderModule.from_spec(spec, "drafter").to_params(), seeded)


def test_round_trip_module_tree_module():
    m = DecoderModule.from_spec(_tiny(), "large")
    # weights that are not the init: every leaf moved
    tree = jax.tree.map(lambda a: a + 0.5, m.to_params())
    m.load_params(tree)
    assert _leaves_equal(m.to_params(), tree)
    again = DecoderModule(m.cfg, m.to_params(), rules=rules_of(build_ir(_tiny().build()).mesh))
    assert _leaves_equal(again.to_params(), tree)
    assert jax.tree.structure(nnx.state(again)) == jax.tree.structure(nnx.state(m))
    assert _leaves_equal(nnx.to_pure_dict(nnx.state(again)), nnx.to_pure_dict(nnx.state(m)))


def test_optimizer_fine_tune_lowers_the_loss_and_goes_back():
    m = DecoderModule.from_spec(_tiny(), "large")
    cfg, start = m.cfg, m.to_params()
    tokens = _tokens(cfg.vocab, (4, 16), seed=1)

    def loss_fn(model):
        logits = model(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    optimizer = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)
    losses = [float(step(m, optimizer)) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.1, losses
    tuned = m.to_params()
    assert not _leaves_equal(tuned, start)
    check_params(cfg, tuned)  # same tree, shapes and dtypes as the model's params
    assert np.array_equal(nn.decoder_forward(tuned, cfg, tokens)[0], m(tokens))
    assert float(loss_fn(m)) < losses[0]


def test_params_carry_their_logical_axes():
    spec = _tiny().set("sharding", [["heads", "model"], ["heads", None], ["kv_heads", "model"],
                                    ["mlp", None], ["vocab", "model"], ["embed", None],
                                    ["head_dim", None], ["batch", "data"]])  # fmt: skip
    prog = build_ir(spec.build())
    m = DecoderModule.from_spec(spec, "large")
    want_axes = nn.logical_axes(m.to_params())
    rules = nnx_rules(rules_of(prog.mesh))
    assert dict(rules)["heads"] == "model"  # the first rule of an axis, as the Sharder reads
    state = nnx.state(m.params)
    seen = 0
    for path, var in jax.tree_util.tree_leaves_with_path(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    ):
        assert isinstance(var, nnx.Param)
        names = tuple(str(p.key) for p in path)
        axes = want_axes
        for n in names:
            axes = axes[n]
        assert var.get_metadata("out_sharding") == axes, names
        assert var.get_metadata("sharding_rules") == rules
        seen += 1
    assert seen == len(jax.tree.leaves(want_axes, is_leaf=lambda x: isinstance(x, tuple)))
    wq = m.params["layers_0"]["attn"]["wq"]
    assert wq.get_metadata("out_sharding") == ("embed", "heads", "head_dim")
    # nnx's partition specs agree with the Sharder's placement of the same params
    sh = Sharder.for_run(prog)
    placed = sh.params({"large": m.to_params()})["large"]
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(m.params)))

    def padded(spec, n):
        return tuple(spec) + (None,) * (n - len(tuple(spec)))

    for (path, s), (_, x) in zip(
        jax.tree_util.tree_leaves_with_path(placed),
        jax.tree_util.tree_leaves_with_path(specs),
        strict=True,
    ):
        assert padded(s.spec, len(tuple(x))) == tuple(x), path


def test_mesh_places_the_values():
    spec = _tiny()
    prog = build_ir(spec.build())
    mesh = Sharder.for_run(prog).mesh
    m = DecoderModule.from_spec(spec, "large", mesh=mesh)
    wq = m.params["layers_0"]["attn"]["wq"].get_value()
    assert isinstance(wq.sharding, jax.sharding.NamedSharding) and wq.sharding.mesh == mesh


def test_errors_say_what_is_wrong():
    with pytest.raises(InputError, match="'small' is a Tandem model"):
        DecoderModule.from_spec(_tiny(), "small")
    with pytest.raises(InputError, match="no model 'medium'.*large, small"):
        DecoderModule.from_spec(_tiny(), "medium")
    m = DecoderModule.from_spec(_tiny(), "large")
    tree = m.to_params()
    bad = dict(tree, final_norm={"scale": jnp.ones(7)})
    with pytest.raises(InputError, match=r"final_norm/scale: float32\[7\], the model has"):
        DecoderModule(m.cfg, bad)
    del bad["layers_1"]
    with pytest.raises(InputError, match="missing layers_1/attn"):
        m.load_params(bad)
    with pytest.raises(InputError, match="starts from embed_from large"):
        DecoderModule.from_spec(api.load(MINI, ["models.drafter.init.embed_from=large"]), "drafter")
