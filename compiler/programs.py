"""The named programs of a spec, each a jittable function with abstract arguments.

`programs_for(prog)` lists what the spec's sections need: `init`; per training stage
`train_step:<stage>` and `eval_step:<stage>`; for decoding `prefill`, `large_block`,
`small_step`, `verify` and `generate`.

Every program is sharded on the spec's mesh (`compiler.sharding`): its abstract arguments
carry NamedShardings (on abstract devices when the mesh is bigger than the machine) and its
state outputs are pinned to the same shardings. One device is a 1x1 mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import nn
from .artifacts import ProgramDef
from .ir import ProgramIR
from .shapes import KEY, abstract_params, train_state_shape
from .sharded_programs import sharded_generate, sharded_prefill
from .sharded_programs import train_step_program as sharded_train_step
from .sharding import Sharder


def _i32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.int32)


def _cache(cfg, batch, max_len, wiring=None):
    return jax.eval_shape(lambda: nn.init_small_cache(cfg, wiring, batch, max_len))


def _key(sh: Sharder):
    return jax.ShapeDtypeStruct(KEY.shape, KEY.dtype, sharding=sh.replicated)


def _tokens(sh: Sharder, *shape):
    return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sh.tokens(shape))


def init_program(prog: ProgramIR, sh: Sharder) -> ProgramDef:
    params_sh = sh.params(abstract_params(prog))
    return ProgramDef(
        "init",
        lambda k: sh.constrain(nn.init_params(prog, k), params_sh),
        (_key(sh),),
        doc="random init, created sharded",
    )


def decode_pieces(prog: ProgramIR, sh: Sharder) -> list[ProgramDef]:
    """`large_block` (M_L over gamma+1 tokens) and `small_step` (one M_S token).

    Analytic FLOPs count attention over all max_len cache slots, as the compiled program
    computes them (masked)."""
    d = prog.decode
    params = abstract_params(prog)
    params_sh = sh.params(params)
    target = prog.model(d.target)
    batch, max_len = prog.batch, prog.max_len
    k = d.draft_len + 1

    def sharded_cache(cfg, wiring=None):
        cache = _cache(cfg, batch, max_len, wiring)
        cache_sh = sh.cache(cache, f"{cfg.name}/cache")
        return sh.abstract_args(cache, cache_sh), cache_sh

    def pinned(fn, cache_sh):
        """fn's outputs with the cache (last) pinned to its input sharding."""

        def run(*a):
            *rest, cache = fn(*a)
            return (*rest, sh.constrain(cache, cache_sh))

        return run

    def block(p, cache, tokens, start):
        return nn.decoder_block(p, target, cache, tokens, start)

    large_cache, large_sh = sharded_cache(target)
    out = [
        ProgramDef(
            "large_block",
            pinned(block, large_sh),
            (
                sh.abstract_args(params[target.name], params_sh[target.name]),
                large_cache,
                _tokens(sh, batch, k),
                _tokens(sh, batch),
            ),
            donate=(1,),
            doc=f"{target.name} over {k} tokens with its KV cache",
            analytic_flops=k * target.flops_per_token(max_len),
        )
    ]
    if d.draft is not None:
        draft = prog.model(d.draft)
        wiring = prog.wiring_of(d.draft)
        small_cache, small_sh = sharded_cache(draft, wiring)

        # the draft's params; with memory prediction {draft: ..., its projection: ...}
        predicting = wiring is not None and wiring.predict is not None
        names = [draft.name, wiring.projection.name] if predicting else [draft.name]
        draft_args = {n: sh.abstract_args(params[n], params_sh[n]) for n in names}

        def step(p, cache, tokens, start):
            if not predicting:
                return nn.small_block(p, draft, wiring, cache, tokens, start)
            proj = p[wiring.projection.name]
            return nn.small_block(p[draft.name], draft, wiring, cache, tokens, start, proj)

        out.append(
            ProgramDef(
                "small_step",
                pinned(step, small_sh),
                (
                    draft_args if predicting else draft_args[draft.name],
                    small_cache,
                    _tokens(sh, batch, 1),
                    _tokens(sh, batch),
                ),
                donate=(1,),
                doc=f"one {draft.name} token",
                analytic_flops=draft.flops_per_token(max_len),
            )
        )
    return out


def train_programs(prog: ProgramIR, sh: Sharder) -> list[ProgramDef]:
    """`train_step:<stage>` and `eval_step:<stage>` for every training stage, with explicit
    in/out shardings (batch over `data`, parameters and optimizer state per the rules)."""
    params = abstract_params(prog)
    out = []
    for stage in prog.train:
        state = train_state_shape(prog, stage, params)
        train_step, eval_step, state_sh, batch_sh = sharded_train_step(prog, stage, sh, state)
        state = sh.abstract_args(state, state_sh)
        batch = jax.ShapeDtypeStruct((stage.batch, stage.seq_len + 1), jnp.int32, sharding=batch_sh)
        o = stage.objective
        doc = f"{o.kind} on {o.model}, {stage.batch}x{stage.seq_len} tokens"
        train_batch, train_doc = batch, doc
        if stage.teacher_cache is not None:
            train_batch, teacher = _teacher_cache_args(prog, stage, sh)
            out.append(teacher)
            train_doc += ", from a teacher cache"
        out.append(
            ProgramDef(f"train_step:{stage.name}", train_step, (state, train_batch, _key(sh)),
                       donate=(0,), doc=train_doc)
        )  # fmt: skip
        out.append(
            ProgramDef(f"eval_step:{stage.name}", eval_step, (state, batch), doc=doc)
        )  # fmt: skip
    return out


def _teacher_cache_args(prog: ProgramIR, stage, sh: Sharder):
    """(the abstract stored batch a cached train step reads, the program that writes one)."""
    from .sharded_programs import stored_batch_shardings
    from .train.teacher import cached_model, make_teacher_pass, stored_batch_shapes

    shapes, shardings = stored_batch_shapes(prog, stage), stored_batch_shardings(prog, stage, sh)
    stored = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
    model = cached_model(prog, stage)
    params = sh.abstract_args(abstract_params(prog)[model], sh.params(abstract_params(prog))[model])
    doc = f"{model}'s outputs for one {stage.batch}x{stage.seq_len} batch, stored once"
    teacher = ProgramDef(f"teacher_pass:{stage.name}", make_teacher_pass(prog, stage),
                         (params, stored["tokens"]), doc=doc)  # fmt: skip
    return stored, teacher


def generation_programs(prog: ProgramIR, sh: Sharder) -> list[ProgramDef]:
    """`prefill`, `generate` (one while_loop for the whole generation, KV caches sharded)
    and `verify`."""
    from .decode import loop_config
    from .decode.verify import verify

    d = prog.decode
    cfg = loop_config(prog, d)
    params = abstract_params(prog)
    batch, vocab = prog.batch, prog.model(d.target).vocab
    prompt_len = max(1, prog.max_len - cfg.max_new - cfg.gamma - 2)
    params = sh.abstract_args(params, sh.params(params))
    args = (params, _tokens(sh, batch, prompt_len), _tokens(sh, batch), _key(sh))
    what = f"{d.policy}, {cfg.max_new} new tokens after a {prompt_len}-token prompt buffer"
    out = [
        ProgramDef("prefill", sharded_prefill(cfg, sh), args, doc="prompt pass, caches"),
        ProgramDef("generate", sharded_generate(cfg, sh), args, doc=what),
    ]
    if d.policy != "autoregressive":
        g = cfg.gamma
        f32 = jnp.float32

        def rep(x):
            return None if x is None else sh.abstract_args(x, sh.replicated)

        q = None if d.sampling.greedy else jax.ShapeDtypeStruct((batch, g, vocab), f32)
        p = jax.ShapeDtypeStruct((batch, g + 1, vocab), f32)
        out.append(
            ProgramDef(
                "verify",
                lambda key, draft, q, p, n: verify(key, draft, q, p, n, greedy=d.sampling.greedy),
                tuple(rep(x) for x in (KEY, _i32(batch, g), q, p, _i32(batch))),
                doc="greedy" if d.sampling.greedy else "lossless rejection sampling",
            )
        )
    return out


def programs_for(prog: ProgramIR, sh: Sharder | None = None) -> list[ProgramDef]:
    """Every program of the spec on `sh` (default: the spec's mesh for `tandemc compile`)."""
    sh = sh or Sharder.for_compile(prog)
    out = [init_program(prog, sh), *train_programs(prog, sh)]
    if prog.decode is not None:
        out += decode_pieces(prog, sh) + generation_programs(prog, sh)
    return out
