"""Decoding: logit processing, lossless verification, and whole-generation programs.

from compiler.decode import make_generate
generate = make_generate(prog, prog.decode)        # one jitted lax.while_loop
result = generate(params, prompt_tokens, prompt_lens, jax.random.key(0))
result.tokens, result.lengths, result.stats.tau
"""

from compiler.decode.programs import (
    DecodePrograms,
    default_buckets,
    loop_config,
    make_generate,
    make_programs,
    programs_for,
    with_decode,
)
from compiler.decode.rules import (
    ConfidenceRule,
    DraftSignal,
    ExpectedGainRule,
    FixedRule,
    HeuristicRule,
    RouterRule,
)
from compiler.decode.sampling import probs, process_logits, sample, sample_probs
from compiler.decode.state import DecodeStats, GenerateResult, LoopConfig, LoopState
from compiler.decode.verify import VerifyResult, verify, verify_greedy, verify_sampled

__all__ = [
    "ConfidenceRule",
    "DecodePrograms",
    "DecodeStats",
    "DraftSignal",
    "ExpectedGainRule",
    "FixedRule",
    "HeuristicRule",
    "RouterRule",
    "GenerateResult",
    "LoopConfig",
    "LoopState",
    "VerifyResult",
    "default_buckets",
    "loop_config",
    "make_generate",
    "make_programs",
    "probs",
    "process_logits",
    "programs_for",
    "sample",
    "sample_probs",
    "verify",
    "verify_greedy",
    "verify_sampled",
    "with_decode",
]
