"""A compiled decoder as a `flax.nnx` Module: the pure-function model with `nnx.Param` leaves.

    from compiler.nnx_module import DecoderModule

    model = DecoderModule.from_spec("specs/quickstart.yaml", "large")  # `tandemc run`'s init
    logits = model(tokens)       # == compiler.nn.decoder_forward(params, cfg, tokens)[0]
    params = model.to_params()   # the functional tree back (init_params' layout)

`runtime.run.nnx_module(r, name)` builds one from a run's trained weights and
`runtime.run.use_params(r, name, params)` hands fine-tuned weights back to the run.

The parameters are `nnx.Param`s under `model.params`, with the functional tree's names
(`model.params["layers_0"]["attn"]["wq"]`). Each carries its logical axes
(`compiler/nn/axes.py`) as nnx's `out_sharding` metadata and the spec's sharding rules (the
first rule for each logical axis) as `sharding_rules`, so `nnx.get_partition_spec` maps them
onto a mesh; `mesh=` places the values as `tandemc run` does (`compiler.sharding.Sharder`:
a dimension a mesh axis does not divide is replicated). The module holds nothing else:
`__call__` is `decoder_forward` on the current values, so the logits are those of the
functional model bit for bit.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from compiler.build import build_ir
from compiler.errors import InputError
from compiler.ir import DecoderIR, ProgramIR
from compiler.nn import decoder_forward, init_decoder, init_model, logical_axes
from compiler.sharding import DEFAULT_RULES, Sharder, rules_of


def nnx_rules(rules) -> tuple[tuple[str, str | None], ...]:
    """Sharding rules (first match wins, `compiler.sharding`) as nnx reads them (one mesh
    axis per logical axis): the first rule for each logical axis."""
    out: dict[str, str | None] = {}
    for logical, mesh_axis in rules:
        out.setdefault(logical, mesh_axis)
    return tuple(out.items())


def check_params(cfg: DecoderIR, params) -> None:
    """InputError unless `params` has the tree, shapes and dtypes of model `cfg`'s params
    (`compiler.nn.init_decoder`), naming every difference."""
    want = jax.eval_shape(lambda: init_decoder(cfg, jax.random.PRNGKey(0)))
    if not isinstance(params, dict):
        raise InputError(f"params of model '{cfg.name}' must be a dict, not {type(params)}")
    want_flat = dict(_flat(want))
    got_flat = dict(_flat(params))
    problems = [f"missing {p}" for p in want_flat if p not in got_flat]
    problems += [f"unexpected {p}" for p in got_flat if p not in want_flat]
    for path, w in want_flat.items():
        g = got_flat.get(path)
        if g is None:
            continue
        shape, dtype = tuple(np.shape(g)), np.dtype(getattr(g, "dtype", type(g)))
        if shape != w.shape or dtype != w.dtype:
            problems.append(
                f"{path}: {dtype.name}{list(shape)}, the model has {w.dtype.name}{list(w.shape)}"
            )
    if problems:
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        raise InputError(f"params do not fit model '{cfg.name}': {'; '.join(problems[:6])}{more}")


def _flat(tree, prefix: str = ""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}/{k}" if prefix else str(k))
    else:
        yield prefix, tree


def _to_variables(tree, axes, rules):
    if isinstance(tree, dict):
        return nnx.Dict({k: _to_variables(v, axes[k], rules) for k, v in tree.items()})
    return nnx.Param(tree, eager_sharding=False, out_sharding=axes, sharding_rules=rules)


def _values(node):
    if isinstance(node, nnx.Dict):
        return {k: _values(v) for k, v in node.items()}
    return node.get_value()


class DecoderModule(nnx.Module):
    """One decoder model of a spec (`cfg`, its `DecoderIR`) with `params` as `nnx.Param`s.

    rules: the sharding rules of the spec (`rules_of(prog.mesh)`; default DEFAULT_RULES).
    mesh: a `jax.sharding.Mesh` to place the values on (as `tandemc run` places them);
    None leaves them where they are."""

    def __init__(self, cfg: DecoderIR, params: dict, *, rules=DEFAULT_RULES, mesh=None):
        check_params(cfg, params)
        rules = tuple(tuple(r) for r in rules)
        if mesh is not None:
            sh = Sharder(mesh, rules)
            params = sh.put(params, sh.params({cfg.name: params})[cfg.name])
        self.cfg = cfg
        self.params = _to_variables(params, logical_axes(params), nnx_rules(rules))

    @classmethod
    def from_spec(cls, spec, name: str, *, mesh=None) -> DecoderModule:
        """Model `name` of a spec (a file, a typed spec or a SpecBuilder) with the random
        init `tandemc run` starts from (`init.seed`). A model whose `init` reads weights
        (checkpoint, gguf, safetensors, embed_from) comes from a run instead:
        `runtime.run.nnx_module(run.open_run(spec), name, trained=False)`."""
        from tandem_dsl import api

        loaded = api.checked(spec)
        prog = build_ir(loaded.spec)
        cfg = standalone_model(prog, name)
        init = loaded.spec.models[name].init
        if init.from_ != "random" or init.embed_from:
            source = init.from_ if init.from_ != "random" else f"embed_from {init.embed_from}"
            raise InputError(
                f"model '{name}' starts from {source} weights: build it from a run, "
                f"runtime.run.nnx_module(run.open_run(spec), '{name}', trained=False)"
            )
        params = init_model(prog, name, init.seed)
        return cls(cfg, params, rules=rules_of(prog.mesh), mesh=mesh)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Teacher-forced causal pass: tokens [B, T] (positions [B, T], default 0..T-1) ->
        logits [B, T, V] float32, `compiler.nn.decoder_forward` on the current values."""
        return decoder_forward(self.to_params(), self.cfg, tokens, positions)[0]

    def to_params(self) -> dict:
        """The current values as the functional param tree (`compiler.nn.init_params(...)[name]`,
        `runtime.run.trained_params(r)[name]`): for `decoder_forward`, `runtime.run.use_params`,
        `runtime.weights.export_weights`."""
        return _values(self.params)

    def load_params(self, params: dict) -> None:
        """Sets every Param's value from a functional tree of this model (checked first)."""
        check_params(self.cfg, params)

        def walk(node, tree):
            for k, v in node.items():
                if isinstance(v, nnx.Dict):
                    walk(v, tree[k])
                else:
                    v.set_value(tree[k])

        walk(self.params, params)


def standalone_model(prog: ProgramIR, name: str) -> DecoderIR:
    """Model `name` of `prog` if it runs alone; InputError for an unknown name or a Tandem
    small model (its layers attend to another model's hidden states)."""
    names = [m.name for m in prog.models]
    if name not in names:
        raise InputError(f"no model '{name}' in spec '{prog.name}' (models: {', '.join(names)})")
    if prog.is_tandem(name):
        raise InputError(
            f"model '{name}' is a Tandem model (its layers attend to "
            f"'{prog.wiring_of(name).memory}'): "
            "DecoderModule holds a model that runs alone"
        )
    return prog.model(name)
