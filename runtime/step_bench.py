"""`python -m runtime.step_bench SPEC`: what XLA makes of our decoder step, side by side with a
plain hand-written JAX Llama step on the same weights, cache length and machine.

The hand-written step is the plainest JAX form of a Llama decode step (measured at ~19
ms/token for SmolLM2 on an idle machine of ours): one function, per-layer weights and [S, K, E]
caches updated with dynamic_update_slice, masked attention over the whole cache. Ours is
`compiler.nn.decoder_block`, which every decode loop runs. Both are jitted with donated caches,
timed interleaved (median of n calls each) for k = 1 (an autoregressive step) and the verify
block sizes, and must give the same logits, or the comparison would be void. Our step runs
once per decode backend (`--backends xla,kernel`: XLA's dots, and the packed CPU kernel on
weights packed once), so both are measured side by side in one run. Each backend's step is
also timed inside a compiled loop (`compiler.router.costs.loop_ms`), as the decode loop runs
it: a jitted call per step adds the dispatch of ~300 argument arrays, which decoding never
pays. A machine line (`compiler.decode.bench.machine_line`) names the CPU's features and how
fast memory streams.
Only rope + rmsnorm + swiglu models (Llama) have a hand-written twin.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from compiler.decode.backend import choose, pack_decoder
from compiler.decode.bench import machine_line
from compiler.ir import DecoderIR
from compiler.nn import decoder_block, init_cache
from compiler.router.costs import loop_ms
from compiler.timing import timed_call


def _rms(x, w, eps):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * w


def _rope(x, pos, theta):  # x [T, N, E], rotate-half
    e = x.shape[-1]
    ang = pos[:, None].astype(jnp.float32) * theta ** (-jnp.arange(0, e, 2) / e)
    c, s = jnp.cos(ang)[:, None], jnp.sin(ang)[:, None]
    x1, x2 = x[..., : e // 2], x[..., e // 2 :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def hand_written_step(cfg: DecoderIR):
    """(params, k caches, v caches, tokens [T], pos0) -> (logits [T, V], k caches, v caches)."""
    h, kv, e, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model
    eps, theta = cfg.norm_eps, cfg.rope_theta

    def step(params, kcs, vcs, tokens, pos0):
        t, s = tokens.shape[0], kcs[0].shape[0]
        pos = pos0 + jnp.arange(t)
        mask = jnp.arange(s)[None] <= pos[:, None]
        x = params["embed"]["tokens"][tokens]
        new_k, new_v = [], []
        for layer in range(cfg.n_layers):
            lp = params[f"layers_{layer}"]
            a, m = lp["attn"], lp["mlp"]
            y = _rms(x, lp["attn_norm"]["scale"], eps)
            q = _rope((y @ a["wq"].reshape(d, -1)).reshape(t, h, e), pos, theta)
            k = _rope((y @ a["wk"].reshape(d, -1)).reshape(t, kv, e), pos, theta)
            v = (y @ a["wv"].reshape(d, -1)).reshape(t, kv, e)
            kc = jax.lax.dynamic_update_slice(kcs[layer], k, (pos0, 0, 0))
            vc = jax.lax.dynamic_update_slice(vcs[layer], v, (pos0, 0, 0))
            new_k.append(kc)
            new_v.append(vc)
            sc = jnp.einsum("tkgd,skd->kgts", q.reshape(t, kv, h // kv, e), kc) * e**-0.5
            w = jax.nn.softmax(jnp.where(mask[None, None], sc, -jnp.inf), -1)
            o = jnp.einsum("kgts,skd->tkgd", w, vc).reshape(t, h * e)
            x = x + o @ a["wo"].reshape(h * e, d)
            y = _rms(x, lp["mlp_norm"]["scale"], eps)
            x = x + (jax.nn.silu(y @ m["w_gate"]) * (y @ m["w_up"])) @ m["w_down"]
        head = params["embed"]["tokens"].T if cfg.tie_embeddings else params["lm_head"]["w"]
        return _rms(x, params["final_norm"]["scale"], eps) @ head, new_k, new_v

    return jax.jit(step, donate_argnums=(1, 2))


def our_step(cfg: DecoderIR):
    """(params, cache, tokens [1, T], start [1]) -> (logits [1, T, V], cache)."""

    def step(params, cache, tokens, start):
        logits, _, cache = decoder_block(params, cfg, cache, tokens, start)
        return logits, cache

    return jax.jit(step, donate_argnums=(1,))


def twin_problem(cfg: DecoderIR) -> str | None:
    """Why the model has no hand-written twin (None when it has one)."""
    want = {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "dtype": "float32"}
    bad = [f"{k} {getattr(cfg, k)}" for k, v in want.items() if getattr(cfg, k) != v]
    bad += [k for k in ("qkv_bias", "rope_scaling") if getattr(cfg, k)]  # the twin has neither
    return f"model {cfg.name!r} is not a float32 Llama ({', '.join(bad)})" if bad else None


def compare(params: dict, cfg: DecoderIR, max_len: int, ks=(1, 3, 5, 9), n: int = 30,
            start: int = 100, backends=("xla", "kernel")) -> dict:  # fmt: skip
    """{"steps": {k: {"hand_ms", "<backend>_ms", "max_abs_diff": {backend: ...}}}} plus the
    machine line; our step runs once per backend (the kernel's on packed params). Raises if
    any backend's logits differ from the hand-written step's."""
    problem = twin_problem(cfg)
    if problem:
        raise ValueError(f"{problem}: no hand-written step to compare with")
    ours, hand = our_step(cfg), hand_written_step(cfg)
    weights = {b: pack_decoder(params, cfg) if b == "kernel" else params for b in backends}
    start = min(start, max_len - max(ks) - 1)
    kv_shape = (max_len, cfg.n_kv_heads, cfg.head_dim)
    out = {"machine": machine_line(), "max_len": max_len, "backends": list(backends), "steps": {}}
    for k in ks:
        tokens = (jnp.arange(k, dtype=jnp.int32) * 7 + 3) % cfg.vocab
        pos = jnp.asarray([start], jnp.int32)
        caches = {b: init_cache(cfg, 1, max_len) for b in backends}
        kcs = [jnp.zeros(kv_shape) for _ in range(cfg.n_layers)]
        vcs = [jnp.zeros(kv_shape) for _ in range(cfg.n_layers)]
        lh, kcs, vcs = hand(params, kcs, vcs, tokens, jnp.int32(start))
        scale = float(jnp.max(jnp.abs(lh)))
        row = {"max_abs_diff": {}}
        for b in backends:
            lo, caches[b] = ours(weights[b], caches[b], tokens[None], pos)
            err = float(jnp.max(jnp.abs(lo[0] - lh)))
            if not err <= 1e-4 * max(scale, 1.0):
                raise AssertionError(f"{b}, k={k}: logits differ by {err} (max |logit| {scale})")
            row["max_abs_diff"][b] = err
        times = {b: [] for b in ("hand", *backends)}
        for _ in range(n):  # interleaved: drift hits every variant alike; caches threaded
            (lh, kcs, vcs), s = timed_call(hand, params, kcs, vcs, tokens, jnp.int32(start))
            times["hand"].append(s)
            for b in backends:
                (lo, caches[b]), s = timed_call(ours, weights[b], caches[b], tokens[None], pos)
                times[b].append(s)
        row.update({f"{v}_ms": 1e3 * float(np.median(ts)) for v, ts in times.items()})
        for b in backends:  # as the decode loop runs it: no per-call dispatch of ~300 arrays
            carry = (init_cache(cfg, 1, max_len), jnp.zeros((), jnp.float32))
            row[f"{b}_loop_ms"] = loop_ms(_loop_step(cfg, tokens, pos), weights[b], carry, n, 3)
        out["steps"][k] = row
    return out


def _loop_step(cfg: DecoderIR, tokens, pos):
    def step(params, carry):
        cache, acc = carry
        toks = tokens[None] + (acc > 1e30).astype(jnp.int32)  # depends on the last step
        logits, _, cache = decoder_block(params, cfg, cache, toks, pos)
        return cache, acc + logits[0, 0, 0]

    return step


def table(res: dict, name: str) -> str:
    """One row per tokens-per-call: each variant's ms per call, each backend's ms per step
    inside a compiled loop (as decoding runs), our XLA step over the hand-written one, each
    backend's in-loop cost relative to its own 1-token step, and the kernel's speedup over
    XLA per call and in the loop."""
    bs = res["backends"]
    one = res["steps"].get(1)
    both = {"xla", "kernel"} <= set(bs)
    head = ["tokens per call", "hand-written ms", *[f"{b} ms" for b in bs]]
    head += [f"{b} in-loop ms" for b in bs]
    head += ["xla / hand-written"] if "xla" in bs else []
    head += [f"{b} in-loop / its 1-token step" for b in bs] if one else []
    head += ["kernel speedup over xla (call)", "(in loop)"] if both else []
    head += ["max abs diff"]
    lines = [
        f"# model {name}, batch 1, cache {res['max_len']} slots, fp32; machine: {res['machine']}",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for k, s in res["steps"].items():
        cells = [str(k), f"{s['hand_ms']:.1f}", *[f"{s[f'{b}_ms']:.1f}" for b in bs]]
        cells += [f"{s[f'{b}_loop_ms']:.1f}" for b in bs]
        cells += [f"{s['xla_ms'] / s['hand_ms']:.2f}"] if "xla" in bs else []
        cells += [f"{s[f'{b}_loop_ms'] / one[f'{b}_loop_ms']:.2f}x" for b in bs] if one else []
        if both:
            cells += [f"{s['xla_ms'] / s['kernel_ms']:.2f}x"]
            cells += [f"{s['xla_loop_ms'] / s['kernel_loop_ms']:.2f}x"]
        cells += [", ".join(f"{b} {e:.1e}" for b, e in s["max_abs_diff"].items())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m runtime.step_bench", description=__doc__)
    ap.add_argument("spec")
    ap.add_argument("--model", help="model name (default: decode.target)")
    ap.add_argument("--ks", default="1,3,5,9", help="tokens per call, comma-separated")
    ap.add_argument("-n", type=int, default=30, help="timed calls per step and k")
    ap.add_argument("--backends", default="xla,kernel", help="decode backends, comma-separated")
    a = ap.parse_args(argv)
    backends = []
    for b in a.backends.split(","):
        try:
            choose(b)
            backends.append(b)
        except ValueError as e:  # the kernel cannot run here: measure the rest, say why
            print(f"skipping backend {b}: {e}", file=sys.stderr)
    from .run import initial_params, open_run

    r = open_run(a.spec)
    name = a.model or (r.prog.decode.target if r.prog.decode else r.prog.models[0].name)
    params = initial_params(r)[name]
    res = compare(params, r.prog.model(name), r.prog.max_len,
                  tuple(int(k) for k in a.ks.split(",")), a.n, backends=backends)  # fmt: skip
    print(table(res, name))
    return res


if __name__ == "__main__":
    main()
