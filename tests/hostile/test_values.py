"""Hostile input, category 7: values that `check` must refuse because something later would
crash on them. Generated from the typed spec (`tandem_dsl.model`), so every field of every
section is covered: each number below its minimum and above its maximum (integers stop at
int32), whole-number floats for integers, NaN and inf, booleans for numbers, unknown enum
words, wrong types. Each goes through `tandemc check` as a command-line override of a spec
that sets every section."""

import dataclasses
import typing

import pytest
from hostile_harness import assert_clean, run_cli

from tandem_dsl import model
from tandem_dsl.resolve import dataclass_of
from tandem_dsl.schema import hints, yaml_name

FULL = """tandem: 1
name: full
data:
  corpus: stdlib
  seq_len: 64
  val_fraction: 0.1
  seed: 0
  generated: {model: large, code_prompts: 4, chat_prompts: 0, prompt_tokens: 32,
              new_tokens: 8, batch: 2, share: 0.5}
tokenizer: {kind: byte}
models:
  large: {d_model: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ff: 128, vocab: 256,
          norm: rmsnorm, norm_eps: 1.0e-5, mlp: swiglu, pos: rope, rope_theta: 10000.0,
          head_dim: null, qkv_bias: false,
          rope_scaling: {rope_type: llama3, factor: 8.0, low_freq_factor: 1.0,
                         high_freq_factor: 4.0, original_max_position_embeddings: 64},
          tie_embeddings: false, trainable: true, dtype: float32, type: decoder,
          init: {from: random, seed: 0}}
  small: {d_model: 32, n_layers: 2, n_heads: 2, init: {from: random, embed_from: large}}
projections:
  l2s: {from: large, to: small, type: mlp, hidden: 48, per_layer: true, bias: false}
wiring:
  - {query: small, kind: tandem, memory: large, via: l2s, layers: "small[0:2] <- large[1:3]",
     block: 2, block_max: 3, random_offset: false}
train:
  - name: tandem
    trainable: [small, l2s]
    steps: 10
    batch: 2
    seq_len: 64
    eval_every: 5
    eval_batches: 1
    checkpoint_every: 5
    seed: 0
    objective: {kind: distil, model: small, teacher: large, weight: 0.5, temperature: 1.0}
    optimizer: {kind: adamw, lr: 1.0e-3, warmup: 2, schedule: cosine, weight_decay: 0.0,
                clip: 1.0, b1: 0.9, b2: 0.95}
decode:
  policy: adaptive
  target: large
  draft: small
  gamma: 3
  draft_vocab: 0
  lookup: 0
  backend: auto
  free_token: true
  adaptive: {rule: confidence, router: mlp, hidden: 16, activation: gelu, top_k: 4,
             threshold: 0.6, max_gamma: 6}
  sampling: {temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0}
  max_new_tokens: 16
  stop_at_eos: true
bench: {gammas: [2, 3], drafter: null, prompt_lookup: 3, code_prompts: 2, chat_prompts: [],
        repeats: 1}
shapes: {batch: 1, max_len: 128}
mesh: {data: -1, model: 1}
"""
# Where a section is a list or a mapping of named entries, the entry the cases change.
ENTRY = {"models": "large", "projections": "l2s", "wiring": 0, "train": 0}


def _leaves(cls, path=()):
    """(yaml path, type, field metadata) of every scalar field under cls."""
    for f in dataclasses.fields(cls):
        tp, sub = hints(cls)[f.name], (*path, yaml_name(f))
        inner = dataclass_of(tp)
        args = typing.get_args(tp)
        if inner is None and typing.get_origin(tp) in (list, dict) and args:
            inner = dataclass_of(args[-1])
            sub = (*sub, ENTRY.get(sub[-1], 0)) if inner is not None else sub
        if inner is not None:
            yield from _leaves(inner, sub)
        elif typing.get_origin(tp) not in (list, dict):
            yield sub, tp, f.metadata


def _scalar_type(tp):
    options = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return options[0] if len(options) == 1 else None


def _cases():
    for path, tp, meta in _leaves(model.Spec):
        if path == ("tandem",):  # the version: E-VERSION, below
            continue
        key = ".".join(map(str, path))
        kind = _scalar_type(tp)
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if kind is int:
            hi = model.INT_MAX if hi is None else hi
            yield key, hi + 1, "E-SCHEMA-RANGE"
            yield key, "2.0", "E-SCHEMA-TYPE"
            yield key, "true", "E-SCHEMA-TYPE"
            if lo is not None:
                yield key, lo - 1, "E-SCHEMA-RANGE"
        elif kind is float:
            yield key, ".nan", "E-SCHEMA-TYPE"
            yield key, "-.inf", "E-SCHEMA-TYPE"
            yield key, "fast", "E-SCHEMA-TYPE"
            if lo is not None:
                yield key, lo - 1, "E-SCHEMA-RANGE"
            if "exclusive_minimum" in meta:
                yield key, meta["exclusive_minimum"], "E-SCHEMA-RANGE"
            if hi is not None:
                yield key, hi + 1, "E-SCHEMA-RANGE"
        elif kind is bool:
            yield key, "maybe", "E-SCHEMA-TYPE"
        elif kind is str and "enum" in meta:
            yield key, "nonsense", "E-SCHEMA-ENUM"
        elif kind is str:
            yield key, "[1, 2]", "E-SCHEMA-TYPE"


CASES = sorted(set(_cases()), key=str)


def test_the_full_spec_is_valid_and_the_cases_cover_every_section(tmp_path):
    (tmp_path / "full.yaml").write_text(FULL)
    o = run_cli(["check", tmp_path / "full.yaml"])
    assert o.code == 0, o.err
    sections = {key.split(".")[0] for key, _, _ in CASES}
    assert sections >= {"data", "tokenizer", "models", "projections", "wiring", "train"}
    assert sections >= {"decode", "bench", "shapes", "mesh"} and len(CASES) > 200


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    path = tmp_path_factory.mktemp("values") / "full.yaml"
    path.write_text(FULL)
    return path


@pytest.mark.parametrize("key, value, code", CASES, ids=[f"{k}={v}" for k, v, _ in CASES])
def test_a_bad_value_is_refused_where_it_was_given(full, key, value, code):
    assert_clean(run_cli(["check", full, f"{key}={value}"]), "cli:1:", code)


@pytest.mark.parametrize(
    "override, code",
    [
        ("models.large.d_model=1e3", "E-SCHEMA-TYPE"),
        ("models.large.d_model=66", "E-CHECK-HEAD-DIM"),
        ("models.large.n_kv_heads=3", "E-CHECK-KV-HEADS"),
        ("models.small.vocab=300", "E-CHECK-VOCAB"),
        ("models.large.trainable=false train.0.trainable=[large]", None),
        ("wiring.0.block=64", "E-CHECK-BLOCK"),
        ("wiring.0.block_max=1", "E-CHECK-BLOCK"),
        ("projections.l2s.hidden=0", "E-CHECK-PROJECTION-HIDDEN"),
        ("train.0.trainable=[]", "E-CHECK-UNKNOWN-TRAINABLE"),
        ("train.0.trainable=[nosuch]", "E-CHECK-UNKNOWN-TRAINABLE"),
        ("train.0.objective.teacher=nosuch", "E-CHECK-UNKNOWN-MODEL"),
        ("train.0.seq_len=4096", "E-CHECK-SEQ-LEN"),
        ("decode.gamma=200", "E-CHECK-GAMMA"),
        ("~bench decode.max_new_tokens=125", "E-CHECK-CACHE"),
        ("decode.draft_vocab=100000", "E-CHECK-DRAFT-VOCAB"),
        ("decode.policy=speed decode.lookup=3 decode.draft={kind:\tngram}", "E-CHECK-LOOKUP"),
        ("decode.draft={kind:\tngram}", "E-CHECK-DRAFT"),
        ("decode.target=nosuch", "E-CHECK-UNKNOWN-MODEL"),
        ("decode.adaptive=null", "E-CHECK-DECODE-MISSING"),
        ("bench.gammas=[0]", "E-CHECK-GAMMA"),
        ("bench.drafter=nosuch", "E-CHECK-UNKNOWN-MODEL"),
        ("bench.code_prompts=0", "E-CHECK-BENCH-PROMPTS"),
        ("mesh.data=0", "E-CHECK-MESH-AXIS"),
        ("data.corpus=null", "E-CHECK-DATA"),
        ("data.generated.chat_prompts=4", "E-CHECK-DATA"),
        ("data.generated.model=nosuch", "E-CHECK-UNKNOWN-MODEL"),
        ("tokenizer.kind=bpe", "E-VALUE-RANGE"),
        ("tokenizer.kind=gguf", "E-VALUE-RANGE"),
        ("models.small.init.embed_from=small", "E-CHECK-EMBED-INIT"),
        ("models.small.n_layers=${models.large.n_layers}*1000", "E-VALUE-RANGE"),
        ("models.small.n_layers=${models.large.n_layers}-10", "E-VALUE-RANGE"),
        ("train.0.trainable=[small,small]", "E-CHECK-UNKNOWN-TRAINABLE"),
        ("models.large.init={from:\tcheckpoint}", "E-CHECK-INIT"),
        ("models.large.init={from:\tgguf}", "E-CHECK-INIT"),
        ("models.large.init.path=weights.gguf", "E-CHECK-INIT"),
        ("decode.draft={kind:\tngram,\tn:\t0}", "E-SCHEMA-RANGE"),
        ("decode.draft={kind:\tnope}", "E-SCHEMA-ENUM"),
        ("decode.draft={kind:\tngram,\tm:\t3}", "E-SCHEMA-UNKNOWN-KEY"),
        ("tandem=0", "E-VERSION"),
        ("tandem=2", "E-VERSION"),
        ("tandem=1.0", "E-SCHEMA-TYPE"),
    ],
)
def test_values_that_only_fail_together_with_others(full, override, code):
    o = run_cli(["check", full, *override.split(" ")])
    assert_clean(o, "", code or "E-CHECK-FROZEN")
    assert o.first_line.startswith(("cli:", f"{full}:")), o.first_line


def test_an_error_is_blamed_on_the_given_value_not_on_a_default_derived_from_it(full):
    o = run_cli(["check", full, "models.small.d_model=${models.large.d_model}*100000"])
    assert_clean(o, "cli:1:", "E-VALUE-RANGE")
    assert "d_model evaluates to 6400000" in o.first_line  # not d_ff, its default
