"""What a training stage's loss can train, written once: the spec check (`tandem_dsl/checks.py`,
E-CHECK-TRAINABLE) reports an entry outside it at its place in `trainable`, and the compiler's
stage plan (`compiler/train/objective.py`) holds IR built in Python to the same rule."""

from __future__ import annotations

from collections.abc import Iterable


def learnable(student: str, tandem_reads: Iterable[tuple[str, str, str | None]]) -> set[str]:
    """The names a loss on `student` sends gradients to: the student and, when it is a Tandem
    model, the large model and the projection it reads. tandem_reads: (query, memory,
    projection) of every kind: tandem wiring. A distillation teacher is only a target."""
    out = {student}
    for query, memory, projection in tandem_reads:
        if query == student:
            out |= {memory} | ({projection} if projection else set())
    return out
