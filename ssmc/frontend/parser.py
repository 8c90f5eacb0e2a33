"""lark grammar -> typed AST (`ast.File`), with every syntax problem as a SpecError."""
from __future__ import annotations

import functools
import os
import re
import stat
import threading

from lark import Lark, Token, Transformer, Tree, v_args
from lark.lark import PostLex
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ..errors import SpecError, Source, Span
from . import ast

# Expressions nested deeper than this are refused before any recursive walk, so no
# RecursionError can escape from the transformer or the passes.
MAX_DEPTH = 120

_READABLE = {
    "NAME": "a name", "NUMBER": "a number", "IMAG": "an imaginary number", "STRING": "a \"string\"",
    "_NL": "end of line", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
    "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'",
    "SEMICOLON": "';'", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'",
    "POW": "'**'", "COMPLEX": "'complex'", "FROZEN": "'frozen'", "QUOTE": "\"'\"", "$END": "end of file",
}


# The characters str.splitlines() breaks at that a spec does not (errors.LINE_BREAK);
# \f and \v are blanks.
_NOT_LINE_BREAKS = frozenset("\x1c\x1d\x1e\x85\u2028\u2029")

# The largest spec read (from a file, or given as text): far beyond any real spec, and
# small enough that reading and parsing it stays quick.
MAX_SOURCE_BYTES = 16 * 1024 * 1024
MAX_SOURCE_CHARS = MAX_SOURCE_BYTES

# Keyword terminals of the grammar, and those that begin a statement.
_STATEMENT_KEYWORDS = frozenset({"DIMS", "INPUT", "STATE", "PARAM", "DYNAMICS", "DISCRETIZE", "RECURRENCE",
                                 "SCAN", "OUTPUT"})
_KEYWORDS = _STATEMENT_KEYWORDS | {"SSM", "COMPLEX", "FROZEN"}

# A param's direction-sharing flags (section 12): names, not keywords, so that they stay
# usable as names everywhere else.
_SHARING_FLAGS = ("shared", "separate")


# Decision (1): where a line break does not end a statement.
_OPENERS = {"LPAR": "(", "LSQB": "["}
_CLOSERS = {"RPAR": "LPAR", "RSQB": "LSQB"}
_CLOSER_OF = {"LPAR": ")", "LSQB": "]"}
# A line ending with one of these continues on the next line.
_CONTINUES_AFTER = frozenset({"PLUS", "MINUS", "STAR", "SLASH", "POW", "COMMA", "EQUAL"})
_CONTINUED_BY = {"PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "POW": "'**'", "COMMA": "','",
                 "EQUAL": "'='"}
# A line whose first token is a binary operator continues the line before it (blank
# lines and comment lines in between are skipped, as everywhere).
_NEXT_STARTS_WITH_OPERATOR = re.compile(r"(?:[ \t\f\v]*(?:#[^\n]*)?\n)*[ \t\f\v]*[-+*/]")


class _Unclosed(Exception):
    """A '(' or '[' still open where a statement cannot go on: at a block's '}' or at the
    end of the file."""

    def __init__(self, opener: Token):
        self.opener = opener


class _Continuation(PostLex):
    """Drops the line breaks that do not end a statement (Decision (1)): inside '(' or
    '[', after a line ending with a binary operator, ',' or '=', and before a line that
    starts with a binary operator. (A trailing backslash is an ignored terminal of the
    grammar.) The state of the current parse (the open brackets, the last token) stays
    readable afterwards so that a syntax error can say that a bracket was never closed."""

    always_accept = ("_NL",)

    def __init__(self):
        self.local = threading.local()

    def process(self, stream):
        text = self.local.text
        opens: list = []
        self.local.opens = opens
        self.local.prev = self.local.joined = None
        for tok in stream:
            t = tok.type
            if t == "_NL":
                prev = self.local.prev
                if prev is not None and prev.type in _CONTINUES_AFTER and not opens:
                    self.local.joined = prev
                    continue
                if opens or _NEXT_STARTS_WITH_OPERATOR.match(text, tok.end_pos):
                    continue
            elif t in _OPENERS:
                opens.append(tok)
            elif t in _CLOSERS:
                if opens and opens[-1].type == _CLOSERS[t]:
                    opens.pop()
            elif t == "RBRACE" and opens:
                raise _Unclosed(opens[-1])
            self.local.prev = tok
            yield tok
        if opens:
            raise _Unclosed(opens[-1])


_POSTLEX = _Continuation()


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark.open_from_package("ssmc.grammar", "ssm.lark", parser="lalr", postlex=_POSTLEX,
                                  propagate_positions=True, maybe_placeholders=True)


_STATEMENT_START = re.compile(r"\s*(\}|(dims|input|state|param|dynamics|discretize|recurrence|scan|output|ssm)\b|"
                              r"[A-Za-z_][A-Za-z0-9_]*\s*'?\s*=)")


def _starts_statement(line_text: str) -> bool:
    """Whether a line reads like the start of a statement (or a block's end)."""
    return bool(_STATEMENT_START.match(line_text))


def _unclosed_error(opener: Token, source: Source) -> SpecError:
    ch = str(opener)
    return SpecError(f"'{ch}' opened at line {opener.line} is never closed",
                     Span(opener.line, opener.column, opener.line, opener.column + 1), source,
                     hint=f"close it with '{_CLOSER_OF[opener.type]}' (inside brackets a statement goes "
                          f"on over line breaks)")


def _span(meta_or_tok) -> Span:
    return Span(meta_or_tok.line, meta_or_tok.column,
                getattr(meta_or_tok, "end_line", None), getattr(meta_or_tok, "end_column", None))


def _expected(names) -> str:
    words = sorted({_READABLE.get(n, f"'{n.lower()}'" if n.isalpha() else n) for n in names})
    # Keyword terminals are named after their text by lark ("SSM", "DIMS", ...).
    return ", ".join(words)


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds `ast` nodes; never validates beyond the shape of the syntax."""

    def start(self, meta, children):
        blocks = tuple(c for c in children if isinstance(c, ast.Block))
        return ast.File(_span(meta) if not meta.empty else Span(1, 1), blocks)

    def block(self, meta, children):
        name, *rest = children
        desc = None
        if rest and isinstance(rest[0], Token) and rest[0].type == "STRING":
            desc = _unquote(rest[0])
            rest = rest[1:]
        stmts = tuple(c for c in rest if c is not None and not isinstance(c, Token))
        return ast.Block(_span(meta), str(name), desc, (), stmts, name_span=_span(name))

    def dims_stmt(self, meta, children):
        return _DimsStmt(_span(meta), tuple(children))

    def dim_def(self, meta, children):
        name, value = children
        return ast.DimDef(_span(name), str(name), value)

    def input_stmt(self, meta, children):
        return _InputsStmt(_span(meta), tuple(children))

    def input_decl(self, meta, children):
        (name, dims), flag = children
        return (name, dims, flag is not None)

    def tensor_decl(self, meta, children):
        name, dims = children
        return (name, dims)

    def dim_list(self, meta, children):
        return tuple(ast.DimRef(_span(t), str(t)) for t in children if t is not None)

    def state_item(self, meta, children):
        (name, dims), *flags = children
        return ast.StateDecl(_span(name), str(name), dims, "complex" in flags)

    def state_stmt(self, meta, children):
        # One state is its declaration; several (`state S[...], z[...]`) are flattened below.
        return children[0] if len(children) == 1 else _StatesStmt(_span(meta), tuple(children))

    def param_stmt(self, meta, children):
        name, dims, *rest = children
        init = rest[-1]
        flags = [str(f) for f in rest[:-1]]
        sharing = [f for f in flags if f in _SHARING_FLAGS]
        if len(sharing) > 1:
            raise SpecError(f"param '{name}' is marked both {sharing[0]} and {sharing[1]}"
                            if sharing[0] != sharing[1] else f"param '{name}' is marked {sharing[0]} twice",
                            _span(name), None, hint="give at most one of `shared` and `separate`")
        return ast.ParamDecl(_span(name), str(name), dims, "complex" in flags, "frozen" in flags, init,
                             sharing[0] if sharing else None)

    def param_flag(self, meta, children):
        (tok,) = children
        if tok.type == "NAME" and str(tok) not in _SHARING_FLAGS:
            raise SpecError(f"unknown flag '{tok}' on a param", _span(tok), None,
                            hint="a param's flags are complex, frozen, shared and separate, "
                                 "written after its dims: param A_log[H, N] shared = ...")
        return str(tok)

    def flag(self, meta, children):
        return str(children[0])

    def assign_stmt(self, meta, children):
        name, value, *rest = children
        structure = rest[0] if rest else None
        return ast.Assign(_span(name), str(name), value, structure)

    def structure(self, meta, children):
        name, *kwargs = children
        return ast.Structure(_span(name), str(name), tuple(k for k in kwargs if k is not None))

    def _transition(self, kind, meta, children):
        state, matrix, applied, *rest = children
        term = None
        if rest and rest[0] is not None:
            sign, term = rest
            if str(sign) == "-":
                term = ast.Neg(term.span, term)
        return ast.Transition(_span(meta), kind, str(state), _span(state), str(matrix), _span(matrix),
                              str(applied), _span(applied), term)

    def dynamics_stmt(self, meta, children):
        return self._transition("dynamics", meta, children)

    def recurrence_stmt(self, meta, children):
        return self._transition("recurrence", meta, children)

    def discretize_stmt(self, meta, children):
        rule, *kwargs = children
        return ast.Discretize(_span(meta), str(rule), _span(rule), tuple(kwargs))

    def scan_stmt(self, meta, children):
        order, *kwargs = children
        return ast.Scan(_span(meta), str(order), _span(order), tuple(k for k in kwargs if k is not None))

    def output_stmt(self, meta, children):
        name, value = children
        return ast.Output(_span(name), str(name), value)

    def kwarg(self, meta, children):
        name, value = children
        return ast.Kwarg(_span(name), str(name), value)

    # expressions
    def binop(self, meta, children):
        left, op, right = children
        return ast.BinOp(_span(meta), str(op), left, right)

    def neg(self, meta, children):
        return ast.Neg(_span(meta), children[1])

    def pos(self, meta, children):
        return children[1]

    def number(self, meta, children):
        text = str(children[0])
        value = _integer(text, meta) if text.isdigit() else _finite(float(text), text, meta)
        return ast.Num(_span(meta), value)

    def imag(self, meta, children):
        text = str(children[0])
        return ast.Imag(_span(meta), complex(0, _finite(float(text[:-1]), text, meta)))

    def name(self, meta, children):
        return ast.Name(_span(meta), str(children[0]))

    def call(self, meta, children):
        fn, *args = children
        args = [a for a in args if a is not None]
        pos = tuple(a for a in args if not isinstance(a, ast.Kwarg))
        kws = tuple(a for a in args if isinstance(a, ast.Kwarg))
        return ast.Call(_span(meta), str(fn), pos, kws, fn_span=_span(fn))


def _finite(value: float, text: str, meta) -> float:
    """A float literal, refusing one too large for a float (it would become inf)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise SpecError(f"the number {text} is too large (it overflows a 64-bit float)", _span(meta),
                        hint="write a number below 1.8e308")
    return value


def _integer(text: str, meta) -> int:
    """An integer literal, refusing one beyond the float range (4300+ digits do not even convert)."""
    try:
        value = int(text)
        float(value)
    except (ValueError, OverflowError):
        shown = text if len(text) <= 20 else f"{text[:8]}...({len(text)} digits)"
        raise SpecError(f"the number {shown} is too large (it overflows a 64-bit float)", _span(meta),
                        hint="write a number below 1.8e308") from None
    return value


def _unquote(tok: Token) -> str:
    body = str(tok)[1:-1]
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append({"n": "\n", "t": "\t"}.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def decode(data: bytes, filename: str) -> Source:
    """Bytes of a spec file -> Source, refusing binary and non-UTF-8 files."""
    if len(data) > MAX_SOURCE_BYTES:
        raise SpecError(f"the spec is too large ({len(data):,} bytes; the limit is {MAX_SOURCE_BYTES:,})",
                        None, Source("", filename), hint="a spec is a short text file")
    if b"\x00" in data:
        # Shown as decoded text with NUL as U+2400, positioned as the parser counts lines.
        text = data.decode("utf-8", errors="replace")
        at = Source(text, filename).position(text.index("\x00"))
        raise SpecError("this is a binary file, not a .ssm spec (it contains a NUL byte)",
                        at, Source(text.replace("\x00", "\u2400"), filename),
                        hint="a spec is UTF-8 text with `ssm NAME { ... }` blocks")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        good = data[: e.start].decode("utf-8")
        rest = data[e.start:].decode("utf-8", errors="replace")
        shown = Source(good + rest, filename)
        at = shown.position(len(good))
        raise SpecError(f"the file is not UTF-8 text (byte 0x{data[e.start]:02x} at line {at.line}, "
                        f"column {at.column})", at, shown, hint="save the spec as UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return Source(text, filename)


def read_source(path) -> Source:
    """The spec at `path`. Only a regular file is read (a FIFO, a device such as /dev/zero or a
    directory is refused without blocking on it), and at most MAX_SOURCE_BYTES of it."""
    try:
        name = os.fsdecode(path)
    except TypeError:
        raise SpecError(f"a spec path is a str or a path, not {type(path).__name__}") from None
    shown = name.replace("\x00", "\\0")
    if "\x00" in name:
        raise SpecError(f"the file name '{shown}' contains a NUL character", None, None,
                        hint="name the spec with printable characters")
    if not name:
        raise SpecError("no spec file named (the path is empty)")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then tells what it is.
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise SpecError(f"no such spec file: {shown}") from None
    except IsADirectoryError:
        raise SpecError(f"{shown} is a directory, not a .ssm spec file") from None
    except OSError as e:
        raise SpecError(f"cannot read {shown}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SpecError(f"{shown} is a directory, not a .ssm spec file")
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                    or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
            raise SpecError(f"{shown} is {kind}, not a regular .ssm spec file",
                            hint="give the path of a spec file")
        if st.st_size > MAX_SOURCE_BYTES:
            raise SpecError(f"{shown} is too large for a spec ({st.st_size:,} bytes; the limit is "
                            f"{MAX_SOURCE_BYTES:,})", hint="a spec is a short text file")
        chunks, size = [], 0
        # Read to the cap and one byte beyond, whatever the size said (the file may grow).
        while size <= MAX_SOURCE_BYTES:
            chunk = os.read(fd, MAX_SOURCE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise SpecError(f"cannot read {shown}: {e.strerror}") from None
    finally:
        os.close(fd)
    return decode(b"".join(chunks), name)


_EXPR_RULES = ("binop", "neg", "pos", "call", "number", "imag", "name")


def _check_depth(tree: Tree, source: Source) -> None:
    # Each entry carries the outermost expression above it, which the error points at.
    stack = [(tree, 1, None)]
    while stack:
        node, depth, top = stack.pop()
        if top is None and node.data in _EXPR_RULES:
            top = node
        if depth > MAX_DEPTH:
            meta = (top or node).meta
            raise SpecError(f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                            _span(meta), source, hint="split it into named values")
        for c in node.children:
            if isinstance(c, Tree):
                stack.append((c, depth + 1, top))


def parse(source: Source | str, filename: str = "<string>") -> ast.File:
    """Parse spec text into an `ast.File`; raises SpecError with the position."""
    if isinstance(source, str):
        source = Source(source, filename)
    if "\x00" in source.filename:
        raise SpecError("the file name contains a NUL character", None,
                        Source(source.text, source.filename.replace("\x00", "\\0")),
                        hint="name the spec with printable characters")
    if len(source.text) > MAX_SOURCE_CHARS:
        raise SpecError(f"the spec is too large ({len(source.text):,} characters; the limit is "
                        f"{MAX_SOURCE_CHARS:,})", None, source, hint="a spec is a short text file")
    if not source.text.strip() or all(
            not ln.strip() or ln.lstrip().startswith("#") for ln in source.lines()):
        raise SpecError("empty spec: the file holds no `ssm NAME { ... }` block", Span(1, 1), source,
                        hint="start with: ssm MyLayer { ... }")
    # lark counts lines at "\n" only; "\r\n" and a lone "\r" end a line too (errors.LINE_BREAK).
    # Reading both as "\n" keeps every line and column as they are in the file.
    text = source.text.replace("\r\n", "\n").replace("\r", "\n")
    text = text if text.endswith("\n") else text + "\n"
    lark = _lark()
    _POSTLEX.local.text = text
    try:
        tree = lark.parse(text)
    except _Unclosed as e:
        raise _unclosed_error(e.opener, source) from None
    except UnexpectedInput as e:
        raise _syntax_error(e, source) from None
    finally:
        _POSTLEX.local.text = None
    _check_depth(tree, source)
    try:
        result = _ToAst().transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, SpecError):
            raise e.orig_exc.with_source(source) from None
        raise
    return _regroup(result, source)


def _syntax_error(e: UnexpectedInput, source: Source) -> SpecError:
    line, col = e.line, e.column
    opens = getattr(_POSTLEX.local, "opens", None) or []
    if opens and (isinstance(e, UnexpectedEOF) or (line or 0) > opens[-1].line or (
            isinstance(e, UnexpectedToken) and e.token.type == "$END")):
        # A bracket left open swallowed the line breaks after it: the statement ran on
        # into the next one, which is where the parser stumbled.
        return _unclosed_error(opens[-1], source)
    joined = getattr(_POSTLEX.local, "joined", None)
    bad_line = e.token.line if isinstance(e, UnexpectedToken) and e.token.line is not None else line
    if joined is not None and bad_line > joined.line and _starts_statement(source.line_text(bad_line)) and all(
            not ln.strip() or ln.lstrip().startswith("#")
            for ln in (source.line_text(k) for k in range(joined.line + 1, bad_line))):
        # `input u[H],` then `state x[N]`: the trailing ',' continued the statement into the
        # next one.
        return SpecError(f"line {joined.line} ends with {_CONTINUED_BY[joined.type]}, so the statement "
                         f"goes on at line {bad_line}", Span(joined.line, joined.column, joined.line,
                                                              joined.end_column), source,
                         hint=f"finish the statement on line {joined.line} (a line ending with an operator, "
                              "',' or '=' continues on the next one)")
    if isinstance(e, UnexpectedCharacters):
        ch = source.line_text(line)[col - 1: col] if line > 0 else "?"
        if ch == "\\":
            return SpecError("unexpected character '\\': a backslash continues a statement only at the end of "
                             "a line", Span(line, col), source,
                             hint="put the line break right after the backslash (a comment may follow it)")
        if ch == '"':
            return SpecError("unterminated string: a description ends with '\"' on the same line",
                             Span(line, col), source, hint='close it: "one-line description"')
        if ch in _NOT_LINE_BREAKS:
            return SpecError(f"unexpected character {ch!r}: it does not end a line in a spec", Span(line, col),
                             source, hint="end lines with \\n (or \\r\\n)")
        return SpecError(f"unexpected character {ch!r}", Span(line, col), source,
                         hint="expected " + _expected(e.allowed or []) if e.allowed else None)
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        lines = source.lines() or [""]
        last = len(lines)
        return SpecError("unexpected end of file", Span(last, len(lines[-1]) + 1), source,
                         hint="a block ends with '}'")
    tok = e.token
    shown = "end of line" if tok.type == "_NL" else repr(str(tok))
    expected = _expected(e.expected) if getattr(e, "expected", None) else ""
    wanted = set(getattr(e, "expected", None) or ())
    history = getattr(e, "token_history", None) or []
    prev = history[-1] if history else None
    if tok.type in _KEYWORDS and "NAME" in wanted:
        # `ssm = 1`: a statement keyword where a name belongs.
        return SpecError(f"'{tok}' is a reserved word and cannot be used as a name", _span(tok), source,
                         hint=f"rename it, e.g. '{tok}_'")
    if prev is not None and prev.type in _KEYWORDS and tok.type == "EQUAL" and "NAME" in wanted:
        # `input = 1`: a keyword read as the start of a statement, then '='.
        return SpecError(f"'{prev}' is a reserved word and cannot name a value", _span(prev), source,
                         hint=f"rename it, e.g. '{prev}_'")
    if "SSM" in wanted and tok.type in _STATEMENT_KEYWORDS | {"NAME"}:
        # `dims H = 4` before any `ssm NAME {`.
        return SpecError(f"unexpected {shown} outside an `ssm` block", _span(tok), source,
                         hint="statements go inside a block: ssm NAME { ... }")
    if wanted & {"_NL", "SEMICOLON"} and prev is not None and prev.line == tok.line and (
            tok.type in _STATEMENT_KEYWORDS or (
            tok.type == "NAME" and source.line_text(tok.line)[tok.end_column - 1:].lstrip()[:1] in ("=", "'"))):
        # `scan causal output y = ...`: a second statement on the same line.
        return SpecError(f"unexpected {shown}: the statement before it has not ended",
                         Span(tok.line, tok.column, tok.line, tok.end_column), source,
                         hint=f"put {shown} on its own line, or write ';' before it")
    if tok.type == "_NL":
        line = tok.line
        col = len(source.line_text(line)) + 1
    end = col + max(1, len(str(tok))) if tok.type != "_NL" else col + 1
    return SpecError(f"unexpected {shown}", Span(line, col, line, end), source,
                     hint=f"expected {expected}" if expected else None)


def _regroup(file: ast.File, source: Source) -> ast.File:
    """Flatten multi-declaration statements and split the dims out of each block."""
    blocks = []
    for b in file.blocks:
        dims, body = [], []
        for s in b.body:
            if isinstance(s, _DimsStmt):
                dims.extend(s.children)
            elif isinstance(s, _InputsStmt):
                for name, dl, cplx in s.children:
                    body.append(ast.InputDecl(_span(name), str(name), dl, cplx))
            elif isinstance(s, _StatesStmt):
                body.extend(s.children)
            else:
                body.append(s)
        blocks.append(ast.Block(b.span, b.name, b.description, tuple(dims), tuple(body), name_span=b.name_span))
    return ast.File(file.span, tuple(blocks))


class _DimsStmt:
    """Holder for a `dims` statement until `_regroup` splits it out."""

    def __init__(self, span, children):
        self.span, self.children = span, children


class _InputsStmt:
    def __init__(self, span, children):
        self.span, self.children = span, children


class _StatesStmt:
    def __init__(self, span, children):
        self.span, self.children = span, children
