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


def train_programs(prog: ProgramIR) -> list[ProgramDef]:
    """`train_step:<stage>` and `eval_step:<stage>` for every training stage."""
    from .train import init_train_state, make_eval_step, make_train_step

    params = abstract_params(prog)
    out = []
    for stage in prog.train:
        state = jax.eval_shape(lambda p, s=stage: init_train_state(prog, s, p), params)
        batch = _i32(stage.batch, stage.seq_len + 1)
        o = stage.objective
        doc = f"{o.kind} on {o.model}, {stage.batch}x{stage.seq_len} tokens"
        out.append(
            ProgramDef(f"train_step:{stage.name}", make_train_step(prog, stage),
                       (state, batch, KEY), donate=(0,), doc=doc)
        )  # fmt: skip
        out.append(
            ProgramDef(f"eval_step:{stage.name}", make_eval_step(prog, stage), (state, batch),
                       doc=doc)
        )  # fmt: skip
    return out


def generation_programs(prog: ProgramIR) -> list[ProgramDef]:
    """`prefill`, `generate` (one while_loop for the whole generation) and `verify`."""
    from .decode import loop_config
    from .decode.loops import generate, prefill
    from .decode.verify import verify

    d = prog.decode
    if d.draft_ngram:
        return []  # prompt-lookup drafting has no compiled loop yet
    cfg = loop_config(prog, d)
    params = abstract_params(prog)
    batch, vocab = prog.batch, prog.model(d.target).vocab
    prompt_len = max(1, prog.max_len - cfg.max_new - cfg.gamma - 2)
    args = (params, _i32(batch, prompt_len), _i32(batch), KEY)
    what = f"{d.policy}, {cfg.max_new} new tokens after a {prompt_len}-token prompt buffer"
    out = [
        ProgramDef("prefill", lambda *a: prefill(cfg, *a), args, doc="prompt pass, caches"),
        ProgramDef("generate", lambda *a: generate(cfg, *a), args, doc=what),
    ]
    if d.policy != "autoregressive":
        g = cfg.gamma
        f32 = jnp.float32
        q = None if d.sampling.greedy else jax.ShapeDtypeStruct((batch, g, vocab), f32)
        p = jax.ShapeDtypeStruct((batch, g + 1, vocab), f32)
        out.append(
            ProgramDef(
                "verify",
                lambda key, draft, q, p, n: verify(key, draft, q, p, n, greedy=d.sampling.greedy),
                (KEY, _i32(batch, g), q, p, _i32(batch)),
                doc="greedy" if d.sampling.greedy else "lossless rejection sampling",
            )
        )
    return out


def programs_for(prog: ProgramIR) -> list[ProgramDef]:
    out = [init_program(prog), *train_programs(prog)]
    if prog.decode is not None:
        out += decode_pieces(prog) + generation_programs(prog)
    return out
