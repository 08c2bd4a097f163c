"""User-facing errors of the runtime: printed as one paragraph, exit code 2, no traceback."""

import contextlib


class UserError(Exception):
    """A bad prompt, a missing or incompatible checkpoint, an unsupported option, ...

    field: the spec path (("data", "paths", 0)) of the value that caused it, when one did;
    `runtime.run.located` turns such an error into a diagnostic at that value's file, line
    and column. hint: what to do about it."""

    def __init__(self, message: str, *, field: tuple | None = None, hint: str | None = None):
        super().__init__(message)
        self.field, self.hint = field, hint


@contextlib.contextmanager
def at_field(field: tuple, values: bool = False):
    """A UserError that names no spec value (and with `values`, a ValueError) raised inside
    is about `field`: it is raised again located there."""
    try:
        yield
    except UserError as e:
        if e.field is not None:
            raise
        raise type(e)(str(e), field=field, hint=e.hint) from None
    except ValueError as e:
        if not values:
            raise
        raise UserError(str(e), field=field) from None


def optional(module: str, extra: str = "import"):
    """Imports an optional dependency, or a UserError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise UserError(
            f"this needs the `{top}` package, which is not installed: "
            f"pip install 'tandem-dsl[{extra}]' (or pip install -e '.[{extra}]' in a checkout)"
        ) from None
