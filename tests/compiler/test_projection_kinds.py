"""The projection kinds table: the spec's names and the compiler's entries agree, and every
entry's params have logical axes and map [B, T, d_in] to [B, T, d_out]."""

from __future__ import annotations

import jax
import pytest

from compiler.ir import ProjectionIR
from compiler.nn import logical_axes
from compiler.nn.projection import KINDS, init_projection, project
from tandem_dsl.model import PROJECTION_KINDS


def test_the_spec_and_the_compiler_name_the_same_kinds():
    assert set(KINDS) == set(PROJECTION_KINDS)


def test_a_leaf_name_means_one_thing_across_kinds():
    seen: dict[str, tuple] = {}
    for name, kind in KINDS.items():
        for leaf, axes in kind.axes.items():
            assert seen.setdefault(leaf, axes) == axes, f"{name}: {leaf} {axes} vs {seen[leaf]}"


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("bias", [False, True])
def test_each_kind_maps_and_has_axes_for_every_param(kind, bias):
    proj = ProjectionIR(name="p", kind=kind, d_in=12, d_out=8, bias=bias, hidden=4)
    params = init_projection(proj, (0, 2), jax.random.key(0))
    axes = logical_axes(params)  # raises for a leaf without axes or with the wrong rank
    assert set(params["layers_0"]) == set(axes["layers_0"])
    assert set(params["layers_0"]) <= set(KINDS[kind].axes)
    x = jax.random.normal(jax.random.key(1), (2, 3, 12))
    assert project(params, proj, 2, x).shape == (2, 3, 8)
