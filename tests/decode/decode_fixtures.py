"""Tiny programs for the decode tests (float32, d <= 64, <= 3 layers, vocab <= 64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compiler.decode import make_generate
from compiler.ir import DecodeIR, DecoderIR, ProgramIR, ProjectionIR, SamplingIR, WiringIR
from compiler.nn import decoder_forward, init_params, tandem_forward

VOCAB = 61
MAX_LEN = 96
# Tests compile many small programs; XLA's -O0 backend halves compile time (2x slower to run,
# irrelevant at this size). Equalities are checked between programs compiled the same way.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def generator(prog: ProgramIR, decode: DecodeIR, **kw):
    return make_generate(prog, decode, compiler_options=FAST_COMPILE, **kw)


def decoder(name: str, d: int, layers: int, heads: int = 4, kv: int = 2, **kw) -> DecoderIR:
    return DecoderIR(name=name, vocab=kw.pop("vocab", VOCAB), d_model=d, n_layers=layers,
                     n_heads=heads, n_kv_heads=kv, d_ff=2 * d, max_len=MAX_LEN, **kw)  # fmt: skip


def tandem(small: DecoderIR, large: DecoderIR, layer_map, fuse=None, predict=None) -> WiringIR:
    """With predict, training (and `teacher_forced`) covers blocks of up to 3 tokens."""
    proj = ProjectionIR(name="l2s", kind="linear", d_in=large.d_model, d_out=small.d_model)
    depth = 3 if predict is not None else 2
    return WiringIR(kind="tandem", query=small.name, memory=large.name,
                    layer_map=tuple(layer_map), projection=proj, fuse=fuse, predict=predict,
                    block=depth, block_max=depth)  # fmt: skip


def independent(small: DecoderIR) -> WiringIR:
    return WiringIR(kind="none", query=small.name, memory=None,
                    layer_map=(None,) * small.n_layers, projection=None)  # fmt: skip


def program(kind: str = "tandem", *, vocab: int = VOCAB, d_large: int = 48, d_small: int = 32):
    """kind: tandem (all layers wired) | fused (tandem with a feature input from the large
    model's last layer) | predicted (tandem with memory prediction past the frontier) |
    partial (one unwired small layer) | independent | copy (the drafter is an independent
    copy of the large model's architecture)."""
    large = decoder("large", d_large, 2, vocab=vocab)
    if kind == "copy":
        small = decoder("small", d_large, 2, vocab=vocab)
    else:
        small = decoder("small", d_small, 2, heads=4, kv=4, vocab=vocab)
    if kind in ("tandem", "fused", "predicted"):
        fuse = 2 if kind == "fused" else None
        wiring = tandem(small, large, (1, 2), fuse, 1.0 if kind == "predicted" else None)
    elif kind == "partial":
        wiring = tandem(small, large, (2, None))
    else:
        wiring = independent(small)
    return ProgramIR(name=f"decode-{kind}", models=(large, small), wirings=(wiring,), train=(),
                     decode=None, batch=4, max_len=MAX_LEN)  # fmt: skip


def decode_ir(policy: str, *, gamma=3, temperature=0.0, top_k=0, top_p=1.0, max_new=12,
              free_token=True, adaptive=None, eos_id=-1, target="large") -> DecodeIR:  # fmt: skip
    return DecodeIR(
        policy=policy, target=target, draft=None if policy == "autoregressive" else "small",
        gamma=gamma, free_token=free_token, adaptive=adaptive,
        sampling=SamplingIR(temperature=temperature, top_k=top_k, top_p=top_p),
        max_new_tokens=max_new, eos_id=eos_id,
    )  # fmt: skip


def params_for(prog: ProgramIR, seed: int = 0, head_scale: float = 1.0) -> dict:
    """Random params; head_scale > 1 sharpens every model's output distribution."""
    params = init_params(prog, jax.random.key(seed))
    if "fuse" in params.get("l2s", {}):  # its gain starts at zero; a random one makes it count
        g = params["l2s"]["fuse"]["gain"]
        params["l2s"]["fuse"]["gain"] = jax.random.normal(jax.random.key(seed + 1), g.shape)
    for m in prog.models:
        if head_scale != 1.0 and "lm_head" in params[m.name]:
            params[m.name]["lm_head"]["w"] = params[m.name]["lm_head"]["w"] * head_scale
    return params


def copy_large_into_small(params: dict) -> dict:
    """An independent drafter that agrees with the large model exactly (oracle drafts)."""
    out = dict(params)
    out["small"] = jax.tree.map(lambda x: x, params["large"])
    return out


def prompts(batch: int, lens, p_max: int, seed: int = 0):
    toks = jax.random.randint(jax.random.key(seed + 100), (batch, p_max), 0, VOCAB)
    lens = jnp.asarray(lens, jnp.int32)
    toks = jnp.where(jnp.arange(p_max)[None] < lens[:, None], toks, 0)
    return toks.astype(jnp.int32), lens


def rows(result) -> list[list[int]]:
    toks, lens = np.asarray(result.tokens), np.asarray(result.lengths)
    return [toks[b, : lens[b]].tolist() for b in range(toks.shape[0])]


def noisy_copy_into_small(params: dict, noise: float, seed: int = 1) -> dict:
    """An independent drafter that mostly agrees with the large model: its weights plus
    relative Gaussian noise, so acceptance is high but ragged across rows and rounds."""
    out = dict(params)
    out["small"] = _noisy(params["large"], noise, jax.random.key(seed))
    return out


@jax.jit
def _noisy(tree, noise, key):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        x + noise * jnp.std(x) * jax.random.normal(k, x.shape)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


# jitted teacher-forced references (the configs are static)
forward = jax.jit(decoder_forward, static_argnums=(1,))
teacher_forced = jax.jit(tandem_forward, static_argnums=(2, 3))


def cyclic_large(params):
    """M_L as a bigram model: next token = (t + 1) mod 7 for t < 7 (embedding and head)."""
    big = jax.tree.map(lambda x: x, params["large"])
    for name, layer in big.items():
        if name.startswith("layers_"):
            layer["attn"]["wo"] = jnp.zeros_like(layer["attn"]["wo"])
            layer["mlp"]["w_down"] = jnp.zeros_like(layer["mlp"]["w_down"])
    d = big["embed"]["tokens"].shape[1]
    emb = jax.random.normal(jax.random.key(3), (VOCAB, d))
    head = jnp.zeros((d, VOCAB)).at[:, (jnp.arange(7) + 1) % 7].set(10 * emb[:7].T)
    big["embed"]["tokens"], big["lm_head"]["w"] = emb, head
    return {**params, "large": big}
