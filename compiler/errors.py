"""The compiler's user-facing error type."""


class InputError(ValueError):
    """A request the compiler cannot satisfy because of its input: an impossible mesh, an
    unknown program, a backend this machine lacks. `tandemc` shows it as an error (exit 2);
    any other exception from the compiler is a bug and keeps its traceback."""
