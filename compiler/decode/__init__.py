"""Decoding: logit processing, lossless verification, whole-generation loops."""

from compiler.decode.sampling import probs, process_logits, sample, sample_probs
from compiler.decode.verify import VerifyResult, verify, verify_greedy, verify_sampled

__all__ = [
    "VerifyResult",
    "probs",
    "process_logits",
    "sample",
    "sample_probs",
    "verify",
    "verify_greedy",
    "verify_sampled",
]
