"""RoPE frequencies with a model's `rope_scaling`: the one statement of the llama3 rule.

The compiler's RoPE (`compiler/nn/layers.py`) rotates by `frequencies`; llama.cpp's GGUF files
hold the same rule as one divisor per frequency (the `rope_freqs.weight` tensor), which
`llama3_divisors` computes and `llama3_from_divisors` turns back into the spec's fields.
`scaling` is a spec `rope_scaling` as a mapping (rope_type, factor, low_freq_factor,
high_freq_factor, original_max_position_embeddings), or None.
"""

from __future__ import annotations

import math

# What llama.cpp's converter assumes for original_max_position_embeddings (every Llama 3.x).
LLAMA3_CONTEXT = 8192


def base_frequencies(head_dim: int, theta: float) -> list[float]:
    """theta^(-2i / head_dim) for i < head_dim / 2 (rotate-half RoPE)."""
    return [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]


def llama3_divisors(freqs: list[float], scaling: dict) -> list[float]:
    """What each frequency is divided by (transformers' `_compute_llama3_parameters`)."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < context / high:
            out.append(1.0)
        elif wavelen > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def frequencies(head_dim: int, theta: float, scaling: dict | None) -> list[float]:
    freqs = base_frequencies(head_dim, theta)
    if scaling is None:
        return freqs
    return [f / d for f, d in zip(freqs, llama3_divisors(freqs, scaling), strict=True)]


def same_frequencies(a: list[float], b: list[float]) -> bool:
    if len(a) != len(b):
        return False
    return all(math.isclose(x, y, rel_tol=1e-4) for x, y in zip(a, b, strict=True))


def llama3_from_divisors(divisors: list[float], head_dim: int, theta: float) -> dict | None:
    """The llama3 `rope_scaling` whose divisors are `divisors`, or None when no llama3 scaling
    gives them. Only the band edges matter (original_max_position_embeddings / low and / high
    _freq_factor), so low_freq_factor is taken as Llama 3.x's 1 and the edges are fitted to the
    smoothly interpolated frequencies between the bands (with high_freq_factor 4 as well when
    fewer than two lie there)."""
    freqs = base_frequencies(head_dim, theta)
    factor = max(divisors, default=1.0)
    if factor <= 1.0 or len(divisors) != len(freqs):
        return None
    # smooth = (context * f / 2pi - low) / (high - low) for each frequency f between the bands
    between = [
        (f / (2 * math.pi), (1 / d - 1 / factor) / (1 - 1 / factor))
        for f, d in zip(freqs, divisors, strict=True)
        if 1.0 + 1e-4 < d < factor * (1 - 1e-4)  # not 1 or factor up to float32 rounding
    ]
    context, high = LLAMA3_CONTEXT, 4.0
    if len(between) >= 2 and between[0][1] != between[-1][1]:
        (u0, s0), (u1, s1) = between[0], between[-1]
        # with low = 1: smooth * (high - 1) = context * u - 1, two equations in context, high
        context = (s1 - s0) / (s1 * u0 - s0 * u1)
        high = 1 + (context * u0 - 1) / s0 if s0 else 1 + (context * u1 - 1) / s1
    elif between:
        (u, smooth) = between[0]
        context = (1 + smooth * (high - 1)) / u
    if not (context > 0 and high > 1):
        return None
    scaling = {
        "rope_type": "llama3",
        "factor": _round(factor),
        "low_freq_factor": 1.0,
        "high_freq_factor": _round(high),
        "original_max_position_embeddings": round(context),
    }
    if not same_frequencies(llama3_divisors(freqs, scaling), divisors):
        return None
    return scaling


def _round(x: float) -> float:
    """Six significant digits: the file holds float32 divisors."""
    return float(f"{x:.6g}")
