"""The jitted train and generate programs, sharded over the spec's mesh (one code path: a 1x1
mesh is the single-device case). `compiler.sharding` says where each array lives; these build
the programs that keep them there."""

from __future__ import annotations

import functools

import jax

from .ir import ProgramIR, TrainStageIR
from .router.features import ROUTER
from .shapes import abstract_params
from .sharding import Sharder, ShardingError


def train_step_program(prog: ProgramIR, stage: TrainStageIR, sh: Sharder, state, *,
                       compiler_options: dict | None = None):  # fmt: skip
    """(jitted train_step, jitted eval_step, state shardings, token batch sharding).

    train_step(state, batch, rng) -> (state, metrics): explicit in/out shardings, the state
    donated; the batch (tokens [B, T+1], or with a teacher cache the stored batch, sharded by
    `stored_batch_shardings`) is split over `data`, parameters over `model` per the rules.
    eval_step(state, tokens [B, T+1]) runs every model.
    """
    from .train import make_eval_step, make_train_step

    state_sh = sh.train_state(prog, stage, state)
    batch_sh = sh.tokens((stage.batch, stage.seq_len + 1))
    train_batch_sh = batch_sh
    if stage.teacher_cache is not None:
        train_batch_sh = stored_batch_shardings(prog, stage, sh)
    rep = sh.replicated
    train_step = jax.jit(
        make_train_step(prog, stage),
        in_shardings=(state_sh, train_batch_sh, rep),
        out_shardings=(state_sh, rep),
        donate_argnums=0,
        compiler_options=compiler_options,
    )
    eval_step = jax.jit(
        make_eval_step(prog, stage),
        in_shardings=(state_sh, batch_sh),
        out_shardings=rep,
        compiler_options=compiler_options,
    )
    return train_step, eval_step, state_sh, batch_sh


def stored_batch_shardings(prog: ProgramIR, stage: TrainStageIR, sh: Sharder) -> dict:
    """Where a teacher-cached stage's batch lives (`compiler.train.teacher`): rows over data."""
    from .train.teacher import stored_batch_shapes

    return jax.tree.map(lambda x: sh.rows(x.shape), stored_batch_shapes(prog, stage))


def _constrain_caches(sh: Sharder, cfg, state):
    """The loop state with both KV caches pinned to their shardings (kv_heads over model)."""
    large = sh.constrain(state.large_cache, sh.cache(state.large_cache, f"{cfg.target.name}/cache"))
    small = state.small_cache
    if small is not None:
        small = sh.constrain(small, sh.cache(small, f"{cfg.draft.name}/cache"))
    return state.replace(large_cache=large, small_cache=small)


def sharded_prefill(cfg, sh: Sharder):
    """`compiler.decode.loops.prefill` with its caches sharded."""
    from .decode import loops

    def prefill(params, prompt, prompt_lens, key):
        return _constrain_caches(sh, cfg, loops.prefill(cfg, params, prompt, prompt_lens, key))

    return prefill


def sharded_generate(cfg, sh: Sharder):
    """`compiler.decode.loops.generate` (prefill, one while_loop, finalize) with the KV caches
    pinned to their shardings in the carry: still one program for the whole generation."""
    from .decode import loops

    def generate(params, prompt, prompt_lens, key):
        pin = functools.partial(_constrain_caches, sh, cfg)
        return loops.generate(cfg, params, prompt, prompt_lens, key, pin=pin)

    return generate


def generate_program(prog: ProgramIR, decode, sh: Sharder, *, batch: int | None = None,
                     compiler_options: dict | None = None, stop_rule=None,
                     packed: bool = False):  # fmt: skip
    """fn(params, prompt [B, P], prompt_lens [B], key) -> GenerateResult, jitted with the
    params sharded by the rules (the large model's weights over `model`), prompts over
    `data` where the batch divides, and the result replicated. A learned stop rule reads
    params["router"] (replicated). packed: the params are `compiler.decode.backend.prepare`d
    for the CPU kernel (one device: they are placed as they come). On the kernel, prompt
    lookup verifies without buckets: its gamma + 1 token pass costs about one step there,
    and the conditional that picks a bucket copied every layer's KV cache each round (~10%
    of the decode, docs/BENCHMARKS.md). Adaptive drafting keeps its buckets (up to
    max_gamma + 1 rows, where they still pay)."""
    cfg = _loop_config(prog, decode, sh, stop_rule, packed)
    options = tuple(sorted((compiler_options or {}).items()))
    return _decode_jit(sharded_generate, cfg, sh.mesh, sh.rules, batch or prog.batch, options,
                       prog, packed)  # fmt: skip


def prefill_program(prog: ProgramIR, decode, sh: Sharder, *, batch: int | None = None,
                    packed: bool = False):  # fmt: skip
    """fn(params, prompt, prompt_lens, key) -> the loop state after the prompt pass: the part
    of `generate_program`'s program (same arguments) before its first round, jitted alike, so
    that a benchmark can time the decode net of the prompt."""
    cfg = _loop_config(prog, decode, sh, None, packed)
    return _decode_jit(sharded_prefill, cfg, sh.mesh, sh.rules, batch or prog.batch, (), prog,
                       packed)  # fmt: skip


def _loop_config(prog: ProgramIR, decode, sh: Sharder, stop_rule, packed: bool):
    from .decode import loop_config

    if packed and sh.n_devices > 1:
        raise ShardingError(f"packed decode params run on one device, not {sh.n_devices}")
    plain = packed and (decode or prog.decode).draft_ngram > 0
    return loop_config(prog, decode, stop_rule=stop_rule, buckets=() if plain else None)


@functools.lru_cache(maxsize=16)  # a bench compiles a handful of decode configs: keep those
def _decode_jit(program, cfg, mesh, rules, batch, options, prog, packed):
    sh = Sharder(mesh, rules)
    if packed:  # one device: one sharding for the whole tree, whatever its leaves
        params_sh = sh.replicated
    else:
        params_sh = sh.params(abstract_params(prog))
    if cfg.stop_rule is not None and cfg.stop_rule.reads_router and not packed:
        params_sh[ROUTER] = sh.replicated
    rows = sh.tokens((batch,))
    return jax.jit(
        program(cfg, sh),
        in_shardings=(params_sh, sh.named(rows.spec), rows, sh.replicated),
        out_shardings=sh.replicated,
        compiler_options=dict(options) or None,
    )
