"""Regressions of the front end: line breaks, file reading, terminal escapes, deep specs and
compile time (issue 8, "Every valid spec works")."""
from __future__ import annotations

import os
import subprocess
import sys
import unicodedata

import pytest
from click.testing import CliRunner

import ssmc
from ssmc.cli import main

BASE = """\
ssm T {
  dims H = 4, N = 8
  input u[H]
  state x[H, N]
  param A_log[H, N] = log(1 + arange(N))
  param B[H, N] = normal(0, 1)
  param C[H, N] = normal(0, 1)
  param D[H] = ones
  param log_dt[H] = log_uniform(0.001, 0.1)
  A = -exp(A_log) : diagonal
  dynamics x' = A x + B * u
  discretize zoh, step = exp(log_dt)
  scan causal
  output y = sum(C * x, N) + D * u
}
"""
LINE_14 = "  output y = sum(C * x, N) + DD * u"
BAD = BASE.replace("  output y = sum(C * x, N) + D * u", LINE_14)


def numpy_load(text):
    return ssmc.loads(text, backend="numpy", filename="t.ssm")


def spec_error(text) -> ssmc.SpecError:
    with pytest.raises(ssmc.SpecError) as info:
        numpy_load(text)
    return info.value


def shown_line_and_caret(e: ssmc.SpecError, line: int) -> tuple[str, str]:
    rows = str(e).split("\n")
    prefix = f"{line} | "
    (i,) = [i for i, r in enumerate(rows) if r.startswith(prefix)]
    gutter = " " * len(str(line)) + " | "
    assert rows[i + 1].startswith(gutter)
    return rows[i][len(prefix):], rows[i + 1][len(gutter):]


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# --- 1. line breaks: the lexer and the shown line agree -------------------------------------

@pytest.mark.parametrize("brk", ["\r", "\r\n"], ids=["cr", "crlf"])
def test_line_breaks_position_and_shown_line(brk):
    e = spec_error(BAD.replace("\n", brk))
    assert (e.line, e.column) == (14, 30)
    text, caret = shown_line_and_caret(e, 14)
    assert text == LINE_14
    assert caret.index("^") == 29 and caret.split()[0] == "^^"


def test_lone_cr_ends_a_statement():
    # A lone \r ends a line, so two statements on "lines" split by it both count.
    assert hasattr(numpy_load(BASE.replace("\n", "\r")), "T")


# Characters str.splitlines() breaks at that a spec does not: they sit in a comment (or,
# for the blanks \f and \v, at the end of a statement) above the error.
NOT_BREAKS = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("ch", NOT_BREAKS, ids=[f"U+{ord(c):04X}" for c in NOT_BREAKS])
def test_other_splitlines_breaks_do_not_shift_lines(ch):
    text = BAD.replace("  input u[H]\n", f"  input u[H]   # a{ch}b\n")
    if ch in "\f\v":
        text = text.replace("  param D[H] = ones\n", f"  param D[H] = ones {ch}\n")
    e = spec_error(text)
    assert (e.line, e.column) == (14, 30)
    shown, caret = shown_line_and_caret(e, 14)
    assert shown == LINE_14
    assert caret.index("^") == 29
    # The comment's line, shown in an error, is one line with the character escaped.
    src = e.source
    assert src.line_text(3).startswith("  input u[H]") and ch in src.line_text(3)


@pytest.mark.parametrize("ch", ["\x1c", "\x85", "\u2028", "\u2029"], ids=["FS", "NEL", "LS", "PS"])
def test_other_breaks_outside_comments_are_located_errors(ch):
    e = spec_error(BASE.replace("  input u[H]\n", f"  input u[H] {ch} state_ = 1\n"))
    assert (e.line, e.column) == (3, 14)
    assert "does not end a line" in e.message
    shown, caret = shown_line_and_caret(e, 3)
    assert ch not in shown and "\\x" in shown or "\\u" in shown
    assert caret.index("^") == 13


def test_blank_form_feed_and_vertical_tab_compile():
    assert hasattr(numpy_load(BASE.replace("  scan causal", "  scan\f causal\v")), "T")


@pytest.mark.parametrize("data, line, column", [
    (b"ssm T {\r  dims H\x00 = 4\r}\r", 2, 9),
    (b"ssm T {\r\n  dims H = 4 \xff\r\n}\r\n", 2, 14),
    (b"ssm T {\r  dims H = 4 \xff\r}\r", 2, 14),
    ("ssm T {\n  \u00e9 \xff".encode("utf-8", "surrogateescape")[:-2] + b"\xff\n", 2, 5),
], ids=["nul-after-cr", "bad-byte-after-crlf", "bad-byte-after-cr", "bad-byte-after-multibyte"])
def test_bytes_errors_count_lines_like_the_lexer(tmp_path, data, line, column):
    path = tmp_path / "bad.ssm"
    path.write_bytes(data)
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.check(path)
    assert (info.value.line, info.value.column) == (line, column)
    shown, caret = shown_line_and_caret(info.value, line)
    assert caret.index("^") == column - 1


# --- 4. what is not a spec file: a clear error, without blocking or reading it all ----------

def _not_spec_paths(tmp_path):
    fifo = tmp_path / "fifo.ssm"
    os.mkfifo(fifo)
    (tmp_path / "dir.ssm").mkdir()
    (tmp_path / "latin1.ssm").write_bytes(b"ssm T { # caf\xe9 }\n")
    with open(tmp_path / "huge.ssm", "wb") as f:
        f.truncate(64 * 1024 * 1024)
    return {
        "nul": ("a\x00b.ssm", "NUL"),
        "dev-zero": ("/dev/zero", "not a regular"),
        "fifo": (str(fifo), "FIFO"),
        "directory": (str(tmp_path / "dir.ssm"), "directory"),
        "missing": (str(tmp_path / "nope.ssm"), "no such spec file"),
        "latin1": (str(tmp_path / "latin1.ssm"), "not UTF-8"),
        "huge": (str(tmp_path / "huge.ssm"), "too large"),
    }


NOT_SPECS = ["nul", "dev-zero", "fifo", "directory", "missing", "latin1", "huge"]


@pytest.mark.parametrize("which", NOT_SPECS)
@pytest.mark.parametrize("entry", ["check", "load"])
def test_not_a_spec_file_is_a_spec_error(tmp_path, which, entry):
    if which in ("dev-zero", "fifo") and not hasattr(os, "mkfifo"):
        pytest.skip("POSIX only")
    path, message = _not_spec_paths(tmp_path)[which]
    with pytest.raises(ssmc.SpecError) as info:
        (ssmc.check if entry == "check" else ssmc.load)(path)
    assert message in str(info.value)


@pytest.mark.parametrize("which", [w for w in NOT_SPECS if w != "nul"])
def test_not_a_spec_file_in_the_cli(tmp_path, which):
    path, message = _not_spec_paths(tmp_path)[which]
    r = cli("check", path)
    assert r.exit_code == 1
    assert message in r.output and "Traceback" not in r.output


def test_cli_on_a_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "fifo.ssm"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "ssmc", "check", str(fifo)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert "FIFO" in r.stderr and "Traceback" not in r.stderr


def test_oversized_text_is_refused():
    with pytest.raises(ssmc.SpecError, match="too large"):
        numpy_load(BASE + "#" * (17 * 1024 * 1024))


# --- 5. terminal escapes are shown escaped -----------------------------------------------

def _raw_controls(text: str) -> list[str]:
    """Characters a terminal acts on (ESC, BEL, CSI, bidi overrides), other than the line breaks."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf") and c != "\n"]


def test_escapes_in_an_error_line_are_escaped():
    e = spec_error(BASE.replace("  output y = sum(C * x, N) + D * u",
                                "  output y = sum(C * x, N) + D * u  # \x1b[2J\u202e\n  y2 = D \x1b[31m"))
    assert (e.line, e.column) == (15, 10)
    assert not _raw_controls(str(e))
    shown, caret = shown_line_and_caret(e, 15)
    assert shown == "  y2 = D \\x1b[31m"
    # The caret stands under the escaped ESC, as wide as its escape.
    assert caret == " " * 9 + "^^^^" or caret.startswith(" " * 9 + "^^^^ ")


def test_escapes_in_a_file_name_are_escaped(tmp_path):
    path = tmp_path / "x\x1b[31m\u202e.ssm"
    path.write_text(BAD)
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.check(path)
    assert not _raw_controls(str(info.value))
    assert info.value.filename == str(path)
    r = cli("check", str(path))
    assert r.exit_code == 1 and not _raw_controls(r.output)
    r = cli("check", str(tmp_path / "missing\x1b[2J.ssm"))
    assert r.exit_code == 1 and not _raw_controls(r.output) and "\\x1b[2J" in r.output


@pytest.mark.parametrize("command", ["check", "explain", "run"])
def test_escapes_in_a_description_are_escaped_in_the_cli(tmp_path, command):
    path = tmp_path / "desc.ssm"
    path.write_text(BASE.replace("ssm T {", 'ssm T "a\x1b[31mred\u202eevil\x07\x9b" {'))
    extra = ["--backend", "numpy", "--length", "4", "--batch", "1"] if command == "run" else []
    r = cli(command, str(path), *extra)
    assert r.exit_code == 0, r.output
    assert not _raw_controls(r.output)
    assert "a\\x1b[31mred\\u202eevil\\x07\\x9b" in r.output
