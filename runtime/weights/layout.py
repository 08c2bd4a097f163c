"""Between canonical Llama tensors (HF names, [out, in]) and our parameter tree: import
(`to_params`, with checks) and export (`from_params`) read the same table (`slots`).

Our layout (compiler/nn/decoder.py, compiler/nn/attention.py):
  embed.tokens [V, D]; layers_<l>.attn_norm.scale [D]; attn.wq [D, H, E], wk/wv [D, K, E],
  wo [H, E, D], bq [H, E], bk/bv [K, E] (qkv_bias only); mlp_norm.scale [D];
  mlp.w_gate / w_up [D, F], w_down [F, D]; final_norm.scale [D]; lm_head.w [D, V] (untied only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compiler.ir import DecoderIR, RopeScalingIR
from tandem_dsl.from_weights import FROM_WEIGHTS, disagreements, shown
from tandem_dsl.pretrained import Architecture, head_dim_or_none


def ir_fields(arch: Architecture) -> dict:
    """DecoderIR keyword arguments (all but name) of the model a weight file holds."""
    v = arch.values
    out = dict(
        v, head_dim=v["head_dim"] or v["d_model"] // v["n_heads"], max_len=arch.context_length
    )
    scaling = arch.values["rope_scaling"]
    out["rope_scaling"] = None if scaling is None else RopeScalingIR(**scaling)
    return out


def spec_values(cfg: DecoderIR) -> dict:
    """Model `cfg`'s fields that a weight file states, as the spec writes them."""
    out = {f: getattr(cfg, f) for f in FROM_WEIGHTS}
    out["head_dim"] = head_dim_or_none(cfg.head_dim, cfg.d_model, cfg.n_heads)
    out["rope_scaling"] = cfg.rope_scaling and dataclasses.asdict(cfg.rope_scaling)
    return out


def check_architecture(cfg: DecoderIR, arch: Architecture, source: str) -> None:
    """ValueError listing every field where the spec (cfg) contradicts the weights (arch)."""
    stated = spec_values(cfg)
    bad = disagreements(stated, arch.values)
    if bad:
        diffs = "; ".join(
            f"{f}: spec says {shown(f, stated)}, weights have {shown(f, arch.values)}" for f in bad
        )
        raise ValueError(
            f"model '{cfg.name}' does not match the weights in {source}: {diffs}. "
            f"Set these values in the spec's model to what the weights have"
        )


@dataclass(frozen=True)
class Slot:
    """Where one canonical Llama tensor lives in our tree, and how its layout changes."""

    path: tuple[str, ...]  # keys in our param tree
    shape: tuple[int, ...]  # canonical [out, in] shape
    to_ours: Callable  # canonical array -> our layout
    to_canonical: Callable  # our layout -> canonical array


def slots(cfg: DecoderIR) -> dict[str, Slot]:
    """Canonical name -> its Slot: the one statement of the name mapping and the transposes,
    read by import (`to_params`) and export (`from_params`)."""
    h, k, e = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab

    def same(path, shape):
        return Slot(path, shape, lambda w: w, lambda w: w)

    def transposed(path, shape):
        return Slot(path, shape, lambda w: w.T, lambda w: w.T)

    def heads(path, n):  # q/k/v: [n * E, D] <-> [D, n, E]
        return Slot(
            path, (n * e, d), lambda w: w.T.reshape(d, n, e), lambda w: w.reshape(d, n * e).T
        )

    def out(path):  # o: [D, H * E] <-> [H, E, D]
        return Slot(
            path, (d, h * e), lambda w: w.T.reshape(h, e, d), lambda w: w.reshape(h * e, d).T
        )

    def bias(path, n):  # q/k/v bias: [n * E] <-> [n, E]
        return Slot(path, (n * e,), lambda b: b.reshape(n, e), lambda b: b.reshape(n * e))

    table = {
        "embed_tokens.weight": same(("embed", "tokens"), (v, d)),
        "norm.weight": same(("final_norm", "scale"), (d,)),
    }
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = transposed(("lm_head", "w"), (v, d))
    for i in range(cfg.n_layers):
        p, ours = f"layers.{i}.", f"layers_{i}"
        table |= {
            p + "input_layernorm.weight": same((ours, "attn_norm", "scale"), (d,)),
            p + "self_attn.q_proj.weight": heads((ours, "attn", "wq"), h),
            p + "self_attn.k_proj.weight": heads((ours, "attn", "wk"), k),
            p + "self_attn.v_proj.weight": heads((ours, "attn", "wv"), k),
            p + "self_attn.o_proj.weight": out((ours, "attn", "wo")),
            p + "post_attention_layernorm.weight": same((ours, "mlp_norm", "scale"), (d,)),
            p + "mlp.gate_proj.weight": transposed((ours, "mlp", "w_gate"), (f, d)),
            p + "mlp.up_proj.weight": transposed((ours, "mlp", "w_up"), (f, d)),
            p + "mlp.down_proj.weight": transposed((ours, "mlp", "w_down"), (d, f)),
        }
        if cfg.qkv_bias:
            table |= {
                p + "self_attn.q_proj.bias": bias((ours, "attn", "bq"), h),
                p + "self_attn.k_proj.bias": bias((ours, "attn", "bk"), k),
                p + "self_attn.v_proj.bias": bias((ours, "attn", "bv"), k),
            }
    return table


def expected_shapes(cfg: DecoderIR) -> dict[str, tuple[int, ...]]:
    """Canonical name -> [out, in] shape for a model of this shape."""
    return {name: slot.shape for name, slot in slots(cfg).items()}


def llama_problems(cfg: DecoderIR) -> list[str]:
    """What keeps model `cfg` from being a Llama decoder (the one family both formats hold)."""
    llama = {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope"}
    return [
        f"{key} is {getattr(cfg, key)} (Llama: {value})"
        for key, value in llama.items()
        if getattr(cfg, key) != value
    ]


def _place(params: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        params = params.setdefault(key, {})
    params[path[-1]] = value


def to_params(tensors, cfg: DecoderIR, source: str) -> dict:
    """(canonical name, [out, in] float32 array) pairs -> our param tree in cfg.dtype.

    Every expected tensor must be present with its shape; unknown tensors are an error
    (they would be silently dropped otherwise, e.g. biases). A tied model ignores an
    `lm_head.weight` stored beside the embeddings.
    """
    import jax
    import jax.numpy as jnp

    from compiler.nn.layers import dtype_of

    table = slots(cfg)
    dtype = dtype_of(cfg)
    params: dict = {}
    seen = set()
    for name, w in tensors:
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if name not in table:
            raise ValueError(
                f"{source}: tensor {name!r} has no place in model '{cfg.name}' (biases other "
                f"than q/k/v biases, and other extra weights, are not supported)"
            )
        if tuple(w.shape) != table[name].shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(w.shape)}, but model "
                f"'{cfg.name}' needs {table[name].shape}; the file disagrees with its own metadata"
            )
        _place(params, table[name].path, table[name].to_ours(w))
        seen.add(name)
    missing = sorted(set(table) - seen)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{source}: tensors missing: {', '.join(missing[:3])}{more}")
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)


def from_params(params: dict, cfg: DecoderIR):
    """Inverse of `to_params`: yields (canonical name, [out, in] numpy array in the model's
    dtype) for every tensor of model `cfg`, in canonical order."""
    for name, slot in slots(cfg).items():
        leaf = params
        for key in slot.path:
            leaf = leaf[key]
        yield name, np.ascontiguousarray(slot.to_canonical(np.asarray(leaf)))
