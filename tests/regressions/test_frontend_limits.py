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

# The frontend error table's valid spec, edited per test.
from tests.frontend.test_errors import BASE  # noqa: E402
LINE_14 = "  output y = sum(C * x, N) + DD * u"
BAD = BASE.replace("  output y = sum(C * x, N) + D * u", LINE_14)


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    # Every test here compiles for real: a cached module would hide what is tested.
    monkeypatch.setenv("SSMC_CACHE", "0")


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


@pytest.mark.parametrize("text, where", [
    (BAD.replace("\n", "\r"), "t.ssm:14:30"),
    (BAD.replace("  input u[H]\n", "  input u[H]   # a\u2028b\x1e\n"), "t.ssm:14:30"),
    (BASE.replace("  input u[H]\n", "  input u[H] \x85\n"), "t.ssm:3:14"),
], ids=["cr", "separators-in-a-comment", "nel-outside-a-comment"])
def test_line_break_errors_in_the_cli(tmp_path, text, where):
    path = tmp_path / "t.ssm"
    path.write_bytes(text.encode())
    r = cli("check", str(path))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert where in r.output.replace(str(tmp_path) + os.sep, "")
    assert not [c for c in r.output if c in "\r\x1e\x85\u2028"]


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


# --- 2. long chains of named values, deep expressions ---------------------------------------

def _with_values(lines: list[str], replace: dict[int, str] | None = None) -> str:
    rows = BASE.splitlines()
    for k, v in (replace or {}).items():
        rows[k - 1] = v
    return "\n".join(rows[:9] + lines + rows[9:]) + "\n"


def chain(n: int, where: str = "step") -> str:
    if where == "step":
        return _with_values(["  a0 = exp(log_dt)"] + [f"  a{i} = a{i - 1} + 1" for i in range(1, n)],
                            {12: f"  discretize zoh, step = a{n - 1}"})
    if where == "input":
        return _with_values(["  a0 = B * u"] + [f"  a{i} = a{i - 1} + B * u" for i in range(1, n)],
                            {11: f"  dynamics x' = A x + a{n - 1}"})
    if where == "output":
        return _with_values(["  a0 = sum(C * x, N)"] + [f"  a{i} = a{i - 1} + 1" for i in range(1, n)],
                            {14: f"  output y = a{n - 1} + D * u"})
    if where == "negated":
        return _with_values(["  a0 = B * u"] + [f"  a{i} = -a{i - 1}" for i in range(1, n)],
                            {11: f"  dynamics x' = A x + a{n - 1}"})
    if where == "alias":
        return _with_values(["  a0 = exp(log_dt)"] + [f"  a{i} = a{i - 1}" for i in range(1, n)],
                            {12: f"  discretize zoh, step = a{n - 1}"})
    raise ValueError(where)


@pytest.mark.parametrize("where", ["step", "input", "output", "negated", "alias"])
def test_a_long_chain_of_named_values_compiles(where):
    # 1000 values: each is one level deeper than the one it uses; the linearity pass (sympy),
    # explain and the printers walk such chains recursively.
    mod = numpy_load(chain(1000, where))
    assert hasattr(mod, "T")


def test_a_long_chain_compiles_with_the_torch_backend():
    mod = ssmc.loads(chain(1000, "negated"), backend="torch")
    assert hasattr(mod, "T")


@pytest.mark.parametrize("command", ["check", "explain"])
def test_a_long_chain_in_the_cli(tmp_path, command):
    path = tmp_path / "chain.ssm"
    path.write_text(chain(1000, "output"))
    r = cli(command, str(path))
    assert r.exit_code == 0, r.output[-2000:]


def test_a_chain_beyond_the_limit_is_a_located_error(monkeypatch):
    from ssmc.frontend import nesting
    # The limit made small, so the test stays quick: the same code path as 10,000 levels.
    monkeypatch.setattr(nesting, "MAX_NESTING", 300)
    monkeypatch.setattr(nesting.check_nesting, "__defaults__", (300,))
    e = spec_error(chain(400, "output"))
    assert "nested too deeply" in e.message and "300" in e.message
    # a0 = sum(C * x, N) is 3 levels deep (sum, *, x), each further value one more: a298 is the first over.
    assert e.message.startswith("'a298'")
    assert (e.line, e.column) == (9 + 299, 3)
    shown, caret = shown_line_and_caret(e, e.line)
    assert shown == "  a298 = a297 + 1" and caret.startswith("  ^^^^")


def test_a_chain_just_within_the_limit_is_not_refused():
    from ssmc.frontend import ast as A
    from ssmc.frontend.nesting import check_nesting
    from ssmc.frontend.parser import parse
    file = parse(chain(400, "output"))
    # a399 is 3 + 399 levels deep; the output's expression, a399 + D * u, as deep.
    check_nesting(file.blocks[0], ssmc.errors.Source(""), limit=403)
    with pytest.raises(ssmc.SpecError, match="this expression"):
        check_nesting(file.blocks[0], ssmc.errors.Source(""), limit=402)
    with pytest.raises(ssmc.SpecError, match="'a399'"):
        check_nesting(file.blocks[0], ssmc.errors.Source(""), limit=401)
    assert isinstance(file.blocks[0].body[0], A.Node)


def test_a_chain_over_the_limit_in_the_cli(tmp_path, monkeypatch):
    from ssmc.frontend import nesting
    monkeypatch.setattr(nesting.check_nesting, "__defaults__", (300,))
    path = tmp_path / "deep.ssm"
    path.write_text(chain(400, "output"))
    r = cli("check", str(path))
    assert r.exit_code == 1
    assert "nested too deeply" in r.output and "Traceback" not in r.output
    assert f"{path}:308:3" in r.output


def test_a_chain_over_the_real_limit_is_refused_before_analysis():
    from ssmc.frontend.nesting import MAX_NESTING
    e = spec_error(chain(MAX_NESTING + 5, "output"))
    assert "nested too deeply" in e.message and str(MAX_NESTING) in e.message
    assert e.line is not None


@pytest.mark.parametrize("expr", [
    "(" * 500 + "exp(log_dt)" + ")" * 500,
    "-(" * 500 + "exp(log_dt)" + ")" * 500,
    "-" * 500 + "exp(log_dt)",
], ids=["parens", "negated-parens", "minus-signs"])
def test_deep_single_expressions_never_escape_as_recursion_errors(expr):
    text = BASE.replace("  discretize zoh, step = exp(log_dt)", "  discretize zoh, step = " + expr)
    try:
        mod = numpy_load(text)
    except ssmc.SpecError as e:
        assert e.line == 12 and "nested too deeply" in e.message
    else:
        assert hasattr(mod, "T")


def test_nested_tanh_in_the_input_term_is_quick():
    import time
    # sympy's own tanh took time exponential in the nesting (8 levels: seconds, 10: a minute).
    text = BASE.replace("  dynamics x' = A x + B * u", "  dynamics x' = A x + " + "tanh(" * 11 + "B" + ")" * 11 + " * u")
    t0 = time.process_time()
    ssmc.check(ssmc.errors.Source(text))
    assert time.process_time() - t0 < 30


@pytest.mark.parametrize("term, message", [
    ("tanh(u) * B", "not linear"),
    ("B * u + tanh(0)", None),
    ("tanh(B) * u", None),
    ("B * u + tanh(D)", "does not depend on the input"),
])
def test_tanh_in_the_input_term_keeps_its_meaning(term, message):
    text = BASE.replace("  dynamics x' = A x + B * u", "  dynamics x' = A x + " + term)
    if message is None:
        ssmc.check(ssmc.errors.Source(text))
    else:
        with pytest.raises(ssmc.SpecError, match=message):
            ssmc.check(ssmc.errors.Source(text))


def test_run_deep_restores_the_recursion_limit_and_the_collector():
    import gc

    from ssmc.compiler import run_deep
    limit, enabled = sys.getrecursionlimit(), gc.isenabled()
    assert run_deep(lambda: sys.getrecursionlimit()) > limit
    assert (sys.getrecursionlimit(), gc.isenabled()) == (limit, enabled)
    with pytest.raises(ZeroDivisionError):
        run_deep(lambda: 1 / 0)
    assert (sys.getrecursionlimit(), gc.isenabled()) == (limit, enabled)


# --- 3. compile time grows about linearly with the size of a spec -----------------------------

def _params(n: int) -> str:
    return _with_values([f"  p{i}[H] = normal(0, 1)".replace("  p", "  param p") for i in range(n)])


def _dead(n: int) -> str:
    return _with_values([f"  d{i} = exp(log_dt) * {i}" for i in range(n)])


def _cpu_seconds(text: str, backend: str = "numpy") -> float:
    """CPU seconds of the pass pipeline and a backend's code generation on `text`
    (parsed beforehand; no cache, no module import), the best of three runs."""
    import time

    from ssmc import passes
    from ssmc.api import _backend
    from ssmc.compiler import Compiled, run_deep
    from ssmc.errors import Source
    from ssmc.frontend.parser import parse
    from ssmc.ir.build import build

    source = Source(text, "t.ssm")
    lowered = build(parse(source).blocks[0], source)
    backend = _backend(backend)

    def best_of_two():
        import gc
        best = float("inf")
        for _ in range(3):
            gc.collect()
            t0 = time.process_time()
            backend.render(Compiled(source, [passes.run(lowered)]))
            best = min(best, time.process_time() - t0)
        return best

    return run_deep(best_of_two)


def _negated_chain(n: int) -> str:
    return chain(n, "negated")


@pytest.mark.parametrize("make, n, backend", [(_params, 600, "numpy"), (_dead, 1000, "numpy"),
                                              (_negated_chain, 600, "torch")],
                         ids=["params", "dead-values", "chained-values-torch"])
def test_compile_time_grows_about_linearly(make, n, backend):
    # Four times the spec: about 4x the time when linear, 16x when quadratic. The bound,
    # 12x, leaves room for timing noise on a loaded 2-core CI machine (8x failed there once
    # at 0.09 s against 0.71 s), and still fails a quadratic pass.
    _cpu_seconds(make(10), backend)
    small, large = _cpu_seconds(make(n), backend), _cpu_seconds(make(4 * n), backend)
    assert large / small < 12, (small, large)
