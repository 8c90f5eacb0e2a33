"""Errors a user can meet, rendered against the spec's source.

Every problem in a spec becomes a :class:`SpecError` that knows the file, the line
and the column, and renders rustc-style::

    error: unknown name 'dtt'
     --> mamba.ssm:9:17
      |
    9 |   dt = softplus(dtt)
      |                 ^^^ did you mean 'dt'?
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A place in a source file: 1-based line and column, end exclusive."""

    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def width(self) -> int:
        if self.end_line == self.line and self.end_column and self.end_column > self.column:
            return self.end_column - self.column
        return 1


@dataclass(frozen=True)
class Source:
    """The text of a spec and the name it is reported under."""

    text: str
    filename: str = "<string>"

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 1 <= line <= len(lines) else ""


class SsmcError(Exception):
    """Base class of every error ssmc raises on purpose."""


class SpecError(SsmcError):
    """A problem in a `.ssm` spec, pointing at the place in the file."""

    def __init__(self, message: str, span: Span | None = None, source: Source | None = None,
                 hint: str | None = None):
        self.message = message
        self.span = span
        self.source = source
        self.hint = hint
        super().__init__(self.render())

    @property
    def filename(self) -> str | None:
        return self.source.filename if self.source else None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def with_source(self, source: Source) -> "SpecError":
        """The same error, attached to ``source`` if it had none."""
        if self.source is not None:
            return self
        return SpecError(self.message, self.span, source, self.hint)

    def render(self) -> str:
        out = [f"error: {self.message}"]
        if self.span is None:
            if self.source is not None:
                out.append(f" --> {self.source.filename}")
            if self.hint:
                out.append(f"  = help: {self.hint}")
            return "\n".join(out)
        where = self.source.filename if self.source else "<spec>"
        out.append(f" --> {where}:{self.span.line}:{self.span.column}")
        text = self.source.line_text(self.span.line) if self.source else ""
        gutter = " " * len(str(self.span.line))
        out.append(f"{gutter} |")
        # Tabs would shift the caret; show the line with tabs as single spaces.
        shown = text.replace("\t", " ")
        out.append(f"{self.span.line} | {shown}")
        width = min(self.span.width(), max(1, len(shown) - self.span.column + 1))
        caret = " " * (self.span.column - 1) + "^" * width
        out.append(f"{gutter} | {caret}" + (f" {self.hint}" if self.hint else ""))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class ShapeError(SsmcError, ValueError):
    """A tensor given to a generated module has the wrong shape, dtype or device."""


class BackendUnavailable(SsmcError):
    """The requested backend cannot run here (missing package or device)."""
