"""Pure-functional JAX model code: decoder, Tandem small model, projections.

Params are nested dicts with stable names (params["large"]["layers_3"]["attn"]["wq"]);
every function is a pure function of (params, config IR, inputs). KV caches are explicit
pytrees, passed in and returned.
"""

from compiler.nn.attention import cache_mask, causal_mask, tandem_mask
from compiler.nn.axes import logical_axes
from compiler.nn.decoder import (
    decoder_block,
    decoder_forward,
    init_cache,
    init_decoder,
    run_layers,
)
from compiler.nn.layers import cut_head
from compiler.nn.params import init_model, init_params, reduced_embedding
from compiler.nn.projection import init_projection, project
from compiler.nn.tandem import (
    init_small_cache,
    small_block,
    tandem_forward,
    tandem_forward_and_prediction,
    training_frontier,
    write_memory,
)

__all__ = [
    "reduced_embedding",
    "cache_mask",
    "causal_mask",
    "cut_head",
    "decoder_block",
    "decoder_forward",
    "init_cache",
    "init_decoder",
    "init_model",
    "init_params",
    "init_projection",
    "init_small_cache",
    "logical_axes",
    "project",
    "run_layers",
    "small_block",
    "tandem_forward",
    "tandem_forward_and_prediction",
    "tandem_mask",
    "training_frontier",
    "write_memory",
]
