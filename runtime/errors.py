"""User-facing errors of the runtime: printed as one paragraph, exit code 2, no traceback."""


class UserError(Exception):
    """A bad prompt, a missing or incompatible checkpoint, an unsupported option, ..."""
