"""Decode benchmark: `python -m compiler.decode.bench [--batch B] [--new N] [--repeats R]`.

Every policy runs on the same prompts in one process, after a warm-up call, and reports
tokens/s, speedup over autoregressive M_L, M_L and M_S calls per generated token, tau (mean
tokens per verify round, bonus counted) and whether greedy output equals M_L's.

Models (fp32, byte vocabulary 256): M_L d=512 / 8 layers, M_S d=128 / 2 layers (a Tandem
drafter wired to M_L's layers 4 and 8, and an independent drafter of the same size).
Random weights never agree, so acceptance is ~0 and only the overhead shows. To measure the
loops at realistic acceptance without training, `--agree A` also builds *synthetic bigram*
models with the full compute cost: every attention and MLP output projection is zeroed, so
each model's next token is a fixed function of the current token, set through its embedding
and head; M_L follows a permutation pi, M_S agrees with pi on a random fraction A of tokens
(confident there, top probability ~1) and proposes a random token elsewhere (unconfident, top
probability ~0.3), so the confidence rule has a signal as EAGLE-2 observes in real drafters.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from compiler.decode.programs import make_generate
from compiler.ir import AdaptiveIR, DecodeIR, DecoderIR, ProgramIR, ProjectionIR, WiringIR
from compiler.nn import init_params
from compiler.timing import timings

V = 256


def bench_program(max_len: int) -> ProgramIR:
    def dec(name, d, layers, heads):
        ff = (8 * d // 3 + 31) // 32 * 32  # SwiGLU ~8/3 d, rounded to 32
        return DecoderIR(name=name, vocab=V, d_model=d, n_layers=layers, n_heads=heads,
                         n_kv_heads=heads, d_ff=ff, max_len=max_len)  # fmt: skip

    large, tandem, indep = (
        dec("large", 512, 8, 8),
        dec("tandem", 128, 2, 2),
        dec("indep", 128, 2, 2),
    )
    proj = ProjectionIR(name="l2s", kind="linear", d_in=512, d_out=128)
    wirings = (
        WiringIR(kind="tandem", query="tandem", memory="large", layer_map=(4, 8), projection=proj),
        WiringIR(kind="none", query="indep", memory=None, layer_map=(None, None), projection=None),
    )
    return ProgramIR(name="bench", models=(large, tandem, indep), wirings=wirings, train=(),
                     decode=None, batch=1, max_len=max_len)  # fmt: skip


def _bigram(p: dict, next_tok: np.ndarray, scale: np.ndarray, key) -> dict:
    """Make a decoder's next token a fixed function of its current token (full compute kept)."""
    p = jax.tree.map(lambda x: x, p)
    for name, layer in p.items():
        if name.startswith("layers_"):
            layer["attn"]["wo"] = jnp.zeros_like(layer["attn"]["wo"])
            layer["mlp"]["w_down"] = jnp.zeros_like(layer["mlp"]["w_down"])
    emb = jax.random.normal(key, p["embed"]["tokens"].shape)  # [V, D]
    unit = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
    head = jnp.zeros((emb.shape[1], V)).at[:, next_tok].add(unit.T * scale[None, :])  # [D, V]
    p["embed"]["tokens"] = emb
    p["lm_head"]["w"] = head
    return p


def synthetic_params(params: dict, agree: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pi = rng.permutation(V)
    ok = rng.random(V) < agree
    pi_s = np.where(ok, pi, rng.integers(0, V, V))
    out = dict(params)
    keys = jax.random.split(jax.random.key(seed), 3)
    out["large"] = _bigram(params["large"], pi, np.full(V, 1.0), keys[0])
    s_scale = np.where(ok, 1.0, 0.06)  # logit gap ~ scale * sqrt(d): confident vs ~0.3
    for name, k in zip(("tandem", "indep"), keys[1:], strict=True):
        out[name] = _bigram(params[name], pi_s, s_scale, k)
    return out


def policies(new: int, gamma: int, max_gamma: int, threshold: float) -> dict[str, DecodeIR]:
    def d(policy, draft=None, **kw):
        return DecodeIR(policy=policy, target="large", draft=draft, gamma=gamma,
                        max_new_tokens=new, **kw)  # fmt: skip

    adaptive = AdaptiveIR(rule="confidence", threshold=threshold, max_gamma=max_gamma)
    return {
        "autoregressive M_L": d("autoregressive"),
        "autoregressive M_S": DecodeIR(
            policy="autoregressive", target="tandem", max_new_tokens=new
        ),  # fmt: skip
        "standalone Tandem (free token)": d("standalone", "tandem"),
        "SPEED independent": d("speed", "indep"),
        "Tandem + SPEED": d("speed", "tandem"),
        "Tandem + SPEED adaptive (conf)": d("adaptive", "tandem", adaptive=adaptive),
    }


def _time(fn, args, repeats: int):
    res, seconds = timings(fn, *args, repeats=repeats)
    return statistics.median(seconds), res


def bandwidth_probe() -> float:
    """GB/s of an fp32 mat-vec over ~100 MB: ~50 on an idle 2-core machine of this project
    (17-28 on the shared ones of docs/BENCHMARKS.md); much less means other jobs share the
    machine."""
    w = jnp.ones((32768, 800), jnp.float32)
    x = jnp.ones((1, 32768), jnp.float32)
    f = jax.jit(lambda x, w: x @ w)
    sec, _ = _time(f, (x, w), 20)
    return w.nbytes / sec / 1e9


def cpu_features() -> str:
    """This CPU's model and the SIMD features the kernels and XLA care about (Linux x86;
    elsewhere the architecture name): machines of one kind differ from day to day."""
    import os
    import platform

    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.machine()
    fields: dict[str, str] = {}
    for line in info.splitlines():  # the first processor's entries
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    model = fields.get("model name", platform.machine())
    return f"{model}, {os.cpu_count()} cores, {' '.join(simd) or 'no avx2'}"


def machine_line() -> str:
    """What every bench header prints: the CPU and how fast memory streams right now."""
    return f"{cpu_features()}; fp32 mat-vec {bandwidth_probe():.1f} GB/s"


def run(batch: int, new: int, prompt_len: int, gamma: int, max_gamma: int, threshold: float,
        agrees: list[float], repeats: int) -> None:  # fmt: skip
    prog = bench_program(max_len=prompt_len + new + max_gamma + 8)
    base = init_params(prog, jax.random.key(0))
    prompt = jax.random.randint(jax.random.key(1), (batch, prompt_len), 0, V, jnp.int32)
    lens = jnp.full((batch,), prompt_len, jnp.int32)
    key = jax.random.key(2)
    pols = policies(new, gamma, max_gamma, threshold)
    fns = {name: make_generate(prog, dec) for name, dec in pols.items()}
    print(f"# batch {batch}, prompt {prompt_len}, new tokens {new}, gamma {gamma}, "
          f"adaptive max_gamma {max_gamma} threshold {threshold}, fp32, "
          f"{jax.devices()[0].platform}, median of {repeats} after warm-up")  # fmt: skip
    print(f"# machine: {machine_line()}")
    for agree in agrees:
        params = base if agree < 0 else synthetic_params(base, agree)
        label = "random weights" if agree < 0 else f"synthetic bigram, agreement {agree:.2f}"
        print(f"\n## {label}\n")
        print("| policy | tokens/s | speedup vs M_L | M_L calls/token | M_S calls/token "
              "| tau | greedy == M_L |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        ref_rows, ref_tps = None, None
        for name, fn in fns.items():
            sec, res = _time(fn, (params, prompt, lens, key), repeats)
            lengths = np.asarray(res.lengths)
            toks = np.asarray(res.tokens)
            rows = [toks[b, : lengths[b]].tolist() for b in range(batch)]
            n_tok = int(lengths.sum())
            tps = n_tok / sec
            st = res.stats
            if ref_rows is None:
                ref_rows, ref_tps = rows, tps
            rounds = np.asarray(st.rounds).sum()
            tau = f"{np.asarray(st.round_tokens).sum() / rounds:.2f}" if rounds else "-"
            if name == "autoregressive M_S":
                ml, ms = 0.0, np.asarray(st.large_calls).sum() / n_tok  # its target is M_S
                equal = "n/a"
            else:
                ml = np.asarray(st.large_calls).sum() / n_tok
                ms = np.asarray(st.small_calls).sum() / n_tok
                equal = (
                    "n/a (M_S output)" if name.startswith("standalone") else str(rows == ref_rows)
                )
            print(f"| {name} | {tps:.0f} | {tps / ref_tps:.2f}x | {ml:.3f} | {ms:.2f} | {tau} "
                  f"| {equal} |")  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--max-gamma", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--agree", type=float, nargs="*", default=[-1.0, 0.7, 0.9],
                    help="synthetic agreement levels; -1 = random weights")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    run(a.batch, a.new, a.prompt, a.gamma, a.max_gamma, a.threshold, a.agree, a.repeats)


if __name__ == "__main__":
    main()
