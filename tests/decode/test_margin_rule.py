"""The margin stop rule: it stops where the top two draft probabilities are close, and greedy
adaptive decoding with it equals autoregressive decoding while draft lengths vary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from decode_fixtures import (
    decode_ir,
    generator,
    noisy_copy_into_small,
    params_for,
    program,
    prompts,
    rows,
)

from compiler.decode.rules import RULES, DraftSignal
from compiler.ir import AdaptiveIR, DecodeIR

KEY = jax.random.key(0)


def test_margin_stops_where_the_top_two_are_close():
    adaptive = AdaptiveIR(rule="margin", threshold=0.2)
    rule = RULES["margin"](
        DecodeIR(policy="adaptive", target="l", draft="s", adaptive=adaptive), None
    )
    probs = jnp.asarray([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25], [0.15, 0.05, 0.8]])
    signal = DraftSignal(jnp.log(probs), probs, jnp.argmax(probs, -1), jnp.int32(1))
    assert rule(signal, {}).tolist() == [True, False, True]


def test_greedy_adaptive_with_margin_equals_autoregressive():
    prog = program("copy")
    params = noisy_copy_into_small(params_for(prog, head_scale=4.0), noise=0.05)
    toks, lens = prompts(4, [3, 7, 1, 5], 8, 0)
    adaptive = AdaptiveIR(rule="margin", threshold=0.3, max_gamma=6)
    ad = generator(prog, decode_ir("adaptive", gamma=3, adaptive=adaptive, max_new=12))
    ad = ad(params, toks, lens, KEY)
    ar = generator(prog, decode_ir("autoregressive", max_new=12))(params, toks, lens, KEY)
    assert rows(ad) == rows(ar)
    drafted, rounds = np.asarray(ad.stats.drafted_by_pos), np.asarray(ad.stats.rounds)
    assert (drafted[:, 0] == rounds).all()  # every round drafts at least one token
    assert 0 < drafted[:, 1:].sum() < (rounds[:, None] * 5).sum()  # and the length varies
