"""The training frontier and the Tandem mask equal the rule in docs/design.md, position by
position."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from compiler.nn import cache_mask, tandem_mask, training_frontier


@pytest.mark.parametrize("gamma", [1, 2, 3, 5])
def test_fixed_frontier_and_mask_equal_design_rule(gamma):
    t = 11
    frontier = np.asarray(training_frontier(2, t, gamma))
    mask = np.asarray(tandem_mask(training_frontier(2, t, gamma)))
    assert frontier.shape == (2, t) and mask.shape == (2, t, 2 * t)
    for b in range(2):
        for q in range(t):
            f = (q // gamma) * gamma  # f(t) = floor(t / γ) * γ
            assert frontier[b, q] == f
            for s in range(t):
                assert mask[b, q, s] == (s < f), (q, s)  # projected slot s
                assert mask[b, q, t + s] == (f <= s <= q), (q, s)  # own slot s


def test_gamma_two_mask_by_hand():
    mask = np.asarray(tandem_mask(training_frontier(1, 4, 2)))[0].astype(int)
    #              projected 0..3 | own 0..3
    expected = [
        [0, 0, 0, 0, 1, 0, 0, 0],  # t=0, f=0
        [0, 0, 0, 0, 1, 1, 0, 0],  # t=1, f=0
        [1, 1, 0, 0, 0, 0, 1, 0],  # t=2, f=2
        [1, 1, 0, 0, 0, 0, 1, 1],  # t=3, f=2
    ]
    np.testing.assert_array_equal(mask, expected)


def test_sampled_block_and_offset_frontier():
    b, t, lo, hi = 64, 40, 2, 6
    frontier = np.asarray(
        training_frontier(b, t, lo, hi, random_offset=True, rng=jax.random.PRNGKey(0))
    )
    seen_gammas, seen_offsets = set(), set()
    for row in frontier:
        # some γ in [lo, hi] and offset o in [0, γ) generate this row exactly
        fits = [
            (g, o)
            for g in range(lo, hi + 1)
            for o in range(g)
            if all(row[q] == max((q - o) // g * g + o, 0) for q in range(t))
        ]
        assert fits, row
        seen_gammas.add(fits[0][0])
        seen_offsets.add(fits[0][1])
        assert (row <= np.arange(t)).all() and (np.diff(row) >= 0).all()
    assert seen_gammas == set(range(lo, hi + 1))  # every length gets sampled
    assert len(seen_offsets) > 1
    again = training_frontier(b, t, lo, hi, random_offset=True, rng=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(again), frontier)


def test_frontier_errors():
    with pytest.raises(ValueError, match=">= 1"):
        training_frontier(1, 4, 0)
    with pytest.raises(ValueError, match="rng"):
        training_frontier(1, 4, 2, 4)
    with pytest.raises(ValueError, match="block_max"):
        training_frontier(1, 4, 3, 2)


def test_cache_mask():
    positions = np.array([[0, 1], [4, 5]])
    mask = np.asarray(cache_mask(positions, 6)).astype(int)
    np.testing.assert_array_equal(mask[0], [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask[1], [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
