"""The compiler's error types: user errors (`InputError`) and broken IR invariants."""


class InputError(ValueError):
    """A request the compiler cannot satisfy because of its input: an impossible mesh, an
    unknown program, a backend this machine lacks. `tandemc` shows it as an error (exit 2);
    any other exception from the compiler is a bug and keeps its traceback."""


class IRInvariantError(AssertionError):
    """An IR that breaks an invariant the model code relies on: a bug in whoever built it (the
    spec checks report every such user error first, with its location)."""
