"""The sympy-derived Triton formulas (backends/triton_backend/derivatives.py), without Triton.

The printed strings are evaluated with numpy standing in for `tl` (test-only evaluation
of text the compiler itself generated, in a namespace with no builtins) and checked:
they cover codegen's hand-written tables, the forwards agree with independent numpy
references, the derivatives with central finite differences of those references and
with the hand-written derivatives, they stay finite where the naive derivative overflows
to nan, every placeholder is parenthesised, and the text is deterministic.
"""
from __future__ import annotations

import io
import os
import string
import subprocess
import sys
import tokenize
from types import SimpleNamespace

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings, strategies as st

# The tables as first written by hand (before they were derived): a second, independent
# writing of every formula, kept here as an oracle.
_UNARY = {
    "exp": "tl.exp({0})", "log": "tl.log({0})", "sqrt": "tl.sqrt({0})", "abs": "tl.abs({0})",
    "neg": "-({0})", "sigmoid": "1.0 / (1.0 + tl.exp(-({0})))", "silu": "({0}) / (1.0 + tl.exp(-({0})))",
    "relu": "tl.maximum({0}, 0.0)", "re": "{0}", "conj": "{0}",
    "softplus": "tl.where({0} > 20.0, {0}, tl.log(1.0 + tl.exp({0})))",
    # (exp(z) - 1) / z with its series where z is small (Triton has no expm1).
    "phi1": "tl.where(tl.abs({0}) < 1e-4, 1.0 + ({0}) * (0.5 + ({0}) / 6.0), (tl.exp({0}) - 1.0) / ({0}))",
}
# Reverse-mode derivatives, per op and operand: {G} the result's gradient, {a} and {b}
# the operands, {r} the result.
_SIG = "(1.0 / (1.0 + tl.exp(-({a}))))"
_VJP = {
    "add": ("{G}", "{G}"),
    "sub": ("{G}", "-{G}"),
    "mul": ("{G} * {b}", "{G} * {a}"),
    "div": ("{G} / {b}", "-{G} * {a} / ({b} * {b})"),
    "neg": ("-{G}",),
    "exp": ("{G} * {r}",),
    "log": ("{G} / {a}",),
    "sqrt": ("{G} * 0.5 / {r}",),
    "abs": ("{G} * tl.where({a} >= 0, 1.0, -1.0)",),
    "sigmoid": ("{G} * {r} * (1.0 - {r})",),
    "silu": ("{G} * (" + _SIG + " + ({a}) * " + _SIG + " * (1.0 - " + _SIG + "))",),
    "relu": ("{G} * tl.where({a} > 0, 1.0, 0.0)",),
    "softplus": ("{G} / (1.0 + tl.exp(-({a})))",),
    # d/dz (exp(z) - 1) / z, with its series 1/2 + z/3 near 0.
    "phi1": ("{G} * tl.where(tl.abs({a}) < 1e-4, 0.5 + ({a}) / 3.0, "
             "(({a}) * tl.exp({a}) - tl.exp({a}) + 1.0) / (({a}) * ({a})))",),
    "re": ("{G}",),
    "conj": ("{G}",),
    "sum": ("{G}",),
    "mean": ("{G} / s_{col}",),
    "square": ("{G} * 2.0 * {a}",),
}

from ssmc.backends.triton_backend import derivatives as D  # noqa: E402

# numpy as `tl`: the functions the printer may emit.
import math  # noqa: E402

TL = SimpleNamespace(exp=np.exp, log=np.log, sqrt=np.sqrt, abs=np.abs, where=np.where,
                     maximum=np.maximum, minimum=np.minimum, erf=np.vectorize(math.erf, otypes=[np.float64]))

# Plain names for the placeholders, and an expression of the same value that breaks if
# a placeholder is not parenthesised: `2.0 * a - a` is exactly `a` (Sterbenz), but
# `-{a}` gives -3a, `x / {a}` gives x / 2 * a - a, `x * {a}` gives 2xa - a.
PLAIN = {"a": "a", "b": "b", "c": "c", "G": "G", "r": "r", "col": "n"}
TRICKY = {k: f"2.0 * {v} - {v}" for k, v in PLAIN.items() if k != "col"} | {"col": "n"}


def run(fmt: str, fill: dict, **values):
    """Evaluate a format string of Triton text with numpy, placeholders filled by `fill`."""
    text = fmt.format(*([fill["a"]] if "{0}" in fmt else []), **fill)
    with np.errstate(all="ignore"):
        return eval(compile(text, "<triton>", "eval"), {"__builtins__": {}, "tl": TL}, dict(values))


def forward(table, op, x):
    return run(table[op], PLAIN, a=x)


def grads(table, fwd_table, op, x, y=None, g=1.7):
    """Each operand's gradient contribution from `table`'s formulas at (x, y)."""
    r = forward(fwd_table, op, x) if y is None else BINARY_REF[op](x, y)
    return [run(f, PLAIN, G=g, a=x, b=y, r=r, n=4.0) for f in table[op]]


def sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))  # accurate in relative terms for large |x|


def phi1(x):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        return np.where(x == 0.0, 1.0, np.expm1(x) / np.where(x == 0.0, 1.0, x))


# Independent references (numpy's own functions, not the printed text).
UNARY_REF = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "neg": np.negative,
    "sigmoid": sigmoid, "silu": lambda x: x * sigmoid(x), "relu": lambda x: np.maximum(x, 0.0),
    "softplus": lambda x: np.logaddexp(0.0, x), "phi1": phi1, "square": lambda x: x * x,
    "re": lambda x: x, "conj": lambda x: x,
    # erf and GELU from math.erf and numpy's tanh (the formulas of the language page)
    "erf": np.vectorize(math.erf, otypes=[np.float64]),
    # (with erfc: 1 + erf(x / sqrt 2) cancels for x below -5, and so would the finite differences)
    "gelu": lambda x: x * 0.5 * np.vectorize(math.erfc, otypes=[np.float64])(-x / math.sqrt(2.0)),
    # 0.5 (1 + tanh(w)) written as the logistic of 2w: 1 + tanh(w) cancels for w << 0, and
    # the central difference of that rounding (x = -5.5: 4e-5 relative) is not the derivative's.
    "gelu_tanh": lambda x: x / (1.0 + np.exp(np.minimum(-2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3),
                                                       700.0))),
}
BINARY_REF = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}

# Points per op: negatives, near 0 (phi1's series cut at 1e-4 on both sides), large
# values (softplus's linear branch at 20), off the kinks of abs/relu and the log/sqrt domains.
_GENERAL = [-30.0, -7.5, -2.0, -1.0, -0.3, -1e-3, 1e-3, 0.25, 1.0, 2.5, 7.0, 19.5, 25.0, 40.0]
_POSITIVE = [1e-3, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 1e3]
POINTS = {op: _GENERAL for op in UNARY_REF} | {
    "log": _POSITIVE, "sqrt": _POSITIVE,
    "phi1": _GENERAL + [s * v for s in (1, -1) for v in (1e-6, 5e-5, 9.9e-5, 1.01e-4, 3e-4, 1e-2, 0.1, 3.0)],
    "softplus": _GENERAL + [19.9, 20.1, 30.0, 100.0, 500.0, -100.0, -500.0],
}
POINTS2 = [(x, y) for x in (-3.0, -0.5, 0.7, 12.0) for y in (-2.5, -0.1, 0.3, 4.0)]
UNARY_OPS = sorted(UNARY_REF)
SMOOTH_NEAR_0 = {"phi1", "exp", "sigmoid", "silu", "softplus", "square", "neg", "re", "conj", "erf", "gelu",
                 "gelu_tanh"}


def step(op, x):
    """A central-difference step that stays clear of kinks and domain edges."""
    h = 1e-5 * max(abs(x), 1e-2)
    return h if op in SMOOTH_NEAR_0 else min(h, abs(x) / 4)


def fd(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


def check_unary(op, x, g=1.7):
    want_f = UNARY_REF[op](x)
    # atol: softplus's log(1 + exp(a)) (its definition, as the hand-written one) rounds
    # 1 + exp(a) for very negative a, exact to 1e-16 only in absolute terms.
    np.testing.assert_allclose(forward(D.UNARY, op, x), want_f, rtol=1e-9, atol=1e-15,
                               err_msg=f"forward of {op} at {x}")
    want = g * fd(UNARY_REF[op], x, step(op, x))
    (got,) = grads(D.VJP, D.UNARY, op, x, g=g)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, err_msg=f"d {op} at {x}")


# --- (a) every hand-written entry has a derived one ------------------------------------

def test_covers_the_hand_written_tables():
    assert set(_UNARY) <= set(D.UNARY), set(_UNARY) - set(D.UNARY)
    assert set(_VJP) <= set(D.VJP), set(_VJP) - set(D.VJP)
    for op, old in _VJP.items():
        assert len(D.VJP[op]) == len(old), op


def _fields(fmt):
    return {f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None}


def test_placeholders_and_literals():
    """Only the placeholders codegen fills (unary ops get b=None: no {b} there), and
    Triton-safe text: float literals only, no `**` or `//`."""
    for op, fmt in D.UNARY.items():
        assert _fields(fmt) == {"0"}, (op, fmt)
    for op, fmts in D.VJP.items():
        allowed = {1: {"G", "a", "r"}, 2: {"G", "a", "b", "r"}, 3: {"G", "a", "b", "c", "r"}}[len(fmts)]
        allowed |= {"col"} if op == "mean" else set()
        for fmt in fmts:
            assert _fields(fmt) <= allowed, (op, fmt)
    for fmt in list(D.UNARY.values()) + [f for fs in D.VJP.values() for f in fs]:
        text = fmt.format("x", **PLAIN)
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NUMBER:
                assert "." in tok.string or "e" in tok.string.lower(), (fmt, tok.string)
            assert tok.string not in ("**", "//"), fmt


# --- (b) forwards against numpy, derivatives against finite differences ----------------

@pytest.mark.parametrize("op", UNARY_OPS)
def test_unary_on_a_grid(op):
    for x in POINTS[op]:
        check_unary(op, x)


def _domain(op):
    if op in ("log", "sqrt"):
        return st.floats(1e-3, 1e4)
    if op in ("abs", "relu"):
        return st.floats(1e-3, 50.0) | st.floats(-50.0, -1e-3)
    if op == "phi1":
        return st.floats(-1e-3, 1e-3) | st.floats(-40.0, 40.0)
    if op == "softplus":
        return st.floats(-600.0, 600.0).filter(lambda x: abs(x - 20.0) > 1e-3)
    return st.floats(-40.0, 40.0)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_unary_random_points(data):
    op = data.draw(st.sampled_from(UNARY_OPS))
    check_unary(op, data.draw(_domain(op)))


@pytest.mark.parametrize("op", sorted(BINARY_REF))
def test_binary(op):
    f = BINARY_REF[op]
    for x, y in POINTS2:
        ga, gb = grads(D.VJP, D.UNARY, op, x, y, g=1.7)
        np.testing.assert_allclose(ga, 1.7 * fd(lambda t: f(t, y), x, 1e-6), rtol=1e-6, err_msg=f"d{op}/da")
        np.testing.assert_allclose(gb, 1.7 * fd(lambda t: f(x, t), y, 1e-6), rtol=1e-6, err_msg=f"d{op}/db")


# --- min, max, clamp: forwards, derivatives, and torch's rule at ties --------------------

NARY_REF = {
    "min": np.minimum, "max": np.maximum,
    "clamp": lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    "clamp_min": np.maximum, "clamp_max": np.minimum,
}


def _nary_grads(op, *xs, g=1.3):
    names = dict(zip("abc", xs))
    r = NARY_REF[op](*xs)
    return [run(f, PLAIN, G=g, r=r, **names) for f in D.VJP[op]]


@pytest.mark.parametrize("op", sorted(NARY_REF))
def test_nary_forward_and_derivatives(op):
    n = len(D.VJP[op])
    pts = [(-3.0, -0.5, 0.7), (0.2, -0.5, 0.7), (2.0, -0.5, 0.7), (0.0, 1.0, -1.0), (-0.4, 0.3, 0.1),
           (5.0, 4.0, 3.0), (-2.0, 0.1, 9.0)]
    for p in pts:
        xs = p[:n]
        got = eval(compile(D.NARY[op].format("x0", "x1", "x2"), "<triton>", "eval"),
                   {"__builtins__": {}, "tl": TL}, {f"x{i}": v for i, v in enumerate(xs)})
        assert got == NARY_REF[op](*xs), (op, xs)
        grads_ = _nary_grads(op, *xs)
        for k in range(n):
            def f(t, k=k):
                ys = list(xs)
                ys[k] = t
                return NARY_REF[op](*ys)
            np.testing.assert_allclose(grads_[k], 1.3 * fd(f, xs[k], 1e-7), rtol=1e-6, atol=1e-12,
                                       err_msg=f"d {op} / d operand {k} at {xs}")


def test_nary_ties_follow_torch():
    """At ties (no finite difference says anything there) the table gives torch's
    subgradients: min/max half to each, clamp's x at its ends, a bound where lo > hi."""
    torch = pytest.importorskip("torch")

    def torch_grads(fn, *xs):
        ts = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in xs]
        (fn(*ts) * 1.3).backward()
        return [float(t.grad) for t in ts]

    tfn = {"min": torch.minimum, "max": torch.maximum,
           "clamp": lambda x, lo, hi: torch.clamp(x, min=lo, max=hi),
           "clamp_min": lambda x, lo: torch.clamp(x, min=lo), "clamp_max": lambda x, hi: torch.clamp(x, max=hi)}
    cases = {"min": [(1.0, 1.0)], "max": [(-2.0, -2.0)], "clamp_min": [(0.5, 0.5)], "clamp_max": [(0.5, 0.5)],
             "clamp": [(-0.5, -0.5, 0.7), (0.7, -0.5, 0.7), (0.0, 1.0, -1.0), (2.0, 1.0, -1.0), (-3.0, 1.0, -1.0)]}
    for op, pts in cases.items():
        for xs in pts:
            np.testing.assert_allclose(_nary_grads(op, *xs), torch_grads(tfn[op], *xs), err_msg=f"{op} at {xs}")


def test_nary_no_nan_far_out():
    # gelu_tanh's logistic of a cubic overflows from a = -10 on in float32
    for x in (-1e4, -60.0, -12.0, 12.0, 60.0, 1e4):
        for op in ("gelu", "gelu_tanh", "erf"):
            (got,) = grads(D.VJP, D.UNARY, op, np.float32(x), g=np.float32(1.0))
            assert np.isfinite(got), (op, x, got)


def test_phi1_at_zero():
    """Exactly 0: the series branch (the other one is 0 / 0 there)."""
    assert forward(D.UNARY, "phi1", 0.0) == 1.0
    assert grads(D.VJP, D.UNARY, "phi1", 0.0, g=1.0) == [0.5]


def test_phi1_derivative_in_float32_near_the_cut():
    for x in (3e-4, -1e-3, 1e-3, 3e-3):
        x32 = np.float32(x)
        (got,) = grads(D.VJP, D.UNARY, "phi1", x32, g=np.float32(1.0))
        want = fd(phi1, float(x32), 1e-7)
        np.testing.assert_allclose(float(got), want, rtol=1e-3, err_msg=f"float32 d phi1 at {x}")


def test_kinks_take_torchs_subgradient():
    assert grads(D.VJP, D.UNARY, "abs", 0.0, g=1.0) == [0.0]
    assert grads(D.VJP, D.UNARY, "relu", 0.0, g=1.0) == [0.0]


@pytest.mark.parametrize("dtype,big", [(np.float64, 1000.0), (np.float32, 100.0)])
def test_no_overflow_to_nan(dtype, big):
    """Where exp(-a) overflows, the derivative stays finite (the naive sympy derivative
    of silu, a * exp(-a) / (1 + exp(-a))**2, is inf / inf there)."""
    for op in ("sigmoid", "silu", "softplus", "phi1", "relu", "abs", "neg"):
        for x in (-big, big) if op != "phi1" else (-big,):
            x = dtype(x)
            (got,) = grads(D.VJP, D.UNARY, op, x, g=dtype(1.0))
            assert np.isfinite(got), (op, x, got)
    x = sp.Symbol("x", real=True)
    naive = D.to_triton(sp.diff(x / (1 + sp.exp(-x)), x), {x: "{a}"})
    assert not np.isfinite(run(naive, PLAIN, a=dtype(-big)))  # why the rewrite exists


# --- (c) agreement with the hand-written tables ----------------------------------------

@pytest.mark.parametrize("op", UNARY_OPS)
def test_agrees_with_hand_written(op):
    for x in POINTS[op]:
        if op in _UNARY:
            np.testing.assert_allclose(forward(D.UNARY, op, x), forward(_UNARY, op, x), rtol=1e-12)
        if op in _VJP:
            # The old table's {r} is the old forward's result; unary square has none.
            old_fwd = _UNARY if op in _UNARY else D.UNARY
            np.testing.assert_allclose(grads(D.VJP, D.UNARY, op, x), grads(_VJP, old_fwd, op, x),
                                       rtol=1e-7, atol=1e-14, err_msg=f"{op} at {x}")


@pytest.mark.parametrize("op", sorted(BINARY_REF))
def test_binary_agrees_with_hand_written(op):
    for x, y in POINTS2:
        np.testing.assert_allclose(grads(D.VJP, D.UNARY, op, x, y), grads(_VJP, D.UNARY, op, x, y), rtol=1e-12)


def test_reductions():
    assert D.VJP["sum"] == _VJP["sum"] and D.VJP["mean"] == _VJP["mean"]


# --- precedence: placeholders filled with expressions ----------------------------------

def test_placeholders_are_parenthesised():
    for op in UNARY_OPS:
        for x in POINTS[op][:6] + [POINTS[op][-1]]:
            plain = run(D.UNARY[op], PLAIN, a=x)
            np.testing.assert_array_equal(run(D.UNARY[op], TRICKY, a=x), plain, err_msg=D.UNARY[op])
            r = plain
            for fmt in D.VJP[op]:
                np.testing.assert_array_equal(run(fmt, TRICKY, G=1.7, a=x, r=r), run(fmt, PLAIN, G=1.7, a=x, r=r),
                                              err_msg=fmt)
    for op in BINARY_REF:
        for fmt in D.VJP[op]:
            v = dict(G=1.7, a=0.7, b=-2.5, r=BINARY_REF[op](0.7, -2.5))
            assert run(fmt, TRICKY, **v) == run(fmt, PLAIN, **v), fmt


def test_printer():
    a, b = D.a, D.b
    names = {a: "{a}", b: "{b}"}
    assert D.to_triton(a / 3, names) == "({a}) / 3.0"
    assert D.to_triton(a / 4, names) == "0.25 * ({a})"
    assert D.to_triton(1 / (a * b), names) == "1.0 / (({a}) * ({b}))"
    assert D.to_triton(a ** 3, names) == "({a}) * ({a}) * ({a})"
    assert D.to_triton(1 / (1 + a) ** 2, names) == "1.0 / ((({a}) + 1.0) * (({a}) + 1.0))"
    assert D.to_triton(sp.sqrt(a) / b, names) == "tl.sqrt({a}) / ({b})"
    with pytest.raises(ValueError):
        D.to_triton(a ** sp.Rational(1, 3), names)  # no `**` with a fractional exponent
    with pytest.raises(ValueError):
        D.to_triton(a + sp.Symbol("z"), names)  # every symbol needs a placeholder


# --- (d) deterministic text ------------------------------------------------------------

def test_deterministic_in_process():
    D.tables.cache_clear()
    try:
        unary, vjp = D.tables()
    finally:
        D.tables.cache_clear()
        D.tables()
    assert unary == D.UNARY and vjp == D.VJP
    assert list(unary) == list(D.UNARY) and list(vjp) == list(D.VJP)


def test_deterministic_across_hash_seeds():
    """Fresh interpreters with different string hashing print the same tables."""
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('d', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(repr((m.UNARY, m.VJP)))")
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code, D.__file__], env=env, check=True,
                                capture_output=True, text=True).stdout)
    assert outs == {repr((D.UNARY, D.VJP)) + "\n"}


def test_codegen_prints_the_derived_tables():
    from ssmc.backends.triton_backend import codegen
    assert codegen._VJP is D.VJP
    assert all(codegen._UNARY[k] == D.UNARY[k] for k in codegen._UNARY)
