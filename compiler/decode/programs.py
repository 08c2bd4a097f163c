"""Decode programs from the IR: `make_programs(prog, decode)` -> jitted generate, prefill,
large_block, small_step and verify, each a pure function of explicit pytrees.

    programs = make_programs(prog, prog.decode)
    result = programs.generate(params, prompt_tokens, prompt_lens, key)   # GenerateResult

`params` is the dict of `compiler.nn.init_params` ({model name: ..., projection name: ...}).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax

from compiler.decode import loops
from compiler.decode.drafting import small_step
from compiler.decode.rules import RULES, FixedRule
from compiler.decode.state import POLICIES, GenerateResult, LoopConfig
from compiler.decode.verify import verify
from compiler.errors import IRInvariantError
from compiler.ir import DecodeIR, ProgramIR, SamplingIR
from tandem_dsl import rules as decode_rules
from tandem_dsl.model import STOP_RULES


def _check_sampling(s: SamplingIR) -> None:
    if s.temperature < 0:
        raise ValueError(f"decode.sampling.temperature must be >= 0, got {s.temperature}")
    if not 0.0 < s.top_p <= 1.0:
        raise ValueError(f"decode.sampling.top_p must be in (0, 1], got {s.top_p}")
    if s.top_k < 0:
        raise ValueError(f"decode.sampling.top_k must be >= 0, got {s.top_k}")


def _stop_rule(decode: DecodeIR, stop_rule):
    if stop_rule is not None:
        return stop_rule
    rule = decode.adaptive.rule
    if "router" in STOP_RULES[rule]:
        raise ValueError(
            f"decode.adaptive.rule {rule!r} needs a trained router: pass stop_rule= (from "
            "compiler.decode.rules.RULES, with params['router'] from `tandemc run SPEC "
            "train-router`), or use a rule without a router"
        )
    return RULES[rule](decode, None)


def default_buckets(gamma: int) -> tuple[int, ...]:
    """Verify-block buckets (draft counts) for a variable draft length: 1, 2, 4, ... and gamma."""
    out, b = [], 1
    while b < gamma:
        out.append(b)
        b *= 2
    return (*out, gamma)


def loop_config(
    prog: ProgramIR,
    decode: DecodeIR | None = None,
    *,
    stop_rule: Callable | None = None,
    return_logits: bool = False,
    buckets: tuple[int, ...] | None = None,
) -> LoopConfig:
    """Validate a decode section against the program and build the static loop config.

    buckets: the draft counts the verify pass is compiled for when the draft length varies
    (prompt lookup: (0, gamma); adaptive: `default_buckets(max_gamma)`); () turns them off."""
    decode = decode or prog.decode
    if decode is None:
        raise ValueError(f"program {prog.name!r} has no decode section")
    if decode.policy not in POLICIES:
        raise ValueError(f"decode.policy {decode.policy!r}: expected one of {POLICIES}")
    if decode.max_new_tokens < 1:
        raise ValueError(f"decode.max_new_tokens must be >= 1, got {decode.max_new_tokens}")
    _check_sampling(decode.sampling)
    target = prog.model(decode.target)
    common = dict(
        target=target, sampling=decode.sampling, max_new=decode.max_new_tokens,
        eos_id=decode.eos_id, return_logits=return_logits,
    )  # fmt: skip
    if decode.policy == "autoregressive":
        return LoopConfig(policy="autoregressive", draft=None, wiring=None, gamma=1, **common)
    draft = prog.model(decode.draft) if decode.draft is not None else None
    wiring = prog.wiring_of(draft.name) if draft is not None else None
    tandem = wiring is not None and wiring.kind != "none"
    _hold(
        decode_rules.missing_draft(decode.policy, draft is not None or decode.draft_ngram > 0),
        decode_rules.ngram_policy(decode.policy, decode.draft_ngram > 0),
        decode_rules.lookup(decode.policy, draft is not None, decode.lookup),
        decode_rules.adaptive_section(decode.policy, decode.adaptive is not None),
    )
    if decode.lookup:  # lookup 0 turns hybrid drafting off, its refinements with it
        max_gamma = decode.adaptive.max_gamma if decode.adaptive is not None else None
        _hold(
            decode_rules.lookup_min(decode.lookup, decode.lookup_min),
            decode_rules.lookup_gamma(decode.lookup, decode.lookup_gamma, max_gamma),
        )
    if decode.gamma < 1 or decode.lookup < 0:
        raise IRInvariantError(f"decode gamma {decode.gamma} / lookup {decode.lookup}")
    if decode.draft_ngram > 0:
        bk = (0, decode.gamma) if buckets is None else _check_buckets(buckets, decode.gamma)
        return LoopConfig(policy="speed", draft=None, wiring=None, gamma=decode.gamma,
                          ngram=decode.draft_ngram, buckets=bk, **common)  # fmt: skip
    _hold(
        decode_rules.standalone_draft(decode.policy, True, tandem),
        decode_rules.draft_memory(draft.name, wiring.memory if tandem else None, target.name),
        decode_rules.same_vocab("draft", draft.name, draft.vocab, target.name, target.vocab),
        decode_rules.draft_vocab(decode.policy, True, decode.draft_vocab, draft.vocab),
    )
    common.update(draft_vocab=decode.draft_vocab, lookup=decode.lookup)
    if decode.policy == "standalone":
        return LoopConfig(policy="standalone", draft=draft, wiring=wiring, gamma=decode.gamma,
                          free_token=decode.free_token, **common)  # fmt: skip
    if decode.lookup:
        common.update(lookup_min=decode.lookup_min, lookup_gamma=decode.lookup_gamma)
    if decode.policy == "speed":
        g = decode.gamma
        if decode.lookup and decode.lookup_gamma not in (0, g):
            # one loop for both round lengths: the buffers hold the longer, the model drafts g
            # (a fixed stop rule), the verify pass is compiled for both
            both = tuple(sorted((g, decode.lookup_gamma)))
            bk = both if buckets is None else _check_buckets(buckets, both[-1])
            return LoopConfig(policy="speed", draft=draft, wiring=wiring, gamma=both[-1],
                              stop_rule=FixedRule(g), buckets=bk, **common)  # fmt: skip
        return LoopConfig(policy="speed", draft=draft, wiring=wiring, gamma=g, **common)
    g = decode.adaptive.max_gamma
    bk = default_buckets(g) if buckets is None else _check_buckets(buckets, g)
    return LoopConfig(policy="adaptive", draft=draft, wiring=wiring, gamma=g,
                      stop_rule=_stop_rule(decode, stop_rule), buckets=bk,
                      **common)  # fmt: skip


def _hold(*problems: str | None) -> None:
    """The decode rules (`tandem_dsl/rules.py`) on an IR built in Python: the spec checks
    report each at its field first, so a broken one here is a bug of the builder."""
    for problem in problems:
        if problem:
            raise IRInvariantError(problem)


def _check_buckets(buckets, gamma: int) -> tuple[int, ...]:
    bk = tuple(int(x) for x in buckets)
    if not bk:
        return ()
    if list(bk) != sorted(set(bk)) or bk[0] < 0 or bk[-1] != gamma:
        raise ValueError(
            f"verify buckets {bk} must be distinct ascending draft counts >= 0 ending at {gamma}"
        )
    return bk


class DecodePrograms(NamedTuple):
    """Jitted programs of one decode config. Caches are donated where they are threaded."""

    config: LoopConfig
    generate: Callable[..., GenerateResult]  # (params, prompt [B, P], lens [B], key)
    prefill: Callable  # (params, prompt, lens, key) -> LoopState
    large_block: Callable  # (params, large_cache, small_cache, tokens, start, count)
    small_step: Callable  # (params, small_cache, tokens, start) -> (logits, small_cache)
    verify: Callable  # (key, draft [B, G], q [B, G, V] | None, p [B, G+1, V], n_draft [B])


@functools.lru_cache(maxsize=64)
def programs_for(cfg: LoopConfig, compiler_options: tuple = ()) -> DecodePrograms:
    """One set of jitted programs per static config (cached: equal configs share compiles).

    compiler_options: XLA options as (name, value) pairs, e.g.
    (("xla_backend_optimization_level", 0),) compiles ~2x faster and runs slower (tests).
    """
    greedy = cfg.sampling.greedy
    jit = partial(jax.jit, compiler_options=dict(compiler_options) or None)
    return DecodePrograms(
        config=cfg,
        generate=jit(partial(loops.generate, cfg)),
        prefill=jit(partial(loops.prefill, cfg)),
        large_block=jit(partial(loops.large_block, cfg), donate_argnums=(1, 2)),
        small_step=jit(partial(small_step, cfg), donate_argnums=(1,)),
        verify=jit(partial(verify, greedy=greedy)),
    )


def make_programs(
    prog: ProgramIR,
    decode: DecodeIR | None = None,
    *,
    stop_rule: Callable | None = None,
    return_logits: bool = False,
    compiler_options: dict | None = None,
    buckets: tuple[int, ...] | None = None,
) -> DecodePrograms:
    cfg = loop_config(prog, decode, stop_rule=stop_rule, return_logits=return_logits,
                      buckets=buckets)  # fmt: skip
    return programs_for(cfg, tuple(sorted((compiler_options or {}).items())))


def make_generate(prog: ProgramIR, decode: DecodeIR | None = None, **kw):
    """fn(params, prompt_tokens [B, P], prompt_lens [B], key) -> GenerateResult (jitted)."""
    return make_programs(prog, decode, **kw).generate


def with_decode(prog: ProgramIR, **changes) -> DecodeIR:
    """prog.decode with fields replaced (e.g. policy="autoregressive") - handy for baselines."""
    return dataclasses.replace(prog.decode, **changes)
