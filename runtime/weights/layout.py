"""From canonical Llama tensors (HF names, [out, in]) to our parameter tree, with checks.

Our layout (compiler/nn/decoder.py, compiler/nn/attention.py):
  embed.tokens [V, D]; layers_<l>.attn_norm.scale [D]; attn.wq [D, H, E], wk/wv [D, K, E],
  wo [H, E, D]; mlp_norm.scale [D]; mlp.w_gate / w_up [D, F], w_down [F, D];
  final_norm.scale [D]; lm_head.w [D, V] (untied only).
"""

from __future__ import annotations

import math

import numpy as np

from compiler.ir import DecoderIR

# fields compared between the spec and the weights; floats with a relative tolerance
# (GGUF stores rms eps as float32: 1e-5 reads back as 9.9999997e-06)
EXACT = ("vocab", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")
FLOATS = ("norm_eps", "rope_theta")
KINDS = ("norm", "mlp", "pos", "tie_embeddings")


def check_architecture(cfg: DecoderIR, arch: dict, source: str) -> None:
    """ValueError listing every field where the spec (cfg) contradicts the weights (arch)."""
    bad = [f for f in EXACT + KINDS if getattr(cfg, f) != arch[f]]
    bad += [f for f in FLOATS if not math.isclose(getattr(cfg, f), arch[f], rel_tol=1e-4)]
    if bad:
        diffs = "; ".join(f"{f}: spec says {getattr(cfg, f)}, weights have {arch[f]}" for f in bad)
        raise ValueError(
            f"model '{cfg.name}' does not match the weights in {source}: {diffs}. "
            f"Set these values in the spec's model to what the weights have"
        )


def expected_shapes(cfg: DecoderIR) -> dict[str, tuple[int, ...]]:
    """Canonical name -> [out, in] shape for a model of this shape."""
    d, f, e = cfg.d_model, cfg.d_ff, cfg.head_dim
    q, kv = cfg.n_heads * e, cfg.n_kv_heads * e
    shapes = {"embed_tokens.weight": (cfg.vocab, d), "norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab, d)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
    return shapes


def _place(params: dict, cfg: DecoderIR, name: str, w: np.ndarray) -> None:
    """Store one canonical tensor at its place in `params`, transposed to our layout."""
    h, k, e, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model
    if name == "embed_tokens.weight":
        params["embed"] = {"tokens": w}
        return
    if name == "norm.weight":
        params["final_norm"] = {"scale": w}
        return
    if name == "lm_head.weight":
        params["lm_head"] = {"w": w.T}
        return
    parts = name.split(".")  # layers.<l>.<group>[.<leaf>].weight
    layer, group, leaf = parts[1], parts[2], parts[3]
    p = params.setdefault(f"layers_{layer}", {})
    if group == "input_layernorm":
        p["attn_norm"] = {"scale": w}
    elif group == "post_attention_layernorm":
        p["mlp_norm"] = {"scale": w}
    elif group == "self_attn":
        attn = p.setdefault("attn", {})
        if leaf == "o_proj":
            attn["wo"] = w.T.reshape(h, e, d)
        else:
            heads = h if leaf == "q_proj" else k
            attn["w" + leaf[0]] = w.T.reshape(d, heads, e)
    else:  # mlp
        p.setdefault("mlp", {})["w_" + leaf.removesuffix("_proj")] = w.T


def to_params(tensors, cfg: DecoderIR, source: str) -> dict:
    """(canonical name, [out, in] float32 array) pairs -> our param tree in cfg.dtype.

    Every expected tensor must be present with its shape; unknown tensors are an error
    (they would be silently dropped otherwise, e.g. biases). A tied model ignores an
    `lm_head.weight` stored beside the embeddings.
    """
    import jax
    import jax.numpy as jnp

    from compiler.nn.layers import dtype_of

    want = expected_shapes(cfg)
    dtype = dtype_of(cfg)
    params: dict = {}
    seen = set()
    for name, w in tensors:
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if name not in want:
            raise ValueError(
                f"{source}: tensor {name!r} has no place in a Llama decoder "
                f"(biases and other extra weights are not supported)"
            )
        if tuple(w.shape) != want[name]:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(w.shape)}, but model "
                f"'{cfg.name}' needs {want[name]}; the file disagrees with its own metadata"
            )
        _place(params, cfg, name, w)
        seen.add(name)
    missing = sorted(set(want) - seen)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{source}: tensors missing: {', '.join(missing[:3])}{more}")
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)
