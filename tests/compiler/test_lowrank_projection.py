"""The low-rank projection kind: a rank-r linear map stored as two factors, and a spec that
asks for it without a rank is refused."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from compiler.ir import ProjectionIR
from compiler.nn.projection import init_projection, param_count, project
from tandem_dsl import api
from tandem_dsl.diagnostics import SpecError

ROOT = Path(__file__).resolve().parents[2]


def test_lowrank_is_a_rank_r_linear_map_with_fewer_params():
    proj = ProjectionIR(name="p", kind="lowrank", d_in=24, d_out=16, hidden=3, bias=True)
    params = init_projection(proj, (1,), jax.random.key(0))
    c = params["layers_1"]
    w = c["w_a"] @ c["w_b"]
    assert np.linalg.matrix_rank(np.asarray(w)) == 3
    x = jax.random.normal(jax.random.key(1), (2, 5, 24))
    np.testing.assert_allclose(project(params, proj, 1, x), x @ w + c["b"], rtol=1e-5, atol=1e-5)
    assert param_count(proj, 1) == 3 * (24 + 16) + 16 < 24 * 16


def test_lowrank_needs_a_rank():
    with pytest.raises(SpecError) as info:
        api.load_checked(ROOT / "specs/tandem-lowrank.yaml", ["projections.l2s.hidden=0"])
    assert [d.code for d in info.value.diagnostics] == ["E-CHECK-PROJECTION-HIDDEN"]
