"""The Python API of runtime.run: open_run takes a spec object or a SpecBuilder through the same
checks and run-directory rules as a file; generate runs once unless timing is asked for and
takes per-call sampling settings; a run's model as a flax.nnx Module and back."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from compiler import nn
from compiler.nnx_module import DecoderModule
from runtime import run
from runtime.errors import UserError
from tandem_dsl import api
from tandem_dsl.builder import SpecBuilder
from tandem_dsl.diagnostics import SpecError

MINI = Path(__file__).parent / "specs/mini.yaml"
# only the large model trains, briefly; the small models keep their init
SHORT = [
    "~train.2",
    "~train.1",
    "train.0.steps=3",
    "train.0.eval_every=3",
    "train.0.eval_batches=1",
    "train.0.checkpoint_every=3",
    "decode.max_new_tokens=8",
]
PROMPTS = ["def main(", "import os\n"]


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("api") / "run"
    r = run.open_run(MINI, SHORT, run_dir=run_dir, log=quiet)
    run.train(r)
    return r


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def _builder_of(path, overrides) -> SpecBuilder:
    """The spec file's tree written through a SpecBuilder."""
    tree = api.load_raw(path, overrides).tree
    b = SpecBuilder(tree["name"])
    for key, value in tree.items():
        if key not in ("tandem", "name"):
            b.set(key, value)
    return b


# --- open_run: files, spec objects and builders alike ---------------------------------------


def test_a_spec_object_or_a_builder_reuses_a_matching_run(trained):
    for spec in (api.load(MINI, SHORT), _builder_of(MINI, SHORT)):
        r = run.open_run(spec, run_dir=trained.run_dir, log=quiet)
        assert r.spec == trained.spec and r.run_dir == trained.run_dir
        assert all(x.skipped for x in run.train(r))
        assert _same(run.trained_params(r), run.trained_params(trained))


def test_overrides_apply_to_a_spec_object(trained):
    r = run.open_run(api.load(MINI), SHORT, run_dir=trained.run_dir, log=quiet)
    assert r.spec == trained.spec


def test_a_changed_spec_object_is_refused_naming_the_field(trained):
    spec = api.load(MINI, SHORT)
    stage = spec.train[0]
    optimizer = dataclasses.replace(stage.optimizer, lr=stage.optimizer.lr / 2)
    changed = dataclasses.replace(spec, train=[dataclasses.replace(stage, optimizer=optimizer)])
    r = run.open_run(changed, run_dir=trained.run_dir, log=quiet)
    with pytest.raises(UserError, match=r"optimizer\.lr") as info:
        run.train(r)
    assert info.value.field == ("train", 0)
    with pytest.raises(SpecError) as located:  # as the CLI shows it: no file, the field path
        with run.located(r.doc):
            run.trained_params(r)
    text = str(located.value)
    assert "<spec object 'mini'>: error[E-RUN]" in text and "at train[0]" in text


def test_a_changed_builder_is_refused_at_its_python_line(trained):
    b = _builder_of(MINI, SHORT).set("train.0.optimizer.lr", 1e-4)
    r = run.open_run(b, run_dir=trained.run_dir, log=quiet)
    with pytest.raises(SpecError) as located:
        with run.located(r.doc):
            run.trained_params(r)
    assert f"python:{__file__}:" in str(located.value) and "at train[0]" in str(located.value)


def test_a_spec_object_goes_through_the_checks(tmp_path):
    spec = api.load(MINI)
    bad = dataclasses.replace(spec, decode=dataclasses.replace(spec.decode, target="nope"))
    with pytest.raises(SpecError) as info:
        run.open_run(bad, run_dir=tmp_path, log=quiet)
    assert info.value.codes == ["E-CHECK-UNKNOWN-MODEL"]
    assert "<spec object 'mini'>" in str(info.value) and "at decode.target" in str(info.value)
    with pytest.raises(SpecError, match="at decode.gamma"):
        run.open_run(spec, ["decode.gamma=0"], run_dir=tmp_path, log=quiet)
    with pytest.raises(TypeError, match="a spec is a file path"):
        run.open_run(42, run_dir=tmp_path)


# --- generate: once unless timed; per-call sampling -----------------------------------------


def test_generate_runs_once_unless_timed(trained, monkeypatch):
    calls = []
    real = run.generate_program

    def counting(*a, **kw):
        fn = real(*a, **kw)

        def counted(*args):
            calls.append(1)
            return fn(*args)

        return counted

    monkeypatch.setattr(run, "generate_program", counting)
    d = run.autoregressive(trained.prog.decode)
    g = run.generate(trained, PROMPTS, d)
    assert len(calls) == 1 and not g.timed and g.seconds > 0
    calls.clear()
    timed = run.generate(trained, PROMPTS, d, repeats=2)
    assert len(calls) == 3 and timed.timed  # a warm-up, then 2 timed calls
    assert timed.tokens == g.tokens and timed.stats["tokens_per_s"] > 0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="repeats"):
            run.generate(trained, PROMPTS, d, repeats=bad)


def test_sampling_per_call_leaves_the_spec_as_it_was(trained):
    spec_decode = trained.prog.decode
    assert spec_decode.sampling.greedy and spec_decode.policy == "speed"
    greedy = run.generate(trained, PROMPTS).tokens
    assert run.generate(trained, PROMPTS, temperature=0.0, seed=5).tokens == greedy
    one = run.generate(trained, PROMPTS, temperature=1.0, seed=1).tokens
    assert one != greedy
    assert run.generate(trained, PROMPTS, temperature=1.0, seed=1).tokens == one
    assert run.generate(trained, PROMPTS, temperature=1.0, seed=2).tokens != one
    # with top_k 1 sampling keeps only the most likely token: greedy again
    assert run.generate(trained, PROMPTS, temperature=1.0, top_k=1, seed=3).tokens == greedy
    assert trained.prog.decode is spec_decode and trained.prog.decode.sampling.greedy
    assert run.generate(trained, PROMPTS).tokens == greedy


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"temperature": -0.5}, "temperature=-0.5: give a number >= 0"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"temperature": "hot"}, "temperature='hot'"),
        ({"top_p": 0}, r"top_p=0: give a number in \(0, 1\]"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"top_k": -1}, "top_k=-1: give a whole number >= 0"),
        ({"top_k": 2.5}, "top_k=2.5"),
        ({"seed": -1}, r"seed=-1: give a whole number in \[0, 4294967295\]"),
        ({"seed": 2**32}, "seed=4294967296"),
        ({"seed": True}, "seed=True"),
    ],
)
def test_bad_sampling_settings_are_user_errors(trained, kw, words):
    with pytest.raises(UserError, match=f"sampling: {words}"):
        run.generate(trained, PROMPTS, **kw)


def test_compare_needs_timing(trained):
    with pytest.raises(UserError, match="repeats"):
        run.compare(trained, PROMPTS, repeats=None)


# --- flax nnx ---------------------------------------------------------------------------------


def test_nnx_module_holds_the_trained_weights(trained):
    trained_large = run.trained_params(trained)["large"]
    initial_large = run.initial_params(trained)["large"]
    assert not _same(trained_large, initial_large)  # the stage moved them
    m = run.nnx_module(trained, "large")
    assert _same(m.to_params(), trained_large)
    again = DecoderModule(m.cfg, m.to_params())  # module -> tree -> module
    assert _same(again.to_params(), trained_large)
    assert _same(run.nnx_module(trained, "large", trained=False).to_params(), initial_large)
    assert _same(DecoderModule.from_spec(trained.spec, "large").to_params(), initial_large)
    with pytest.raises(UserError, match="'small' is a Tandem model"):
        run.nnx_module(trained, "small")


def test_fine_tuned_weights_go_back_to_the_run(trained):
    r = run.open_run(MINI, SHORT, run_dir=trained.run_dir, log=quiet)
    m = run.nnx_module(r, "large")
    text = "abcdefgh" * 8
    tokens = jnp.asarray([r.tokenizer.encode(text)], jnp.int32)

    def loss_fn(model):
        logits = model(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    optimizer = nnx.Optimizer(m, optax.adam(3e-3), wrt=nnx.Param)
    losses = [float(step(m, optimizer)) for _ in range(25)]
    assert losses[-1] < losses[0] / 2, losses
    run.use_params(r, "large", m.to_params())
    params = run.trained_params(r)
    assert _same(params["large"], m.to_params())
    assert _same(params["small"], run.trained_params(trained)["small"])  # the others kept
    logits = nn.decoder_forward(params["large"], m.cfg, tokens)[0]
    assert np.array_equal(logits, m(tokens))
    # the run's decoder generates with them: greedy continues the pattern the module learned
    prompt = "abcdefgh" * 2 + "abc"
    ids = jnp.asarray([r.tokenizer.encode(prompt)], jnp.int32)
    want = int(jnp.argmax(m(ids)[0, -1]))
    got = run.generate(r, [prompt], run.autoregressive(r.prog.decode)).tokens[0]
    assert got[0] == want
    with pytest.raises(UserError, match="params do not fit model 'large'"):
        run.use_params(r, "large", run.trained_params(r)["drafter"])
    with pytest.raises(UserError, match="no model 'huge'"):
        run.use_params(r, "huge", {})


# --- compile and export take the same kinds of spec ------------------------------------------


def test_compile_and_export_take_a_spec_object_or_a_builder(trained, tmp_path):
    from compiler.driver import compile_spec
    from runtime.export import export

    spec = api.load(MINI, SHORT)
    for source in (spec, _builder_of(MINI, SHORT)):
        assert compile_spec(source, stop_after="check").spec == spec
        folder = tmp_path / type(source).__name__
        out = export(source, model="large", fmt="hf", out=folder, run_dir=trained.run_dir,
                     log=quiet)  # fmt: skip
        assert out["weights"].startswith("checkpoint") and (folder / "config.json").exists()
    with pytest.raises(SpecError, match="Tandem small model"):  # located, as for the file
        export(spec, model="small", fmt="hf", out=tmp_path / "small", run_dir=trained.run_dir)
