"""Stop rules inside the jitted loop: a router that always says stop gives gamma = 1 rounds, one
that always says continue gives max_gamma; greedy output equals autoregressive M_L under every
rule (ragged batch, verify buckets on); the +2/-1 heuristic's budgets; the expected-gain
decision."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decode_fixtures import (
    copy_large_into_small,
    decode_ir,
    generator,
    noisy_copy_into_small,
    params_for,
    program,
    prompts,
    rows,
)

from compiler.decode.rules import (
    ConfidenceRule,
    ExpectedGainRule,
    FixedRule,
    HeuristicRule,
    RouterRule,
)
from compiler.ir import AdaptiveIR
from compiler.router.features import ROUTER, init_router, n_features

KEY = jax.random.key(0)
G = 5


def _router(bias: float, top_k=2, d_small=32, seed=0) -> dict:
    r = init_router(jax.random.key(seed), n_features(top_k, d_small), 8)
    r["b2"] = jnp.full((1,), bias)
    if bias != 0.0:  # a constant router: only the bias speaks
        r["w2"] = jnp.zeros_like(r["w2"])
    return r


def _run(prog, params, rule, lens=(3, 7, 1, 5), p_max=8, max_new=12, **kw):
    toks, lens = prompts(len(lens), list(lens), p_max)
    dec = decode_ir("adaptive", adaptive=AdaptiveIR(rule="fixed", max_gamma=G), max_new=max_new)
    return generator(prog, dec, stop_rule=rule, **kw)(params, toks, lens, KEY)


def _ar(prog, params, lens=(3, 7, 1, 5), p_max=8, max_new=12):
    toks, lens = prompts(len(lens), list(lens), p_max)
    return generator(prog, decode_ir("autoregressive", max_new=max_new))(params, toks, lens, KEY)


@pytest.mark.parametrize("bias,drafts", [(20.0, 1), (-20.0, G)])
def test_constant_router_gives_gamma_1_or_max_gamma(bias, drafts):
    prog = program("tandem")
    params = {**params_for(prog), ROUTER: _router(bias)}
    res = _run(prog, params, RouterRule("small", 2, 0.8))
    st = res.stats
    rounds = np.asarray(st.rounds)
    drafted = np.asarray(st.drafted_by_pos)
    np.testing.assert_array_equal(drafted[:, :drafts], np.repeat(rounds[:, None], drafts, 1))
    assert (drafted[:, drafts:] == 0).all()
    assert rows(res) == rows(_ar(prog, params))
    # the same rounds as fixed gamma
    fixed = _run(prog, params, FixedRule(drafts))
    np.testing.assert_array_equal(st.rounds, fixed.stats.rounds)
    np.testing.assert_array_equal(st.small_calls, fixed.stats.small_calls)


def test_greedy_equality_under_every_rule():
    prog = program("copy")  # an independent drafter: a noisy copy of M_L, ragged acceptance
    params = noisy_copy_into_small(params_for(prog, head_scale=3.0), 0.3)
    params[ROUTER] = _router(0.0, d_small=48)  # a random (untrained) router: varied decisions
    ar = rows(_ar(prog, params))
    eg = ExpectedGainRule("small", 2, small_cost=0.2, block_costs=(1.0, 1.0, 1.1, 1.2, 1.2, 1.5))
    rules = [FixedRule(G), ConfidenceRule(0.6), HeuristicRule(2, G),
             RouterRule("small", 2, 0.5), eg]  # fmt: skip
    lengths = set()
    for rule in rules:
        res = _run(prog, params, rule)
        assert rows(res) == ar, rule
        lengths.add(tuple(np.asarray(res.stats.drafted_by_pos).sum(0)))
    assert len(lengths) >= 3  # the rules really draft differently


@pytest.mark.slow
def test_verify_buckets_change_nothing_but_cost():
    prog = program("copy")
    params = noisy_copy_into_small(params_for(prog, head_scale=3.0), 0.3)
    params[ROUTER] = _router(0.0, d_small=48)
    a = _run(prog, params, RouterRule("small", 2, 0.5), buckets=())
    b = _run(prog, params, RouterRule("small", 2, 0.5))
    assert rows(a) == rows(b)
    np.testing.assert_array_equal(a.stats.drafted_by_pos, b.stats.drafted_by_pos)


def test_heuristic_budget_grows_by_2_and_shrinks_by_1():
    prog = program("copy")
    params = copy_large_into_small(params_for(prog))  # oracle drafts: always all accepted
    res = _run(prog, params, HeuristicRule(2, G), lens=(4,), p_max=4, max_new=20)
    # budgets 2, 4, 5, 5 (+1 token each): 3 + 5 + 6 + 6 = 20 tokens in 4 rounds
    assert int(res.stats.rounds[0]) == 4
    np.testing.assert_array_equal(res.stats.drafted_by_pos[0], [4, 4, 3, 3, 2])
    # random drafter: mostly rejected, the budget falls to 1 and stays
    params = params_for(prog)
    res = _run(prog, params, HeuristicRule(4, G), lens=(4,), p_max=4, max_new=20)
    d = np.asarray(res.stats.drafted_by_pos[0])
    r = int(res.stats.rounds[0])
    assert d[0] == r and d[3] <= 1 + int(np.asarray(res.stats.accepted_by_pos).sum())


def test_expected_gain_decision():
    costs = (1.0, 1.0, 1.1, 1.2, 1.3, 1.4)
    rule = ExpectedGainRule("small", 2, small_cost=0.1, block_costs=costs)
    one = jnp.ones((3,))
    a = jnp.asarray([0.99, 0.5, 0.01])
    cont, (p, e) = rule.decide(a, 1, one, one)
    assert cont.tolist() == [True, False, False]
    np.testing.assert_allclose(p, a)
    np.testing.assert_allclose(e, 1 + a)
    # expensive small steps: even a sure draft is not worth it
    pricey = ExpectedGainRule("small", 2, small_cost=5.0, block_costs=costs)
    assert not bool(pricey.decide(jnp.asarray([0.99]), 1, one[:1], one[:1])[0][0])
    # at max_gamma there is nothing left to gain
    assert not bool(rule.decide(jnp.asarray([0.99]), G, one[:1], one[:1])[0][0])
