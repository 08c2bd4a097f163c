"""Logical axis names of every param and cache array, for sharding rules (docs/architecture.md).

Names come from tandem_dsl's vocabulary: batch, length, embed, heads, kv_heads, head_dim,
mlp, vocab; None = never sharded. A projection's input side (the large model's width) is
None, so one mesh axis is never asked to shard two dimensions of the same array.
"""

from __future__ import annotations

import jax

from compiler.nn.projection import leaf_axes

# leaf name -> axes, keyed by (parent, leaf) first, then leaf alone
_AXES: dict[tuple[str, ...], tuple[str | None, ...]] = {
    ("embed", "tokens"): ("vocab", "embed"),
    ("embed", "positions"): (None, "embed"),
    ("fuse", "gain"): ("embed",),
    ("attn", "wq"): ("embed", "heads", "head_dim"),
    ("attn", "wk"): ("embed", "kv_heads", "head_dim"),
    ("attn", "wv"): ("embed", "kv_heads", "head_dim"),
    ("attn", "wo"): ("heads", "head_dim", "embed"),
    ("attn", "bq"): ("heads", "head_dim"),
    ("attn", "bk"): ("kv_heads", "head_dim"),
    ("attn", "bv"): ("kv_heads", "head_dim"),
    ("mlp", "w_gate"): ("embed", "mlp"),
    ("mlp", "w_up"): ("embed", "mlp"),
    ("mlp", "w_down"): ("mlp", "embed"),
    ("lm_head", "w"): ("embed", "vocab"),
    ("scale",): ("embed",),
    ("bias",): ("embed",),
    # projections: each kind's leaves (compiler/nn/projection.py)
    **{(leaf,): axes for leaf, axes in leaf_axes().items()},
    # caches
    ("k",): ("batch", "length", "kv_heads", "head_dim"),
    ("v",): ("batch", "length", "kv_heads", "head_dim"),
    ("fuse",): ("batch", "embed"),  # a fused M_S's feature input (compiler/nn/tandem.py)
}


def _names(path) -> list[str]:
    out = []
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "idx", None))
        out.append(str(key))
    return out


def logical_axes(tree):
    """Same structure as `tree` (params from init_params/init_decoder, or a cache), each
    leaf replaced by a tuple of logical axis names, one per dimension."""

    def axes_of(path, leaf):
        names = _names(path)
        for key in (tuple(names[-2:]), tuple(names[-1:])):
            if key in _AXES:
                axes = _AXES[key]
                if len(axes) != leaf.ndim:
                    raise ValueError(f"{'/'.join(names)}: {leaf.ndim} dims, axes {axes}")
                return axes
        raise ValueError(f"no logical axes for param {'/'.join(names)}")

    return jax.tree_util.tree_map_with_path(axes_of, tree)
