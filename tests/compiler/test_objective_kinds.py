"""The objective table: one compiler entry per kind the spec names, each reading a teacher
exactly when the spec makes the kind name one."""

from compiler.train.objective import OBJECTIVES
from tandem_dsl.model import OBJECTIVE_KINDS


def test_the_compiler_has_one_entry_per_spec_kind():
    assert set(OBJECTIVES) == set(OBJECTIVE_KINDS)


def test_a_kind_reads_a_teacher_iff_the_spec_asks_for_one():
    for name, needs in OBJECTIVE_KINDS.items():
        assert OBJECTIVES[name].uses_teacher == ("teacher" in needs), name
