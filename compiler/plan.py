"""The compile plan: parameters, analytic FLOPs and KV-cache bytes, wiring, XLA's figures."""

from __future__ import annotations

import re

import jax

from . import nn
from .ir import ProgramIR
from .memory import REMAT_CHOICES, activation_bytes, with_remat
from .nn.params import fuses, predicts
from .nn.projection import param_count
from .shapes import abstract_params, train_state_shape
from .sharding import Sharder


def param_counts(prog: ProgramIR) -> dict[str, int]:
    """{model or projection name: exact parameter count}, as `compiler.nn.init_params`."""
    counts = {m.name: m.param_count for m in prog.models}
    for w in prog.wirings:
        if w.kind != "none" and w.projection is not None:
            counts.setdefault(
                w.projection.name,
                param_count(
                    w.projection,
                    len(w.wired_layers),
                    fuses(prog, w.projection),
                    predicts(prog, w.projection),
                ),
            )
    return counts


def make_plan(prog: ProgramIR) -> dict:
    context = prog.max_len // 2  # FLOPs are quoted for a token halfway through the cache
    models = {}
    for m in prog.models:
        models[m.name] = {
            "params": m.param_count,
            "bytes": m.param_count * m.dtype_bytes,
            "flops_per_token": m.flops_per_token(context),
            "kv_cache_bytes_per_token": m.kv_cache_bytes_per_token,
            "kv_cache_bytes": m.kv_cache_bytes_per_token * prog.batch * prog.max_len,
            "trainable": m.trainable,
        }
    projections, wiring = {}, []
    for w in prog.wirings:
        if w.kind == "none":
            wiring.append({"query": w.query, "kind": "none"})
            continue
        p = w.projection
        n = param_count(p, len(w.wired_layers), fuses(prog, p), predicts(prog, p))
        projections[p.name] = {
            "params": n,
            "kind": p.kind,
            "per_layer": p.per_layer,
            "flops_per_token": 2 * n,
        }
        wiring.append(
            {
                "query": w.query,
                "memory": w.memory,
                "via": p.name,
                "block": w.block,
                "fuse": w.fuse,
                "predict": w.predict,
                "layers": [{"small": j, "large": src} for j, src in enumerate(w.layer_map)],
            }
        )
    return {
        "name": prog.name,
        "batch": prog.batch,
        "max_len": prog.max_len,
        "flops_context": context,
        "models": models,
        "projections": projections,
        "wiring": wiring,
        "programs": {},
    }


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def format_plan(plan: dict) -> str:
    lines = [
        f"plan {plan['name']}: batch {plan['batch']}, max_len {plan['max_len']} "
        f"(FLOPs/token at context {plan['flops_context']})",
        f"  {'part':<12}{'params':>12}{'weights':>12}{'FLOPs/token':>14}{'KV/token':>11}"
        f"{'KV cache':>11}",
    ]
    for name, m in plan["models"].items():
        lines.append(
            f"  {name:<12}{m['params']:>12,}{_si(m['bytes'], 'B'):>12}"
            f"{_si(m['flops_per_token']):>14}{_si(m['kv_cache_bytes_per_token'], 'B'):>11}"
            f"{_si(m['kv_cache_bytes'], 'B'):>11}"
        )
    for name, p in plan["projections"].items():
        lines.append(f"  {name:<12}{p['params']:>12,}{'':>12}{_si(p['flops_per_token']):>14}")
    for w in plan["wiring"]:
        if w.get("kind") == "none":
            lines.append(f"  wiring: {w['query']} is independent")
            continue
        pairs = ", ".join(
            f"{x['small']}<-{x['large']}" if x["large"] is not None else f"{x['small']}:causal"
            for x in w["layers"]
        )
        lines.append(f"  wiring: {w['query']} <- {w['memory']} via {w['via']}: {pairs}")
    if plan["programs"]:
        lines.append(
            f"  {'program':<22}{'XLA FLOPs':>12}{'analytic':>12}{'bytes acc.':>12}"
            f"{'args':>11}{'temp':>11}"
        )
        for name, c in plan["programs"].items():
            if "flops" not in c:
                lines.append(f"  {name:<22}  XLA cost unavailable: {c.get('cost_unavailable')}")
                continue
            analytic = _si(c["analytic_flops"]) if c.get("analytic_flops") else "-"
            lines.append(
                f"  {name:<22}{_si(c['flops']):>12}{analytic:>12}"
                f"{_si(c['bytes_accessed'], 'B'):>12}{_si(c.get('argument_bytes', 0), 'B'):>11}"
                f"{_si(c.get('temp_bytes', 0), 'B'):>11}"
            )
    if plan.get("sharding"):
        lines.append(format_sharding(plan["sharding"]))
    return "\n".join(lines)


def format_sharding(s: dict) -> str:
    """The mesh, each parameter group's PartitionSpec, and bytes per device."""
    mesh = " x ".join(f"{a}={n}" for a, n in s["mesh"].items())
    where = "abstract devices: lowered and exported, not compiled here" if s["abstract"] else (
        "this machine's devices"
    )  # fmt: skip
    rules = ", ".join(f"{lg}->{m or 'replicated'}" for lg, m in s["rules"])
    lines = [
        f"sharding on mesh {mesh} ({s['devices']} devices, {where})",
        f"  rules{' (default)' if s['default_rules'] else ''}: {rules}",
        f"  {'part':<10}{'group':<28}{'n':>4}  {'logical axes':<30}{'spec':<28}"
        f"{'total':>11}{'per device':>12}",
    ]
    for g in s["groups"]:
        axes = "(" + ", ".join(a or "-" for a in g["axes"]) + ")"
        lines.append(
            f"  {g['part']:<10}{g['group']:<28}{g['count']:>4}  {axes:<30}{g['spec']:<28}"
            f"{_si(g['bytes'], 'B'):>11}{_si(g['device_bytes'], 'B'):>12}"
        )
    lines.append("  per-device memory (arrays only; activations and temporaries not counted):")
    for what, nbytes in s["device_bytes"].items():
        lines.append(f"    {what:<36}{_si(nbytes, 'B'):>12}")
    if s.get("train_steps"):
        lines.append(
            "  train step peak per device, estimated (state + gradients + activations, "
            "compiler/memory.py), by remat policy; * = the spec's:"
        )
        for name, t in s["train_steps"].items():
            peaks = "   ".join(
                f"{remat}{'*' if remat == t['remat'] else ''} {_si(b, 'B')}"
                for remat, b in t["peak"].items()
            )
            lines.append(f"    {name:<20}grad_accum {t['grad_accum']:<4}{peaks}")
    for note in s["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def sharding_summary(prog: ProgramIR, sh: Sharder) -> dict:
    """What `tandemc compile` prints: the mesh, every parameter group's sharding, and bytes
    per device of the parameters, each stage's train state and the decode KV caches."""
    params = abstract_params(prog)
    params_sh = sh.params(params)
    out: dict = {
        "mesh": sh.sizes,
        "devices": sh.n_devices,
        "abstract": sh.abstract,
        "rules": [list(r) for r in sh.rules],
        "default_rules": not prog.mesh.rules,
        "groups": sh.report(params, params_sh),
        "device_bytes": {},
    }
    for name, tree in params.items():
        out["device_bytes"][f"params:{name}"] = sh.tree_device_bytes(tree, params_sh[name])
    out["train_steps"] = {}
    for stage in prog.train:
        state = train_state_shape(prog, stage, params)
        state_sh = sh.train_state(prog, stage, state)
        held = sh.tree_device_bytes(state, state_sh)
        out["device_bytes"][f"train_state:{stage.name}"] = held
        held += sh.tree_device_bytes(state["params"], state_sh["params"])  # the gradients
        out["train_steps"][stage.name] = {
            "remat": stage.scale.remat,
            "grad_accum": stage.scale.grad_accum,
            "peak": {
                remat: held + activation_bytes(prog, with_remat(stage, remat), sh)
                for remat in REMAT_CHOICES
            },
        }
    if prog.decode is not None:
        d = prog.decode
        for name in (d.target, d.draft):
            if name is None:
                continue
            m = prog.model(name)
            wiring = prog.wiring_of(name) if name == d.draft else None
            cache = jax.eval_shape(
                lambda m=m, w=wiring: nn.init_small_cache(m, w, prog.batch, prog.max_len)
            )
            out["device_bytes"][f"kv_cache:{name}"] = sh.tree_device_bytes(
                cache, sh.cache(cache, f"{name}/cache")
            )
    notes = {re.sub(r"layers_\d+", "layers_*", n) for n in sh.notes}
    out["notes"] = sorted(notes)
    return out
