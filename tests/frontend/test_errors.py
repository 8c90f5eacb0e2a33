"""Every class of spec error: the message, the line, the column and the hint.

Table-driven, in the style of xDSL's filecheck-free diagnostics tests: each row is
``(spec_text, line, column, message_fragment, hint_fragment)``. ``hint_fragment`` is
``None`` where the row does not check the hint; where it is given, the hint must say
what would be right (the nearest known name, the missing piece, ...).

Most rows are one-line edits of ``BASE``, a small valid diagonal SSM, so that the line
numbers below can be read off it:

     1  ssm T {
     2    dims H = 4, N = 8
     3    input u[H]
     4    state x[H, N]
     5    param A_log[H, N] = log(1 + arange(N))
     6    param B[H, N] = normal(0, 1)
     7    param C[H, N] = normal(0, 1)
     8    param D[H] = ones
     9    param log_dt[H] = log_uniform(0.001, 0.1)
    10    A = -exp(A_log) : diagonal
    11    dynamics x' = A x + B * u
    12    discretize zoh, step = exp(log_dt)
    13    scan causal
    14    output y = sum(C * x, N) + D * u
    15  }
"""
from __future__ import annotations

import pytest

import ssmc

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


def edit(lines: dict[int, str] | None = None, drop: tuple[int, ...] = ()) -> str:
    """BASE with line k replaced by lines[k] (1-based) and the lines in `drop` removed.

    A replacement may hold several lines (joined with newlines); the rows that do so
    only add lines after the one they report on.
    """
    out = []
    for i, text in enumerate(BASE.splitlines(), 1):
        if i in drop:
            continue
        out.append((lines or {}).get(i, text))
    return "\n".join(out) + "\n"


def load(text, **kwargs):
    return ssmc.loads(text, backend="numpy", **kwargs)


def row(text, line, column, message, hint=None, id=None):
    return pytest.param(text, line, column, message, hint, id=id)


ROWS = [
    # --- syntax ---------------------------------------------------------------------
    # A bracket left open runs the statement on over the line breaks (Decision (1)): the
    # error points at the bracket, wherever the parser stumbled.
    row(edit({3: "  input u[H"}), 3, 10, "'[' opened at line 3 is never closed", "']'", id="syntax-missing-rsqb"),
    row(edit({8: "  param D[H = ones"}), 8, 13, "unexpected '='", "']'", id="syntax-missing-rsqb-param"),
    row(edit({12: "  discretize zoh, step = exp(log_dt"}), 12, 29, "'(' opened at line 12 is never closed", "')'",
        id="syntax-missing-rpar"),
    row(edit({14: "  output y = sum(C * x, N) + (D * u"}), 14, 30, "'(' opened at line 14 is never closed", "')'",
        id="unclosed-at-block-end"),
    row(edit({14: "  output y = sum(C * x, N) + (D * u\n}\nssm U {\n  dims H = 4\n}"}), 14, 30,
        "'(' opened at line 14 is never closed", "')'", id="unclosed-before-next-block"),
    row(edit({14: "  output y = sum(C * x, N"}, drop=(15,)), 14, 17, "'(' opened at line 14 is never closed", "')'",
        id="unclosed-at-end-of-file"),
    row(edit({3: "  input u[H],"}), 3, 13, "line 3 ends with ',', so the statement goes on at line 4",
        "finish the statement on line 3", id="continued-by-trailing-comma"),
    row(edit({14: "  output y = sum(C * x, N) + D *"}), 14, 32, "line 14 ends with '*'", "continues on the next one",
        id="continued-by-trailing-operator"),
    row(edit({14: "  output y = sum(C * x, N) \\ + D * u"}), 14, 28, "a backslash continues a statement only at the "
        "end of a line", "right after the backslash", id="backslash-inside-line"),
    row(edit({13: "  scan causal;\n  + 1"}), 14, 3, "unexpected '+'", None, id="operator-line-after-semicolon"),
    row(edit({10: "  A = -exp(A_log) $ 2 : diagonal"}), 10, 19, "unexpected character '$'", None,
        id="syntax-stray-dollar"),
    row(edit({14: "  output y = sum(C * x, N) + D * u ?"}), 14, 36, "unexpected character '?'", None,
        id="syntax-stray-question"),
    row(edit({14: "  output y = sum(C * x, N) + \u0394 * u"}), 14, 30, "unexpected character '\u0394'", None,
        id="syntax-stray-unicode"),
    row(BASE.rstrip().rstrip("}"), 14, 35, "unexpected end of file", "'}'", id="syntax-missing-rbrace"),
    row("ssm T {\n  dims H = 4\n", 2, 13, "unexpected end of file", "'}'", id="syntax-eof-after-stmt"),
    row(edit({13: "  scan causal output y = sum(C * x, N) + D * u"}, drop=(14,)), 13, 15,
        "unexpected 'output': the statement before it has not ended", "';'", id="syntax-two-statements"),
    row(edit({8: "  param D[H] = ones param E[H] = ones"}), 8, 21,
        "unexpected 'param': the statement before it has not ended", "';'", id="syntax-two-params"),
    row(edit({12: "  discretize zoh, step = exp(log_dt) dt = 1"}), 12, 38,
        "unexpected 'dt': the statement before it has not ended", "';'", id="syntax-two-assignments"),
    row(BASE.replace("ssm T {", 'ssm T "a description {'), 1, 7, "unterminated string", '"',
        id="syntax-unterminated-string"),
    row("dims H = 4\n" + BASE, 1, 1, "outside an `ssm` block", "ssm NAME {", id="syntax-statement-outside"),
    row(BASE.replace("ssm T {", "ssm {"), 1, 5, "unexpected '{'", "a name", id="syntax-block-without-name"),
    row(BASE + "}\n", 16, 1, "unexpected '}'", None, id="syntax-extra-rbrace"),
    row(edit({11: "  dynamics x = A x + B * u"}), 11, 14, "unexpected '='", "\"'\"", id="syntax-dynamics-no-prime"),

    # --- unknown names, functions and dims ----------------------------------------------
    row(edit({14: "  output y = sum(C * x, N) + DD * u"}), 14, 30, "unknown name 'DD'", "did you mean 'D'",
        id="unknown-name"),
    row(edit({12: "  discretize zoh, step = exp(log_dtt)"}), 12, 30, "unknown name 'log_dtt'",
        "did you mean 'log_dt'", id="unknown-name-typo"),
    row(edit({10: "  A = -exp(A_lg) : diagonal"}), 10, 12, "unknown name 'A_lg'", "did you mean 'A_log'",
        id="unknown-name-in-matrix"),
    row(edit({8: "  param D[H] = foo"}), 8, 16, "unknown name 'foo'", None, id="unknown-name-in-init"),
    row(edit({11: "  dynamics x' = AA x + B * u"}), 11, 17, "unknown state matrix 'AA'", "did you mean 'A'",
        id="unknown-state-matrix"),
    row(edit({12: "  discretize zoh, step = expp(log_dt)"}), 12, 26, "unknown function 'expp'",
        "did you mean 'exp'", id="unknown-function"),
    row(edit({12: "  discretize zoh, step = sofplus(log_dt)"}), 12, 26, "unknown function 'sofplus'",
        "did you mean 'softplus'", id="unknown-function-softplus"),
    row(edit({6: "  param B[H, N] = normall(0, 1)"}), 6, 19, "unknown function 'normall'",
        "did you mean 'normal'", id="unknown-function-in-init"),
    row(edit({3: "  input u[HH]"}), 3, 11, "unknown dim 'HH' in the dims of 'u'", "did you mean 'H'",
        id="unknown-dim-input"),
    row(edit({8: "  param D[K] = ones"}), 8, 11, "unknown dim 'K' in the dims of 'D'", "H, N",
        id="unknown-dim-param"),
    row(edit({4: "  state x[H, NN]"}), 4, 14, "unknown dim 'NN' in the dims of 'x'", "did you mean 'N'",
        id="unknown-dim-state"),
    row(edit({14: "  output y = sum(C * x, M) + D * u"}), 14, 25, "unknown dim 'M' in sum()", "H, N",
        id="unknown-dim-sum"),
    row(edit({14: "  output y = mean(C * x, NN) + D * u"}), 14, 26, "unknown dim 'NN' in mean()",
        "did you mean 'N'", id="unknown-dim-mean"),
    row(edit({5: "  param A_log[H, N] = log(1 + arange(NN))"}), 5, 38, "unknown dim 'NN' in arange()",
        "did you mean 'N'", id="unknown-dim-arange"),
    row(edit({2: "  dims H = 4, N = HH * 2"}), 2, 19, "unknown dim 'HH'", "did you mean 'H'", id="unknown-dim-dims"),
    row(edit({2: "  dims H = N, N = 8"}), 2, 12, "unknown dim 'N'", "declared before", id="dim-used-before-declared"),

    # --- shapes ------------------------------------------------------------------------
    row(edit({14: "  output y = sum(D * u, N) + sum(C * x, N)"}), 14, 25, "sum() over N, but the value has dims [H]",
        "H", id="reduce-missing-dim"),
    row(edit({14: "  output y = mean(C * x, N, N)"}), 14, 29, "mean() names N twice", "mean(..., N) once",
        id="reduce-twice"),
    row(edit({6: "  param B[N, N] = hippo_legs(N)", 14: "  output y = sum(C * x, N) + sum(B * C, N)"}), 14, 34,
        "dims do not broadcast", "sum()", id="matrix-times-vector"),
    row(edit({8: "  param D[H] = arange(N)"}), 8, 16, "initializer of 'D' has dims [N]", "D[H, N]",
        id="initializer-extra-dims"),

    # --- structure ---------------------------------------------------------------------
    row(edit({2: "  dims H = 4, N = 8, K = 2", 5: "  param A_log[H, N, K] = log(1 + arange(N))"}), 11, 17,
        "a diagonal state matrix broadcasts to the state's dims [H, N], but 'A' has [H, N, K]", "drop the extra dims",
        id="structure-diagonal-extra-dim"),
    row(edit({10: "  A = -exp(A_log) : scalar"}), 11, 17,
        "a scalar state matrix has some leading dims of the state [H, N] (not N), but 'A' has [H, N]", "A[H]",
        id="structure-scalar-with-last-dim"),
    row(edit({10: "  A = -exp(A_log) : dense"}), 11, 17,
        "a dense state matrix has dims [..., N, N] over the state [H, N], but 'A' has [H, N]", "[N, N]",
        id="structure-dense-not-square"),
    row(edit({5: "  param A_log[N, N] = hippo_legs(N)", 10: "  A = A_log : block_diagonal(blocks = 3)"}), 10, 15,
        "N = 8 is not divisible by 3", "divides N", id="structure-block-count"),
    row(edit({10: "  A = -exp(A_log) : dplr"}), 11, 17, "a dplr state matrix has dims [..., N, N]", "dplr(Lambda, P, Q)",
        id="structure-dplr-not-dplr"),
    row(edit({10: "  A = -exp(A_log)"}), 11, 17, "the state matrix 'A' needs a structure annotation", ": diagonal",
        id="structure-missing"),
    row(edit({2: "  dims H = 4, N = 8, K = 2", 6: "  param B[H, N, K] = normal(0, 1)"}), 11, 23,
        "the input term has dims [H, N, K], but the state 'x' has [H, N]", "sum(..., K)",
        id="input-term-extra-dim"),
    row(edit({2: "  dims H = 4, N = 8, K = 2", 9: "  param log_dt[K] = log_uniform(0.001, 0.1)"}), 12, 26,
        "the step has dims [K], but it must broadcast to the state's dims [H, N]", "[H]",
        id="step-extra-dim"),
    row(edit({12: "  discretize zoh, step = exp(log_dt) * x"}), 12, 26, "the step may not depend on the state",
        None, id="step-reads-state"),
    row(edit({14: "  output y = D * u"}), 14, 10, "the output does not read the state 'x'", "C * x",
        id="output-ignores-state"),

    # --- linearity ---------------------------------------------------------------------
    row(edit({11: "  dynamics x' = A x + B * u * u"}), 11, 23, "not linear in the input 'u'", "coefficient * u",
        id="nonlinear-u-times-u"),
    row(edit({11: "  dynamics x' = A x + B * (u * u)"}), 11, 28, "not linear in the input 'u'", "coefficient * u",
        id="nonlinear-u-times-u-inner"),
    row(edit({11: "  dynamics x' = A x + B * exp(u)"}), 11, 27, "not linear in the input 'u'", "coefficient * u",
        id="nonlinear-exp-u"),
    row(edit({11: "  dynamics x' = A x + B * sqrt(u)"}), 11, 27, "not linear in the input 'u'", None,
        id="nonlinear-sqrt-u"),
    row(edit({11: "  dynamics x' = A x + B * u + 1"}), 11, 31, "a part that does not depend on the input 'u'",
        "no constant offset", id="affine-plus-one"),
    row(edit({11: "  dynamics x' = A x + 1 + B * u"}), 11, 23, "a part that does not depend on the input 'u'",
        "no constant offset", id="affine-one-plus"),
    row(edit({11: "  dynamics x' = A x + B * u - 2 * B"}), 11, 31, "a part that does not depend on the input 'u'",
        None, id="affine-minus-term"),
    row(edit({11: "  dynamics x' = A x + B"}), 11, 23, "does not depend on any input", "B * u",
        id="input-term-without-input"),
    row(edit({11: "  dynamics x' = A x + B * u * x"}), 11, 23, "may not depend on the state", None,
        id="input-term-reads-state"),

    # --- cycles ------------------------------------------------------------------------
    row(edit({12: "  discretize zoh, step = a", 13: "  scan causal\n  a = b + 1\n  b = a"}), 14, 3,
        "cyclic definition: a -> b -> a", "may not depend on themselves", id="cycle-two"),
    row(edit({12: "  discretize zoh, step = a", 13: "  scan causal\n  a = exp(b)\n  b = c * 2\n  c = a + 1"}), 14, 3,
        "cyclic definition: a -> b -> c -> a", None, id="cycle-three"),
    row(edit({12: "  discretize zoh, step = a", 13: "  scan causal\n  a = a + 1"}), 14, 3,
        "cyclic definition: a -> a", None, id="cycle-self"),
    row(edit({12: "  discretize zoh, step = a", 13: "  scan causal\n  a = b\n  b = a"}), 14, 3,
        "cyclic definition: a -> b -> a", None, id="cycle-aliases"),

    # --- duplicate and reserved names -------------------------------------------------
    row(edit({8: "  param B[H] = ones"}), 8, 9, "'B' is declared twice (first as a param at line 6)", "own name",
        id="duplicate-param"),
    row(edit({2: "  dims H = 4, H = 8, N = 2"}), 2, 15, "dim 'H' is declared twice", None, id="duplicate-dim"),
    row(edit({13: "  scan causal\n  D = 2"}), 14, 3, "'D' is declared twice", None, id="duplicate-value-param"),
    row(edit({13: "  scan causal\n  N = 2"}), 14, 3, "'N' is declared twice (first as a dim", None,
        id="duplicate-value-dim"),
    row(BASE + BASE, 16, 5, "a second block named 'T'", None, id="duplicate-block"),
    row(edit({13: "  scan causal\n  exp = 1"}), 14, 3, "'exp' is a reserved word", "'exp_'", id="reserved-function"),
    row(edit({13: "  scan causal\n  input = 1"}), 14, 3, "'input' is a reserved word", "'input_'",
        id="reserved-keyword-input"),
    row(edit({13: "  scan causal\n  state = 1"}), 14, 3, "'state' is a reserved word", "'state_'",
        id="reserved-keyword-state"),
    row(edit({3: "  input input[H]"}), 3, 9, "'input' is a reserved word and cannot name an input", "'input_'",
        id="reserved-input-name"),
    row(edit({13: "  scan causal\n  lambda = 1"}), 14, 3, "'lambda' is a reserved word", "'lambda_'",
        id="reserved-python-keyword"),
    row(edit({8: "  param class[H] = ones"}), 8, 9, "'class' is a reserved word and cannot name a param", None,
        id="reserved-python-keyword-param"),
    row(edit({14: "  output lambda = sum(C * x, N) + D * u"}), 14, 10, "'lambda' is a reserved word", None,
        id="reserved-output-name"),
    row(edit({1: "ssm exec {"}), 1, 5, "'exec' is a reserved word", None, id="reserved-block-name"),
    row(edit({13: "  scan causal\n  eval = 1"}), 14, 3, "'eval' is a reserved word", None, id="reserved-builtin"),
    row(edit({13: "  scan causal\n  _x = 1"}), 14, 3, "names starting with '_' are reserved", "'x'",
        id="reserved-underscore"),
    row(edit({13: "  scan causal\n  __class__ = 1"}), 14, 3, "names starting with '_' are reserved", None,
        id="reserved-dunder"),
    row(edit({2: "  dims __H__ = 4, N = 8"}), 2, 8, "names starting with '_' are reserved", None,
        id="reserved-dunder-dim"),
    row(edit({13: "  scan causal\n  torch = 1"}), 14, 3, "'torch' is a reserved word", None,
        id="reserved-generated"),

    # --- missing parts ------------------------------------------------------------------
    row(edit(drop=(4,)), 1, 5, "ssm T has no `state`", "state x[", id="missing-state"),
    row(edit(drop=(3,)), 1, 5, "ssm T has no `input`", "input u[", id="missing-input"),
    row(edit(drop=(14,)), 1, 5, "ssm T has no `output`", "output y =", id="missing-output"),
    row(edit(drop=(13,)), 1, 5, "ssm T has no `scan`", "scan causal", id="missing-scan"),
    row(edit(drop=(11,)), 1, 5, "ssm T has no `dynamics` or `recurrence`", "dynamics x'", id="missing-dynamics"),
    row(edit(drop=(12,)), 11, 3, "has `dynamics` but no `discretize`", "discretize zoh", id="missing-discretize"),
    row(edit({12: "  discretize zoh"}), 12, 3, "discretize needs a step", "step = ", id="missing-step"),
    row(edit({11: "  dynamics x' = A x"}), 11, 3, "`dynamics` has no input term", "B * u", id="missing-input-term"),
    row(edit({11: "  recurrence x = A x + B * u"}), 12, 3, "`recurrence` is already discrete", None,
        id="recurrence-with-discretize"),
    row(edit({13: "  scan causal\n  recurrence x = A x + B * u"}), 14, 3, "a second `recurrence`", None,
        id="dynamics-and-recurrence"),
    # Several states (issue 9): each needs its own transition; discretizations pair by `state =`.
    row(edit({4: "  state x[H, N]; state z[H]"}), 4, 24, "the state 'z' has no `dynamics` or `recurrence`",
        "recurrence z = A z", id="two-states-one-transition"),
    row(edit({4: "  state x[H, N]; state z[H]", 11: "  dynamics x' = A x + B * u; dynamics x' = A x + u"}), 11, 30,
        "a second `dynamics` of the state 'x'", None, id="two-states-second-transition"),
    row(edit({4: "  state x[H, N]; state z[H]", 11: "  dynamics x' = A x + B * u; dynamics q' = A q + u"}), 11, 39,
        "`dynamics` of 'q', which is not a state", None, id="two-states-unknown-lhs"),
    row(edit({4: "  state x[H, N]; state z[H, N]", 11: "  dynamics x' = A x + B * u; recurrence z = A z + u",
              12: "  discretize zoh, step = exp(log_dt), state = w"}), 12, 47, "state = w: not a state", None,
        id="two-states-discretize-unknown"),
    row(edit({4: "  state x[H, N]; state z[H, N]", 11: "  dynamics x' = A x + B * u; recurrence z = A z + x",
              12: "  recurrence x = A x + z"}), 12, 3, "a second `recurrence` of the state 'x'", None,
        id="two-states-second-recurrence"),
    row(edit({4: "  state x[H, N]; state z[H, N]", 11: "  recurrence x = A x + z * u; recurrence z = A z + x * u",
              12: ""}), 11, 3, "read each other in a cycle", "one direction", id="two-states-cycle"),
    row(edit({4: "  state x[H, N]; state z[H, N]", 11: "  dynamics x' = A x + B * u; recurrence z = A z + z * u",
              14: "  output y = sum(C * x, N) + sum(C * z, N)"}),
        11, 51, "the input term may not depend on the state", None, id="two-states-self-read"),
    row(edit({4: "  state x[H, N]; state z[H, N]", 11: "  dynamics x' = A x + B * u; recurrence z = A z + u"}),
        14, 10, "the output does not read the state 'z'", "sum(C * z, N)", id="two-states-unread"),
    row(edit({4: "  state x[H, N]; state z[H, N]", 11: "  dynamics x' = A x + B * u; recurrence z = A z + u",
              13: "  scan global", 14: "  output y = sum(C * x, N) + sum(C * z, N)"}),
        13, 3, "`scan global` in a block with several states is not supported yet", None, id="two-states-global"),

    # --- bad dims --------------------------------------------------------------------------
    row(edit({2: "  dims H = -4, N = 8"}), 2, 12, "dim 'H' = -4 must be positive", ">= 1", id="dim-negative"),
    row(edit({2: "  dims H = 0, N = 8"}), 2, 12, "dim 'H' = 0 must be positive", ">= 1", id="dim-zero"),
    row(edit({2: "  dims H = 4, N = H - 4"}), 2, 19, "dim 'N' = 0 must be positive", ">= 1", id="dim-zero-expr"),
    row(edit({2: "  dims H = 4, N = H / 0"}), 2, 19, "dim 'N' divides by zero", "divisor", id="dim-divide-by-zero"),
    row(edit({2: "  dims H = 4, K = 0 * H, N = H / K"}), 2, 19, "dim 'K' = 0 must be positive", None,
        id="dim-zero-divisor-dim"),
    row(edit({2: "  dims H = 5, N = H / 2"}), 2, 19, "dim 'N' = 5/2 is not an integer", "ceil", id="dim-not-integer"),
    row(edit({2: "  dims H = 1.5, N = 8"}), 2, 12, "dim 'H' = 3/2 is not an integer", "floor", id="dim-fraction"),
    row(edit({2: "  dims H = 2 ** 50, N = 8"}), 2, 12, "dim 'H' is too large", "2**40", id="dim-too-large"),
    row(edit({2: "  dims H = ((2 ** 64) ** 64) ** 64, N = 8"}), 2, 12, "too large", None, id="dim-huge-power"),
    row(edit({2: "  dims H = 1e999, N = 8"}), 2, 12, "the number 1e999 is too large", None, id="dim-infinite"),
    row(edit({2: "  dims H = 4, N = exp(H)"}), 2, 19, "a dim is an integer expression over earlier dims", "ceil",
        id="dim-function"),

    # --- unknown rules, orders, structures, options --------------------------------------
    row(edit({12: "  discretize zho, step = exp(log_dt)"}), 12, 14, "unknown discretization rule 'zho'",
        "did you mean 'zoh'", id="unknown-rule"),
    row(edit({12: "  discretize bilnear, step = exp(log_dt)"}), 12, 14, "unknown discretization rule 'bilnear'",
        "did you mean 'bilinear'", id="unknown-rule-bilinear"),
    row(edit({13: "  scan casual"}), 13, 8, "unknown scan order 'casual'", "did you mean 'causal'",
        id="unknown-scan-order"),
    row(edit({10: "  A = -exp(A_log) : diagnol"}), 10, 21, "unknown structure 'diagnol'", "did you mean 'diagonal'",
        id="unknown-structure"),
    row(edit({13: "  scan bidirectional(merge = ad)"}), 13, 30, "unknown merge 'ad'", "did you mean 'add'",
        id="unknown-merge"),
    row(edit({12: "  discretize zoh, stp = exp(log_dt)"}), 12, 19, "unknown discretize option 'stp'", "step = dt",
        id="unknown-discretize-option"),
    row(edit({13: "  scan causal(merge = add)"}), 13, 15, "scan causal takes no options", "scan causal",
        id="scan-causal-options"),

    # --- arity and misuse of calls --------------------------------------------------------
    row(edit({12: "  discretize zoh, step = exp(log_dt, log_dt)"}), 12, 26, "exp() takes 1 argument, got 2",
        "exp(x)", id="arity-exp-two"),
    row(edit({12: "  discretize zoh, step = exp()"}), 12, 26, "exp() takes 1 argument, got 0", "exp(x)",
        id="arity-exp-none"),
    row(edit({14: "  output y = sum(C * x) + D * u"}), 14, 14, "sum() takes at least 2 arguments, got 1", "sum(e, N)",
        id="arity-sum-no-dim"),
    row(edit({5: "  param A_log[H, N] = log(1 + arange(N, H))"}), 5, 31, "arange() takes 1 argument, got 2",
        "arange(N)", id="arity-arange"),
    row(edit({6: "  param B[H, N] = normal(0)"}), 6, 19, "normal() takes 2 arguments, got 1", None, id="arity-normal"),
    row(edit({14: "  output y = sum(C * x, 2) + D * u"}), 14, 25, "sum() expects dim names here", "sum(..., N)",
        id="sum-number-as-dim"),
    row(edit({12: "  discretize zoh, step = normal(0, 1)"}), 12, 26, "'normal' is an initializer", "param",
        id="initializer-outside-param"),
    row(edit({12: "  discretize zoh, step = exp"}), 12, 26, "'exp' is a function", "exp(...)",
        id="function-without-call"),
    row(edit({12: "  discretize zoh, step = exp(log_dt, base = 2)"}), 12, 38, "unknown keyword argument 'base'",
        None, id="unknown-keyword-argument"),
    row(edit({8: "  param D[H] = A"}), 8, 16, "an initializer cannot use 'A'", None, id="initializer-uses-value"),

    # --- real and complex ------------------------------------------------------------------
    row(edit({10: "  A = -exp(A_log) + 1j : diagonal"}), 11, 17, "'A' is complex but the state 'x' is real",
        "state x[H, N] complex", id="complex-matrix-real-state"),
    row(edit({7: "  param C[H, N] = normal(0, 1) + 1j"}), 7, 19, "'C' is a real param but its initializer is complex",
        "complex", id="complex-init-real-param"),
    row(edit({7: "  param C[H, N] = s4d_lin(N)"}), 7, 19, "'C' is a real param but its initializer is complex",
        "param C[...] complex", id="complex-family-real-param"),
    row(edit({6: "  param B[H, N] complex = normal(0, 1)"}), 11, 23, "the input term is complex but the state",
        None, id="complex-input-term-real-state"),
    row(edit({12: "  discretize zoh, step = softplus(1j * log_dt)"}), 12, 26, "softplus() needs a real argument",
        "re(...)", id="complex-argument-to-softplus"),

    # --- empty files ------------------------------------------------------------------------
    row("", 1, 1, "empty spec", "ssm MyLayer {", id="empty"),
    row("   \n\n\t  \n", 1, 1, "empty spec", None, id="whitespace-only"),
    row("# a comment\n   # another\n\n", 1, 1, "empty spec", None, id="comments-only"),
    row("ssm T {}\n", 1, 5, "ssm T has no `state`", None, id="empty-block"),
]


@pytest.mark.parametrize("text, line, column, message, hint", ROWS)
def test_error(text, line, column, message, hint):
    with pytest.raises(ssmc.SpecError) as info:
        load(text, filename="spec.ssm")
    e = info.value
    assert message in e.message, f"message {e.message!r} lacks {message!r}"
    assert (e.line, e.column) == (line, column), f"{e.message!r} at {e.line}:{e.column}"
    if hint is not None:
        assert e.hint and hint in e.hint, f"hint {e.hint!r} lacks {hint!r}"
    assert e.filename == "spec.ssm"
    # The rendering names the place, shows the line and puts a caret under the column.
    rendered = str(e)
    assert f"spec.ssm:{line}:{column}" in rendered
    lines = text.splitlines()
    if 1 <= line <= len(lines):
        shown = lines[line - 1].replace("\t", " ")
        assert f"{line} | {shown}" in rendered
        caret = [r for r in rendered.splitlines() if "^" in r and r.lstrip().startswith("|")][-1]
        assert caret.index("^") - caret.index("|") - 2 == column - 1


def test_rows_are_distinct():
    ids = [p.id for p in ROWS]
    assert len(ids) == len(set(ids))


def test_base_spec_compiles():
    mod = load(BASE)
    assert hasattr(mod, "T")


# --- bytes and files ------------------------------------------------------------------------

BYTE_ROWS = [
    pytest.param(b"ssm T {\n  dims H\x00 = 4\n}\n", 2, 9, "binary file", id="binary-nul"),
    pytest.param(b"\x00\x01\x02\x03" * 64, 1, 1, "binary file", id="binary-noise"),
    pytest.param(b"ssm T {\n  dims H = 4 \xff\xfe\n}\n", 2, 14, "not UTF-8", id="latin1-bytes"),
    pytest.param("ssm T {\n  # caf\u00e9\n}\n".encode("latin-1"), 2, 8, "not UTF-8", id="latin1-comment"),
    pytest.param(b"\xef\xbb\xbf", 1, 1, "empty spec", id="bom-only"),
    pytest.param(b"", 1, 1, "empty spec", id="empty-bytes"),
]


@pytest.mark.parametrize("data, line, column, message", BYTE_ROWS)
def test_bytes_via_loads(data, line, column, message):
    with pytest.raises(ssmc.SpecError) as info:
        load(data, filename="bad.ssm")
    e = info.value
    assert message in e.message
    assert (e.line, e.column) == (line, column)
    assert e.filename == "bad.ssm"
    assert "bad.ssm" in str(e)


@pytest.mark.parametrize("data, line, column, message", BYTE_ROWS)
def test_bytes_via_check(tmp_path, data, line, column, message):
    path = tmp_path / "bad.ssm"
    path.write_bytes(data)
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.check(path)
    e = info.value
    assert message in e.message
    assert (e.line, e.column) == (line, column)
    assert e.filename == str(path)


def test_utf8_with_bom_compiles():
    assert hasattr(load(b"\xef\xbb\xbf" + BASE.encode()), "T")


def test_crlf_positions():
    text = edit({14: "  output y = sum(C * x, N) + DD * u"}).replace("\n", "\r\n")
    with pytest.raises(ssmc.SpecError) as info:
        load(text)
    assert (info.value.line, info.value.column) == (14, 30)


def test_missing_file(tmp_path):
    with pytest.raises(ssmc.SpecError, match="no such spec file"):
        ssmc.check(tmp_path / "nope.ssm")


def test_directory_is_not_a_spec(tmp_path):
    with pytest.raises(ssmc.SpecError, match="directory"):
        ssmc.check(tmp_path)


# --- very deep nesting: a SpecError, never a RecursionError ----------------------------------

DEEP = [
    pytest.param("(1 + " * 5000 + "log_dt" + ")" * 5000, id="parens-5000-with-operators"),
    pytest.param("+".join(["1"] * 20000), id="sum-20000-terms"),
    pytest.param("-" * 5000 + "log_dt", id="unary-minus-5000"),
    pytest.param("-(" * 5000 + "log_dt" + ")" * 5000, id="negated-parens-5000"),
    pytest.param("exp(" * 5000 + "log_dt" + ")" * 5000, id="calls-5000"),
    pytest.param(" ** ".join(["log_dt"] * 5000), id="powers-5000"),
    pytest.param("log_dt" + " * 2" * 20000, id="product-20000-factors"),
]


@pytest.mark.parametrize("expr", DEEP)
def test_deep_nesting_is_a_spec_error(expr):
    text = edit({12: "  discretize zoh, step = " + expr})
    with pytest.raises(ssmc.SpecError) as info:
        load(text)
    e = info.value
    assert "nested too deeply" in e.message
    assert (e.line, e.column) == (12, 26) or (e.line == 12 and e.column <= 27)
    assert "named values" in e.hint


def test_deep_nesting_in_dims_is_a_spec_error():
    with pytest.raises(ssmc.SpecError, match="nested too deeply"):
        load(edit({2: "  dims H = 4, N = " + "(1 + " * 5000 + "1" + ")" * 5000}))


def test_deep_nesting_in_input_term_is_a_spec_error():
    with pytest.raises(ssmc.SpecError, match="nested too deeply"):
        load(edit({11: "  dynamics x' = A x + " + "B * (" * 3000 + "u" + ")" * 3000}))


def test_redundant_parentheses_never_raise_recursion_error():
    # Parentheses around a single name add no depth to the expression; 5000 of them
    # either compile (the language has no limit on redundant parentheses) or are
    # refused with a SpecError, but never escape as RecursionError.
    text = edit({12: "  discretize zoh, step = " + "(" * 5000 + "exp(log_dt)" + ")" * 5000})
    try:
        mod = load(text)
    except ssmc.SpecError as e:
        assert e.line == 12
    else:
        assert hasattr(mod, "T")


def test_nesting_just_under_the_limit_compiles():
    text = edit({12: "  discretize zoh, step = " + "exp(" * 40 + "log_dt" + ")" * 40})
    assert hasattr(load(text), "T")
