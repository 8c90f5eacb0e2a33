"""Statements that span lines (Decision (1)): inside brackets, after a line ending with
a binary operator, ',' or '=', before a line starting with a binary operator, and after
a trailing backslash. A continued spec means exactly what the one-line spec means (the
generated code is the same), and errors after a continuation keep their positions."""
from __future__ import annotations

import pytest

import ssmc
from ssmc.errors import Source

ONE_LINE = """\
ssm T {
  dims H = 4, N = 8
  input u[H], z[H]
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
  output y = sum(C * x, N) + D * u * silu(z)
}
"""


def _code(text):
    return ssmc.compile_source(Source(text, "spec.ssm"), "numpy")


def _with(old, new):
    assert old in ONE_LINE
    return ONE_LINE.replace(old, new)


CONTINUED = {
    "leading-plus": _with("output y = sum(C * x, N) + D * u * silu(z)",
                          "output y = sum(C * x, N)\n           + D * u * silu(z)"),
    "leading-star": _with("output y = sum(C * x, N) + D * u * silu(z)",
                          "output y = sum(C * x, N) + D * u\n    * silu(z)   # gate"),
    "trailing-plus": _with("output y = sum(C * x, N) + D * u * silu(z)",
                           "output y = sum(C * x, N) +   # readout\n    D * u * silu(z)"),
    "trailing-equal": _with("output y = sum(C * x, N) + D * u * silu(z)",
                            "output y =\n    sum(C * x, N) + D * u * silu(z)"),
    "trailing-comma": _with("dims H = 4, N = 8", "dims H = 4,   # width\n       N = 8"),
    "inside-parens": _with("output y = sum(C * x, N) + D * u * silu(z)",
                           "output y = sum(C * x,\n\n    # the state dim\n    N) + D * u * silu(\n z\n )"),
    "inside-brackets": _with("param A_log[H, N]", "param A_log[H,\n    N]"),
    "backslash": _with("dynamics x' = A x + B * u", "dynamics x' = A x \\\n    + B * u"),
    "backslash-comment": _with("dynamics x' = A x + B * u", "dynamics x' = A x \\  # the input term\n    + B * u"),
    "leading-minus-dynamics": _with("dynamics x' = A x + B * u", "dynamics x' = A x\n    - -B * u"),
    "crlf": _with("output y = sum(C * x, N) + D * u * silu(z)",
                  "output y = sum(C * x,\r\n  N)\r\n  + D * u * silu(z)").replace("\n", "\r\n").replace("\r\r", "\r"),
    "lone-cr-backslash": _with("dynamics x' = A x + B * u", "dynamics x' = A x \\\r    + B * u"),
    "power": _with("output y = sum(C * x, N) + D * u * silu(z)",
                   "output y = sum(C * x, N) + D * u * silu(z) * 1 **\n 2"),
    "kwargs": _with("discretize zoh, step = exp(log_dt)", "discretize zoh,\n    step = exp(log_dt)"),
    "inputs": _with("input u[H], z[H]", "input u[H],\n      z[H]"),
}


@pytest.mark.parametrize("name", sorted(CONTINUED))
def test_continued_statement_means_the_one_line_statement(name):
    text = CONTINUED[name]
    ref = ONE_LINE
    if name == "leading-minus-dynamics":
        ref = _with("dynamics x' = A x + B * u", "dynamics x' = A x - -B * u")
    if name == "power":
        ref = _with("output y = sum(C * x, N) + D * u * silu(z)", "output y = sum(C * x, N) + D * u * silu(z) * 1 ** 2")
    assert _code(text) == _code(ref)


def test_separate_statements_still_end_at_line_ends():
    # A line starting with a name, a keyword or a sign-free number is a new statement.
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.loads(_with("output y = sum(C * x, N) + D * u * silu(z)", "output y = sum(C * x, N)\n  D * u"),
                   backend="numpy", filename="spec.ssm")
    assert (info.value.line, info.value.column) == (15, 5)


@pytest.mark.parametrize("text, line, column, message", [
    # a semantic error on the second line of a continued statement
    (_with("output y = sum(C * x, N) + D * u * silu(z)", "output y = sum(C * x, N)\n     + D * uu"), 15, 12,
     "unknown name 'uu'"),
    (_with("output y = sum(C * x, N) + D * u * silu(z)", "output y = sum(C * x,\n   M)"), 15, 4, "M"),
    (_with("output y = sum(C * x, N) + D * u * silu(z)", "output y = sum(C * x, N) \\\n  + D * u * silu(zz)"), 15,
     18, "unknown name 'zz'"),
    # a syntax error after a continuation
    (_with("output y = sum(C * x, N) + D * u * silu(z)", "output y = sum(C * x, N) +\n  D * u $ 2"), 15, 9,
     "unexpected character '$'"),
    # an unclosed bracket in a middle line
    (_with("A = -exp(A_log) : diagonal", "A = -exp(A_log   # oops"), 10, 11,
     "'(' opened at line 10 is never closed"),
    (_with("state x[H, N]", "state x[H, N"), 4, 10, "'[' opened at line 4 is never closed"),
    # on its own line, an error is where it is, bracket or not
    (_with("A = -exp(A_log) : diagonal", "A = -exp(A_log : diagonal"), 10, 18, "unexpected ':'"),
])
def test_error_positions_after_continuations(text, line, column, message):
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.loads(text, backend="numpy", filename="spec.ssm")
    e = info.value
    assert message in e.message, e.message
    assert (e.line, e.column) == (line, column), f"{e.message} at {e.line}:{e.column}"
    rendered = str(e)
    assert f"spec.ssm:{line}:{column}" in rendered
    shown = text.replace("\r\n", "\n").replace("\r", "\n").splitlines()[line - 1]
    assert f"{line} | {shown}" in rendered


def test_unclosed_bracket_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from ssmc.cli import main
    p = tmp_path / "spec.ssm"
    p.write_text(_with("A = -exp(A_log) : diagonal", "A = -exp(A_log"))
    r = CliRunner().invoke(main, ["check", str(p)], catch_exceptions=False)
    assert r.exit_code == 1
    assert "'(' opened at line 10 is never closed" in r.output and "Traceback" not in r.output
    assert "10 |   A = -exp(A_log" in r.output


def test_the_docs_example_compiles():
    """Decision (1)'s example block of docs/language.md, inside a complete spec."""
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "language.md").read_text()
    block = re.search(r"So long formulas are written as a researcher would:\n\n```\n(.*?)```", doc, re.S).group(1)
    lines = block.splitlines()
    text = ("ssm D {\n" + "\n".join(lines[2:4]) + "\n  input u[H]\n  state x[H, N]\n"
            "  param A_log[H, N] = log(1 + arange(N))\n  param B[H, N] = normal(0, 1)\n"
            "  param C[H, N] = normal(0, 1)\n  param D[H] = ones\n  param dt_bias[H] = inv_softplus(0.01)\n"
            "  A = -exp(A_log) : diagonal\n" + "\n".join(lines[4:8]) + "\n  discretize zoh, step = dt\n"
            "  scan causal\n" + "\n".join(lines[0:2]) + "\n}\n")
    one = ssmc.compile_source(Source(text, "d.ssm"), "numpy")
    assert "rt.clamp(" in one
