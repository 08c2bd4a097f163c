"""The spec language: shipped specs, includes, overrides, provenance, round trips."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem_dsl import api, checks, model
from tandem_dsl.builder import SpecBuilder
from tandem_dsl.diagnostics import SpecError
from tandem_dsl.schema import spec_schema

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "specs").glob("*.yaml"))


def test_specs_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"quickstart", "tandem-ce", "tandem-distil", "baseline-large", "baseline-small"} <= names
    assert {"baseline-speed", "tandem-final-layer", "tandem-adaptive"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_checks_and_round_trips(path):
    spec = api.load(path)
    assert api.loads(api.to_yaml(spec)) == spec


def test_includes_merge_in_order_and_keep_origins():
    loaded = api.load_checked(ROOT / "specs/tandem-final-layer.yaml")
    spec, doc = loaded.spec, loaded.doc
    assert spec.models["large"].trainable is False  # from base/models.yaml, two levels down
    assert spec.projections["l2s"].per_layer is False  # the top file wins
    assert spec.train[0].objective.kind == "distil"  # from tandem-distil.yaml
    assert doc.origin(("models", "large", "d_model")).source.endswith("base/models.yaml")
    assert doc.origin(("projections", "l2s", "per_layer")).source.endswith("final-layer.yaml")


def test_defaults_and_expressions_resolve():
    spec = api.load(ROOT / "specs/quickstart.yaml")
    small = spec.models["small"]
    assert small.n_kv_heads == small.n_heads == 2
    assert small.d_ff == (8 * 128 // 3 + 31) // 32 * 32
    assert small.vocab == 256
    assert spec.train[0].seq_len == spec.data.seq_len == 128


def test_references_substitute_any_type(tmp_path):
    text = (ROOT / "specs/quickstart.yaml").read_text()
    text = text.replace("target: large", 'target: "${train.0.objective.model}"')
    text = text.replace("d_model: 128,", 'd_model: "${models.large.d_model} // 3",')
    (tmp_path / "s.yaml").write_text(text)
    spec = api.load(tmp_path / "s.yaml")
    assert spec.decode.target == "large" and spec.models["small"].d_model == 128


def test_overrides_set_add_delete_left_to_right():
    path = ROOT / "specs/quickstart.yaml"
    loaded = api.load_checked(
        path,
        ["decode.gamma=3", "decode.gamma=5", "+decode.adaptive={max_gamma: 8}", "~train.1"],
    )
    assert loaded.spec.decode.gamma == 5
    assert loaded.spec.decode.adaptive.max_gamma == 8
    assert [s.name for s in loaded.spec.train] == ["large"]
    assert loaded.doc.origin(("decode", "gamma")).label() == "cli:2:14"
    assert loaded.doc.value_origin(("decode", "adaptive", "threshold")).source == "default"


def test_override_sets_a_field_left_to_its_default():
    spec = api.load(
        ROOT / "specs/quickstart.yaml", ["train.0.eval_every=10", "decode.sampling.top_k=5"]
    )
    assert spec.train[0].eval_every == 10 and spec.decode.sampling.top_k == 5
    with pytest.raises(SpecError) as info:
        api.load(ROOT / "specs/quickstart.yaml", ["train.0.eval_evry=10"])
    assert info.value.diagnostics[0].hint == "did you mean 'eval_every'?"


def test_layer_maps():
    spec = api.load(ROOT / "specs/quickstart.yaml")
    assert checks.layer_map(spec, spec.wiring[0]) == (3, 6)
    final = api.load(ROOT / "specs/tandem-final-layer.yaml")
    assert checks.layer_map(final, final.wiring[0]) == (6, 6)
    distil = api.load(ROOT / "specs/tandem-distil.yaml")  # no `layers`: proportional map
    assert checks.layer_map(distil, distil.wiring[0]) == checks.default_layer_map(2, 6) == (3, 6)
    assert checks.default_layer_map(3, 12) == (4, 8, 12)


def test_schema_and_dataclasses_agree():
    schema = spec_schema()
    for cls in [model.Spec, *[t for t in vars(model).values() if dataclasses.is_dataclass(t)]]:
        node = schema if cls is model.Spec else schema["$defs"][cls.__name__]
        assert node["additionalProperties"] is False
        names = [f.metadata.get("yaml", f.name) for f in dataclasses.fields(cls)]
        assert list(node["properties"]) == names


def test_reference_page_is_in_sync():
    from tandem_dsl.reference import markdown

    page = ROOT / "docs/spec-reference.md"
    assert page.read_text() == markdown(), (
        "run: tandemc schema --format md > docs/spec-reference.md"
    )


def test_builder_matches_yaml_and_records_python_origins():
    b = (
        SpecBuilder("built")
        .model("large", d_model=64, n_layers=4, n_heads=4)
        .model("small", d_model=32, n_layers=2, n_heads=2)
        .projection("l2s", from_="large", to="small")
        .wire(query="small", memory="large", via="l2s", layers="small[:] <- large[-1]")
        .decode(policy="speed", target="large", draft="small", gamma=3)
    )
    spec = b.build()
    assert api.loads(b.to_yaml()) == spec
    assert api.loads(api.to_yaml(spec)) == spec
    b.set("models.small.n_heads", 3)
    with pytest.raises(SpecError) as info:
        b.build()
    origin = info.value.diagnostics[0].origin
    assert origin.source.startswith("python:") and origin.source.endswith(
        __file__.split("/")[-1] + f":{_line_of('b.set(')}"
    )


def _line_of(snippet: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if snippet in line and "_line_of" not in line)


models = st.fixed_dictionaries(
    {
        "heads": st.sampled_from([1, 2, 4]),
        "head_dim": st.sampled_from([8, 16]),
        "layers": st.integers(1, 6),
        "kv_div": st.sampled_from([1, 2]),
        "norm": st.sampled_from(["rmsnorm", "layernorm"]),
        "mlp": st.sampled_from(["swiglu", "gelu"]),
        "pos": st.sampled_from(["rope", "learned"]),
    }
)


@settings(max_examples=40, deadline=None)
@given(large=models, small=models, gamma=st.integers(1, 8), wired=st.booleans())
def test_generated_specs_round_trip(large, small, gamma, wired):
    b = SpecBuilder("generated")
    for name, m in (("large", large), ("small", small)):
        kv = max(1, m["heads"] // m["kv_div"])
        b.model(
            name,
            d_model=m["heads"] * m["head_dim"],
            n_layers=m["layers"],
            n_heads=m["heads"],
            n_kv_heads=kv,
            norm=m["norm"],
            mlp=m["mlp"],
            pos=m["pos"],
        )
    if wired:
        b.projection("p", from_="large", to="small", per_layer=gamma % 2 == 0)
        b.wire(query="small", memory="large", via="p", block=gamma)
    else:
        b.wire(query="small", kind="none")
    b.decode(policy="speed", target="large", draft="small", gamma=gamma)
    spec = b.build()
    assert api.loads(api.to_yaml(spec)) == spec
    assert api.loads(b.to_yaml()) == spec
    assert yaml.safe_load(api.to_yaml(spec))["decode"]["gamma"] == gamma
