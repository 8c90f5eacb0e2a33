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

import re
import unicodedata
from dataclasses import dataclass

# A line of a spec ends at "\n", "\r\n" or a lone "\r", and nowhere else. The parser
# ends statements at exactly these (it reads "\r\n" and "\r" as "\n"), so the line and
# column of an error and the line shown under it agree. The other characters that
# str.splitlines() breaks at (\f, \v, \x1c-\x1e, \x85, \u2028, \u2029) are not line
# breaks in a spec: \f and \v are blanks, the rest are characters like any other.
LINE_BREAK = re.compile(r"\r\n|\r|\n")

# Unicode categories that must never reach a terminal raw: controls (ESC starts escape
# sequences), format characters (bidi overrides like U+202E reorder what is shown),
# line and paragraph separators, surrogates (they cannot even be encoded) and unassigned.
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES


def printable(text: str, keep: str = "") -> str:
    """`text` with every character a terminal would act on written as an escape (ESC as \\x1b,
    U+202E as \\u202e); characters in `keep` (say "\\n") pass as they are."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(c) if c not in keep and _unsafe(c) else c for c in text)


def _escape(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else (f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")


@dataclass(frozen=True)
class Span:
    """A place in a source file: 1-based line and column, end exclusive."""

    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __deepcopy__(self, memo) -> "Span":
        # Immutable: passes deep-copy graph metadata full of spans, sharing them is safe.
        return self

    def width(self) -> int:
        if self.end_line == self.line and self.end_column and self.end_column > self.column:
            return self.end_column - self.column
        return 1


@dataclass(frozen=True)
class Source:
    """The text of a spec and the name it is reported under."""

    text: str
    filename: str = "<string>"

    def __deepcopy__(self, memo) -> "Source":
        return self

    def lines(self) -> list[str]:
        """The lines of the text, as the parser counts them (see LINE_BREAK)."""
        lines = LINE_BREAK.split(self.text)
        # Like str.splitlines(): a break at the very end does not start another line.
        if len(lines) > 1 and lines[-1] == "":
            lines.pop()
        return lines if self.text else []

    def line_text(self, line: int) -> str:
        lines = self.lines()
        return lines[line - 1] if 1 <= line <= len(lines) else ""

    def position(self, offset: int) -> "Span":
        """The 1-based line and column of character `offset` of the text."""
        before = self.text[:offset]
        breaks = LINE_BREAK.findall(before)
        # A "\r" just before `offset` may be the first half of a "\r\n" that ends the line.
        last = max(before.rfind("\n"), before.rfind("\r"))
        return Span(len(breaks) + 1, offset - last)


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
        # Everything shown comes from the spec or its file name: escape what a terminal
        # would act on (escape sequences, bidi overrides), so the error prints as it reads.
        out = [f"error: {printable(self.message)}"]
        fname = printable(self.source.filename) if self.source else None
        if self.span is None:
            if self.source is not None:
                out.append(f" --> {fname}")
            if self.hint:
                out.append(f"  = help: {printable(self.hint)}")
            return "\n".join(out)
        where = fname if self.source else "<spec>"
        out.append(f" --> {where}:{self.span.line}:{self.span.column}")
        text = self.source.line_text(self.span.line) if self.source else ""
        gutter = " " * len(str(self.span.line))
        out.append(f"{gutter} |")
        # Tabs would shift the caret; show the line with tabs as single spaces. An escaped
        # character takes several columns, so the caret is placed on the escaped text.
        text = text.replace("\t", " ")
        col = self.span.column - 1
        width = min(self.span.width(), max(1, len(text) - col))
        shown = printable(text)
        lead = len(printable(text[:col])) if col <= len(text) else len(shown) + col - len(text)
        marked = len(printable(text[col: col + width])) if col < len(text) else 1
        out.append(f"{self.span.line} | {shown}")
        caret = " " * lead + "^" * max(1, marked)
        out.append(f"{gutter} | {caret}" + (f" {printable(self.hint)}" if self.hint else ""))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class ShapeError(SsmcError, ValueError):
    """A tensor given to a generated module has the wrong shape, dtype or device."""


class BackendUnavailable(SsmcError):
    """The requested backend cannot run here (missing package or device)."""
