"""Suite-wide hygiene for one long pytest process.

Every compiled XLA:CPU program keeps a few memory mappings of its code alive (~3.4 each,
measured) until it is freed. The suite compiles thousands of programs, and one process may hold
at most `vm.max_map_count` mappings (65530 by default): past that, the next compile aborts or
segfaults inside XLA. So each test module drops the compiled programs it leaves behind.
"""

import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    yield
    jax.clear_caches()
    gc.collect()
