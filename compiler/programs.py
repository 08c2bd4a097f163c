"""The named programs of a spec, each a jittable function with abstract arguments.

`programs_for(prog)` lists what the spec's sections need: `init`; per training stage
`train_step:<stage>` and `eval_step:<stage>`; for decoding `prefill`, `large_block`,
`small_step`, `verify` and `generate`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import nn
from .artifacts import ProgramDef
from .ir import ProgramIR

KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def abstract_params(prog: ProgramIR):
    """Parameter shapes without allocating them."""
    return jax.eval_shape(lambda k: nn.init_params(prog, k), KEY)


def _i32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.int32)


def _cache(cfg, batch, max_len):
    return jax.eval_shape(lambda: nn.init_cache(cfg, batch, max_len))


def init_program(prog: ProgramIR) -> ProgramDef:
    return ProgramDef("init", lambda k: nn.init_params(prog, k), (KEY,), doc="random init")


def decode_pieces(prog: ProgramIR) -> list[ProgramDef]:
    """`large_block` (M_L over gamma+1 tokens) and `small_step` (one M_S token).

    Analytic FLOPs count attention over all max_len cache slots, as the compiled program
    computes them (masked)."""
    d = prog.decode
    params = abstract_params(prog)
    target = prog.model(d.target)
    batch, max_len = prog.batch, prog.max_len
    k = (d.adaptive.max_gamma if d.adaptive else d.gamma) + 1
    out = [
        ProgramDef(
            "large_block",
            lambda p, cache, tokens, start: nn.decoder_block(p, target, cache, tokens, start),
            (params[target.name], _cache(target, batch, max_len), _i32(batch, k), _i32(batch)),
            donate=(1,),
            doc=f"{target.name} over {k} tokens with its KV cache",
            analytic_flops=k * target.flops_per_token(max_len),
        )
    ]
    if d.draft is not None:
        draft = prog.model(d.draft)
        wiring = prog.wiring_of(d.draft)
        out.append(
            ProgramDef(
                "small_step",
                lambda p, cache, tokens, start: nn.small_block(
                    p, draft, wiring, cache, tokens, start
                ),
                (params[draft.name], _cache(draft, batch, max_len), _i32(batch, 1), _i32(batch)),
                donate=(1,),
                doc=f"one {draft.name} token",
                analytic_flops=draft.flops_per_token(max_len),
            )
        )
    return out


def programs_for(prog: ProgramIR) -> list[ProgramDef]:
    out = [init_program(prog)]
    if prog.decode is not None:
        out += decode_pieces(prog)
    return out
