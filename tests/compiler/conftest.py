"""Fixtures for the compiler tests; the IR builders live in tiny_ir.py."""

from __future__ import annotations

import pytest
from tiny_ir import TANDEM_VARIANTS, tandem_variant


@pytest.fixture(params=sorted(TANDEM_VARIANTS))
def tandem_pair(request):
    """(large, small, wiring) for every Tandem variant."""
    return tandem_variant(request.param)
