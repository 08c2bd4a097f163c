"""The single-process 8-device run (`worker.py`), shared by the scale-out test modules."""

from __future__ import annotations

import pytest
from launch import last_json, process_env, python, run_all


@pytest.fixture(scope="session")
def multi():
    """worker.py's results: one process, 8 virtual CPU devices."""
    (out,) = run_all([(python("worker.py"), process_env(8))], timeout=240)
    return last_json(out)
