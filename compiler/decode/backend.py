"""The mat-mul backend of a decode, and the params it reads.

- `xla`: XLA's dots over the params as trained (every platform; what `jax.export` artifacts
  and sharded meshes use).
- `kernel`: the packed CPU kernel (`compiler/kernels`) for every decode-time matrix of the
  float32 target and draft models: q/k/v/o, the MLP and the output layer, packed once by
  `prepare` outside the jitted programs.
- `auto` (default): the kernel where it can run (CPU platform, one device, a kernel that
  built), else XLA, with the reason.

The programs do not change with the backend: `compiler.nn.packed.dense` takes an array or a
packed weight, so the params alone decide.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from compiler.errors import InputError
from compiler.ir import DecodeIR, DecoderIR, ProgramIR
from compiler.nn import cut_head
from compiler.nn.packed import pack

BACKENDS = ("auto", "xla", "kernel")


@dataclass(frozen=True)
class Backend:
    name: str  # "kernel" or "xla"
    detail: str  # the kernel's instruction set and threads, or why XLA

    @property
    def packed(self) -> bool:
        return self.name == "kernel"

    def __str__(self) -> str:
        return f"{self.name} ({self.detail})"


def choose(requested: str, n_devices: int = 1) -> Backend:
    """The backend for `requested` (auto / xla / kernel); ValueError when `kernel` is asked for
    and cannot run here."""
    if requested not in BACKENDS:
        raise InputError(f"decode.backend {requested!r}: expected one of {BACKENDS}")
    if requested == "xla":
        return Backend("xla", "asked for")
    from compiler import kernels

    problem = None
    if jax.default_backend() != "cpu":
        problem = f"the kernel is for CPU and this runs on {jax.default_backend()}"
    elif n_devices > 1:
        problem = f"the kernel runs unsharded and the mesh has {n_devices} devices"
    elif (kernel := kernels.load()) is None:
        problem = f"the kernel is not available ({kernels.unavailable_reason() or 'build failed'})"
    if problem is None:
        return Backend("kernel", f"{kernel.isa}, XLA's CPU thread pool")
    if requested == "kernel":
        raise InputError(f"decode.backend kernel: {problem}; use auto or xla")
    return Backend("xla", problem)


def describe(platforms, requested: str, n_devices: int = 1) -> dict[str, str]:
    """What `tandemc compile` says per platform: the exported modules keep XLA's dots on every
    platform (portable, no custom call); on CPU, `tandemc run` then decodes with this
    machine's choice for `requested`."""
    out = {}
    for platform in platforms:
        if platform != "cpu":
            out[platform] = "xla dots"
            continue
        try:
            here = str(choose(requested, n_devices)) if jax.default_backend() == "cpu" else None
        except ValueError as e:
            here = f"error: {e}"
        out[platform] = "xla dots in the exported module" + (
            f"; `tandemc run` here: {here}" if here else ""
        )
    return out


def pack_decoder(p: dict, cfg: DecoderIR, head_rows: int = 0) -> dict:
    """A float32 decoder's params with q|k|v (one fused weight), o, the MLP (gate|up fused) and
    the output layer packed (the head cut to its first `head_rows` rows when > 0; a tied head
    is packed from the embeddings, which stay for the token lookup). Other dtypes come back
    unchanged."""
    if cfg.dtype != "float32":
        return p
    out = dict(cut_head(p, head_rows) if head_rows else p)
    for layer in range(cfg.n_layers):
        lp = p[f"layers_{layer}"]
        a, m = lp["attn"], lp["mlp"]
        qkv = jnp.concatenate([a[w].reshape(cfg.d_model, -1) for w in ("wq", "wk", "wv")], 1)
        # wk, wv stay as they are for the Tandem memory write (projected M_L states)
        attn = {"wqkv": pack(qkv), "wk": a["wk"], "wv": a["wv"], "wo": pack(a["wo"], 2)}
        attn |= {b: a[b] for b in ("bq", "bk", "bv") if b in a}  # added after the kernel
        if "w_gate" in m:
            mlp = {"w_gate_up": pack(jnp.concatenate([m["w_gate"], m["w_up"]], 1))}
        else:
            mlp = {"w_up": pack(m["w_up"])}
        mlp["w_down"] = pack(m["w_down"])
        out[f"layers_{layer}"] = {**lp, "attn": attn, "mlp": mlp}
    head = out["lm_head"]["w"] if "lm_head" in out else out["embed"]["tokens"].T
    out["lm_head"] = {"w": pack(head)}
    return out


def prepare(params: dict, prog: ProgramIR, decode: DecodeIR, backend: Backend,
            cache: dict | None = None) -> dict:  # fmt: skip
    """params for decoding with `backend`: the target's and the draft's matrices packed for the
    kernel (the draft's head cut to decode.draft_vocab first). `cache` ({}, kept by the
    caller with the params it was made from) keeps packed models between calls."""
    if not backend.packed:
        return params
    cache = {} if cache is None else cache
    out = dict(params)
    models = [(decode.target, 0)]
    if decode.draft and decode.draft != decode.target:
        models.append((decode.draft, decode.draft_vocab))
    for name, rows in models:
        if (name, rows) not in cache:
            cache[name, rows] = pack_decoder(params[name], prog.model(name), rows)
        out[name] = cache[name, rows]
    return out
