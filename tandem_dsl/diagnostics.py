"""Diagnostics: located, coded, hinted errors, collected per stage.

Format (one per error):

    spec.yaml:12:14: error[E-SCHEMA-TYPE]: 'eight' is not of type 'integer'
       12 |     n_layers: eight
          |               ^^^^^
      at models.large.n_layers
      hint: write an integer, or an expression such as "2 * ${models.small.n_layers}"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Origin:
    """Where a value came from: a file span, `cli:N`, `default` or `python:file:line`.

    Lines and columns are 1-based; end_col is exclusive and on the same line as col
    when the span is one line.
    """

    source: str  # file path, "cli:N", "default", or "python:FILE:LINE"
    line: int = 0
    col: int = 0
    end_line: int = 0
    end_col: int = 0
    text: str | None = None  # the source text of the line (overrides keep their own text)

    @property
    def is_file(self) -> bool:
        return self.line > 0 and not self.source.startswith(("cli:", "python:", "default"))

    def label(self) -> str:
        if self.source.startswith("cli:"):
            return f"{self.source}:{self.col}"
        if self.line > 0:
            return f"{self.source}:{self.line}:{self.col}"
        return self.source

    def shifted(self, start: int, end: int) -> Origin:
        """A sub-span `start:end` (0-based offsets) inside a one-line scalar starting here."""
        return Origin(
            self.source,
            self.line,
            self.col + start,
            self.line,
            self.col + max(end, start + 1),
            self.text,
        )


DEFAULT = Origin("default")


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    origin: Origin = DEFAULT
    path: str = ""
    hint: str | None = None
    severity: str = "error"

    def render(self) -> str:
        lines = [f"{self.origin.label()}: {self.severity}[{self.code}]: {self.message}"]
        source_line = _source_line(self.origin)
        if source_line is not None:
            gutter = str(self.origin.line)
            lines.append(f"  {gutter} | {source_line.rstrip()}")
            width = 1
            if self.origin.end_line == self.origin.line and self.origin.end_col > self.origin.col:
                width = self.origin.end_col - self.origin.col
            caret = " " * (self.origin.col - 1) + "^" * width
            lines.append(f"  {' ' * len(gutter)} | {caret}")
        if self.path:
            lines.append(f"  at {self.path}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class SpecError(Exception):
    """A user error in a spec: one or more diagnostics from one pipeline stage."""

    def __init__(self, stage: str, diagnostics: list[Diagnostic]):
        self.stage = stage
        self.diagnostics = sorted(diagnostics, key=_sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        body = "\n".join(d.render() for d in self.diagnostics)
        n = len(self.diagnostics)
        return f"{body}\n{n} error{'s' if n != 1 else ''} in stage '{self.stage}'"

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnostics]


@dataclass
class Collector:
    """Collects the diagnostics of one stage; raises them together at the end."""

    stage: str
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, code, message, origin=DEFAULT, path="", hint=None) -> None:
        self.diagnostics.append(Diagnostic(code, message, origin, path, hint))

    def add(self, diagnostic: Diagnostic) -> None:
        self.diagnostics.append(diagnostic)

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise SpecError(self.stage, self.diagnostics)


def _sort_key(d: Diagnostic):
    return (d.origin.source, d.origin.line, d.origin.col, d.code)


def _source_line(origin: Origin) -> str | None:
    if origin.text is not None:
        return origin.text
    if not origin.is_file:
        return None
    try:
        lines = Path(origin.source).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if 0 < origin.line <= len(lines):
        return lines[origin.line - 1]
    return None


def did_you_mean(word: str, choices) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
