"""Triton text for the per-token elementwise ops and their derivatives, derived with sympy.

Why: the backward kernel needs, for every op the loop may hold, the op's reverse-mode
derivative per operand. Typed by hand, a table of derivatives drifts from the forward
formulas (a changed threshold, a safer form in one place and not the other) and every
entry is a chance for a sign or precedence slip. Here each op is defined ONCE, as a sympy
expression of the operands `a` (and `b`); its forward text and its derivatives are
printed from that single definition, the derivatives by `sympy.diff`. Numerically safe
forms are part of the definition (sympy Piecewise), so the derivative inherits them:
softplus is `a` above 20, and phi1 = (exp(a) - 1) / a is sympy's own series near 0, so
its derivative's small-|a| branch is the derivative of that series.

After differentiation a derivative is rewritten, per Piecewise branch, into a cheaper or
safer form of the same function:
  * through the op's result `r` (the kernel has it already): where the forward is a
    rational function of one exp(...), that exp is eliminated in favour of r
    (d exp = r, d sigmoid = r * (1 - r)); otherwise the forward itself is replaced by r
    where it occurs (d sqrt = 0.5 / r, d(a / b)/db = -r / b);
  * through the logistic s = 1 / (1 + exp(-a)) where that leaves no exp in a
    denominator: exp(-a) / (1 + exp(-a))**2 overflows to inf / inf = nan for a below
    about -88 in float32, while a polynomial in s does not (silu, softplus).
Subgradients at kinks follow torch: d|a| = sign(a) (0 at 0), d relu = 0 at 0.

Output, built at import (a few hundred ms, sympy's import included) and deterministic:
  UNARY[op] -> forward format string, `{0}` the operand (as codegen's `_UNARY`).
  VJP[op]   -> one format string per operand: `{G}` the result's gradient, `{a}` and
               `{b}` the operands, `{r}` the result (as codegen's `_VJP`); `mean` also
               uses `{col}`, the reduced dim's name (`s_{col}` its size).
Every placeholder is printed in parentheses wherever an operator touches it (operands
may be expressions such as `v12_t * 3.0`), bare only as a whole call argument.
"""
from __future__ import annotations

import functools

import sympy as sp

__all__ = ["UNARY", "NARY", "VJP", "DEFINITIONS", "derivative", "tables", "to_triton"]

# Real symbols: |a| then differentiates to sign(a), not an expression in re/im.
# (c: clamp's upper bound, its third operand.)
a, b, c = sp.symbols("a b c", real=True)
# The result (`{r}`), the gradient (`{G}`) and the logistic of `a` (rewrites only).
_R, _G, _S = sp.symbols("_r _G _s", real=True)

# Below this |a| phi1 is its series (Triton has no expm1): the cut is part of phi1's
# definition, so its derivative has the same cut.
# In float32, (exp(a) - 1) / a cancels to ~eps / |a| and its derivative
# (r * a - r + 1) / a to ~eps / a**2 for small |a| (x5 wrong at 1.5e-4, 5% at 1e-3 with a
# cut at 1e-4): below 0.1 the series, with 7 terms (truncation ~a^7 / 8! = 2.5e-12 at the
# cut), keeps forward and derivative within 1.1e-5 everywhere
# (tests/backends/test_triton_derivatives.py).
_PHI1_SMALL = sp.Float("0.1")
_PHI1_TERMS = 7
_SOFTPLUS_LINEAR = 20  # above, log(1 + exp(a)) == a in float32 and exp(a) may overflow.

# tanh, expm1 and log1p: the same cut as phi1 (Triton has none of them), below it their
# series (truncation ~1e-13 relative at the cut; above it, exp(2a) + 1 and 1 + a lose at
# most ~eps / 0.1), so each derivative has the same cut.
_TANH_SERIES = sp.horner(sp.tanh(a).series(a, 0, 13).removeO())
_EXPM1_SERIES = sp.horner(sp.exp(a).series(a, 0, 10).removeO() - 1)
_LOG1P_SERIES = sp.horner(sp.log(1 + a).series(a, 0, 15).removeO())

_SIGMOID = 1 / (1 + sp.exp(-a))


class _Logistic(sp.Function):
    """1 / (1 + exp(-w)), kept whole: its derivative L (1 - L) then never divides inf by
    inf where exp(-w) overflows (gelu_tanh's w is cubic in a: it overflows already near
    a = -10 in float32)."""

    def fdiff(self, argindex=1):
        return self * (1 - self)


# GELU's constants, as float literals (no sqrt(pi) left for the printer).
_RSQRT2 = sp.Float(0.7071067811865476, 17)          # 1 / sqrt(2)
_GELU_TANH_K = sp.Float(0.7978845608028654, 17)     # sqrt(2 / pi)
_PHI1_EXACT = (sp.exp(a) - 1) / a
# sympy's series of exp, less 1, over a (the same as series(_PHI1_EXACT), which takes
# ten times as long at import); Horner form: fewer multiplications when printed.
_PHI1_SERIES = sp.horner(sp.expand((sp.exp(a).series(a, 0, _PHI1_TERMS + 1).removeO() - 1) / a))

# The one definition of every elementwise op, as a function of a (and b).
DEFINITIONS: dict[str, sp.Expr] = {
    "add": a + b,
    "sub": a - b,
    "mul": a * b,
    "div": a / b,
    "neg": -a,
    "exp": sp.exp(a),
    "log": sp.log(a),
    "sqrt": sp.sqrt(a),
    "abs": sp.Abs(a),
    "sigmoid": _SIGMOID,
    "silu": a * _SIGMOID,
    "relu": sp.Max(a, 0),
    "softplus": sp.Piecewise((a, a > _SOFTPLUS_LINEAR), (sp.log(1 + sp.exp(a)), True)),
    "phi1": sp.Piecewise((_PHI1_SERIES, sp.Abs(a) < _PHI1_SMALL), (_PHI1_EXACT, True)),
    # 1 - 2 / (exp(2a) + 1): exact at both ends (exp(2a) overflows to inf: 1; 0: -1).
    "tanh": sp.Piecewise((_TANH_SERIES, sp.Abs(a) < _PHI1_SMALL), (1 - 2 / (sp.exp(2 * a) + 1), True)),
    "expm1": sp.Piecewise((_EXPM1_SERIES, sp.Abs(a) < _PHI1_SMALL), (sp.exp(a) - 1, True)),
    "log1p": sp.Piecewise((_LOG1P_SERIES, sp.Abs(a) < _PHI1_SMALL), (sp.log(1 + a), True)),
    "square": a ** 2,  # pow(x, 2)
    # Real parts and conjugates of real values: the identity.
    "re": a,
    "conj": a,
    # torch's exact GELU a * Phi(a), and its tanh approximation a/2 (1 + tanh(w)), written
    # a * logistic(2 w), the same function without tanh's 1 - 2 / (exp(2w) + 1).
    "erf": sp.erf(a),
    "gelu": a / 2 * (1 + sp.erf(_RSQRT2 * a)),
    "gelu_tanh": a * _Logistic(2 * _GELU_TANH_K * (a + sp.Float(0.044715, 17) * a ** 3)),
    # min and max: at a tie torch gives each operand half the gradient.
    "min": sp.Piecewise((a, a < b), (b, a > b), ((a + b) / 2, True)),
    "max": sp.Piecewise((a, a > b), (b, a < b), ((a + b) / 2, True)),
    # clamp(a, min = b, max = c) = min(max(a, b), c) as torch.clamp: a gets the gradient
    # where b <= a <= c, a bound where it is the result (b > c gives c).
    "clamp": sp.Piecewise((c, (a > c) | (c < b)), (b, a < b), (a, True)),
    "clamp_min": sp.Piecewise((b, a < b), (a, True)),
    "clamp_max": sp.Piecewise((b, a > b), (a, True)),
}
# Reductions over the tile's columns, not elementwise: their gradient is broadcast back.
_REDUCTIONS = {"sum": ("{G}",), "mean": ("{G} / s_{col}",)}


# ---------------------------------------------------------------------------------------
# Printer: sympy -> Triton expression text.
# ---------------------------------------------------------------------------------------

# Binding strength of what a printed piece is, and the least its context needs.
_ARG, _CMP, _ADD, _MUL, _NEG, _ATOM = 0, 30, 40, 50, 60, 100


def _wrap(text: str, own: int, need: int) -> str:
    return f"({text})" if own < need else text


def _number(x) -> tuple[str, int]:
    """Float literals only: no Python int reaches a division, no 1/3 truncates."""
    if isinstance(x, sp.Rational) and not isinstance(x, sp.Integer):
        p, q = int(x.p), int(x.q)
        if q & (q - 1) == 0:  # a power of two: exact as a float literal.
            text = repr(p / q)
        else:
            return f"{float(p)!r} / {float(q)!r}", _MUL
    else:
        v = float(x)
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"no Triton literal for {x}")
        text = repr(v)
    return text, (_NEG if text.startswith("-") else _ATOM)


class _Printer:
    """A recursive printer with precedence: `p(expr, need)` parenthesises what binds
    less tightly than its context needs. Placeholders count as binding least of all."""

    def __init__(self, names: dict[sp.Symbol, str]):
        self.names = names

    def p(self, e, need: int = _ARG) -> str:
        text, own = self.node(e)
        return _wrap(text, own, need)

    def node(self, e) -> tuple[str, int]:
        if isinstance(e, sp.Symbol):
            if e not in self.names:
                raise ValueError(f"no placeholder for {e}")
            return self.names[e], _ARG  # arbitrary text: parenthesised in any operation
        if e.is_Number:
            return _number(e)
        if e.is_number and e.is_real:
            # A constant such as 2 / sqrt(pi) (erf's derivative): its value as a literal.
            return _number(sp.Float(sp.N(e, 17)))
        if isinstance(e, sp.erf):
            return f"tl.erf({self.p(e.args[0])})", _ATOM
        if isinstance(e, _Logistic):
            return f"1.0 / (1.0 + tl.exp({self.p(-e.args[0], _NEG)}))", _MUL
        if isinstance(e, (sp.And, sp.Or)):
            # Triton's & and | on conditions bind tighter than comparisons: each in parentheses.
            joint = " & " if isinstance(e, sp.And) else " | "
            parts = sorted(e.args, key=sp.default_sort_key)
            return joint.join(f"({self.p(x)})" for x in parts), _CMP
        if isinstance(e, sp.Add):
            return self.add(e)
        if isinstance(e, sp.Mul) or (isinstance(e, sp.Pow) and e.exp.is_negative):
            return self.mul(e)
        if isinstance(e, sp.Pow):
            return self.pow(e)
        if isinstance(e, sp.exp):
            return f"tl.exp({self.p(e.args[0])})", _ATOM
        if isinstance(e, sp.log):
            return f"tl.log({self.p(e.args[0])})", _ATOM
        if isinstance(e, sp.Abs):
            return f"tl.abs({self.p(e.args[0])})", _ATOM
        if isinstance(e, sp.sign):
            x = e.args[0]
            return self.where(x > 0, 1, self.where_text(x < 0, -1, 0)), _ATOM
        if isinstance(e, sp.Heaviside):
            x, h0 = e.args[0], (e.args[1] if len(e.args) > 1 else sp.S.Half)
            inner = self.p(h0) if h0 == 0 else self.where_text(x < 0, 0, h0)
            return self.where(x > 0, 1, inner), _ATOM
        if isinstance(e, (sp.Max, sp.Min)):
            if len(e.args) != 2:
                raise ValueError(f"{e}: only two-argument max/min")
            # The number last, whatever sympy's order: `tl.maximum(x, 0.0)`.
            x, y = sorted(e.args, key=lambda t: (t.is_Number, sp.default_sort_key(t)))
            fn = "tl.maximum" if isinstance(e, sp.Max) else "tl.minimum"
            return f"{fn}({self.p(x)}, {self.p(y)})", _ATOM
        if isinstance(e, sp.Piecewise):
            return self.piecewise(e.args), _ATOM
        if isinstance(e, sp.core.relational.Relational):
            op = {sp.StrictLessThan: "<", sp.LessThan: "<=", sp.StrictGreaterThan: ">",
                  sp.GreaterThan: ">=", sp.Equality: "==", sp.Unequality: "!="}[type(e)]
            return f"{self.p(e.lhs, _CMP + 1)} {op} {self.p(e.rhs, _CMP + 1)}", _CMP
        raise ValueError(f"no Triton printing for {e!r} ({type(e).__name__})")

    def where_text(self, cond, x, y) -> str:
        return self.where(cond, x, self.p(sp.sympify(y)))

    def where(self, cond, x, y_text: str) -> str:
        return f"tl.where({self.p(cond)}, {self.p(sp.sympify(x))}, {y_text})"

    def piecewise(self, pieces) -> str:
        (expr, cond), rest = pieces[0], pieces[1:]
        if cond == sp.true:
            return self.p(expr)
        if not rest:
            raise ValueError("a Piecewise without a final True branch")
        return self.where(cond, expr, self.piecewise(rest))

    def add(self, e) -> tuple[str, int]:
        terms = e.as_ordered_terms()  # sympy's canonical order: deterministic text
        out = self.p(terms[0], _ADD)
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                out += f" - {self.p(-t, _ADD + 1)}"
            else:
                out += f" + {self.p(t, _ADD + 1)}"
        return out, _ADD

    def mul(self, e) -> tuple[str, int]:
        coeff, factors = e.as_coeff_mul()
        neg = coeff < 0
        coeff = -coeff if neg else coeff
        factors = list(factors)
        adds = [f for f in factors if isinstance(f, sp.Add)]
        if neg and len(adds) == 1:
            # -s * (s - 1) reads better, and the same, as s * (1 - s).
            factors[factors.index(adds[0])] = -adds[0]
            neg = False
        num, den = [], []
        for f in factors:
            if isinstance(f, sp.Pow) and f.exp.is_negative:
                den.append(sp.Pow(f.base, -f.exp))
            else:
                num.append(f)
        num_text = [self.p(f, _MUL) for f in num]
        den_text = [self.p(f, _MUL) for f in den]
        if coeff != 1:
            if isinstance(coeff, sp.Rational) and coeff.q & (coeff.q - 1) != 0:
                # 1/3 as `/ 3.0`: what a person would write, and correctly rounded.
                if coeff.p != 1:
                    num_text.insert(0, _number(sp.Integer(coeff.p))[0])
                den_text.insert(0, _number(sp.Integer(coeff.q))[0])
            else:
                num_text.insert(0, _number(coeff)[0])
        text = " * ".join(num_text) if num_text else "1.0"
        if len(den_text) == 1:
            # The right operand of `/` must be a single operand: x / (y * y), x / 3.0.
            text += " / " + (self.p(den[0], _MUL + 1) if den else den_text[0])
        elif den_text:
            text += " / (" + " * ".join(den_text) + ")"
        return ("-" + text if neg else text), _MUL

    def pow(self, e) -> tuple[str, int]:
        base, n = e.base, e.exp
        if n == sp.S.Half:
            return f"tl.sqrt({self.p(base)})", _ATOM
        if n.is_Integer and n > 1:
            # Repeated multiplication: exact, and no `**` in a kernel.
            return " * ".join([self.p(base, _MUL + 1)] * int(n)), _MUL
        raise ValueError(f"no Triton printing for the power {e}")


def to_triton(expr, names: dict[sp.Symbol, str]) -> str:
    """Triton expression text for a sympy expression; `names` maps each free symbol to
    the text printed for it (a placeholder such as "{a}")."""
    return _Printer(names).p(sp.sympify(expr))


# ---------------------------------------------------------------------------------------
# Derivatives.
# ---------------------------------------------------------------------------------------

def _branches(expr):
    """(expression, condition) pairs; one True branch for what is not a Piecewise."""
    return list(expr.args) if isinstance(expr, sp.Piecewise) else [(expr, sp.true)]


def _exp_atoms(expr):
    return sorted(expr.atoms(sp.exp), key=sp.default_sort_key)


def _denominators(expr) -> set:
    """The factors (bases) of expr's denominator over a common one."""
    den = sp.fraction(sp.together(expr))[1]
    return {f.base if f.is_Pow else f for f in sp.Mul.make_args(sp.factor(den)) if not f.is_Number}


def _via_result(d, f):
    """d with the forward f (the same branch) replaced by the result symbol, or None."""
    if f.is_Symbol or f.is_Number:
        return None
    gens = _exp_atoms(f)
    if len(gens) == 1 and not f.has(sp.log):
        # f is rational in one exp(..): eliminate that exp in favour of r.
        # f = p(t) / q(t) = r with t that exp: linear in t, solved directly (sympy.solve
        # would take most of the import time checking its solutions).
        t = sp.Dummy("t")
        p, q = sp.fraction(sp.cancel(f.subs(gens[0], t)))
        eq = sp.expand(p - _R * q)
        if sp.degree(eq, t) == 1:
            sol = -eq.coeff(t, 0) / eq.coeff(t, 1)
            cand = sp.factor(sp.cancel(d.subs(gens[0], sol)))
            # No exp left, and no new way to divide by zero: silu's r * (1 + a - r) / a
            # is exact but 0 / 0 at a = 0, where d itself divides only by 1 + exp(-a).
            if not cand.has(sp.exp) and _denominators(cand) <= _denominators(d):
                return cand
        return None
    cand = d.subs(f, _R)
    return cand if cand.has(_R) and sp.count_ops(cand) < sp.count_ops(d) else None


def _via_logistic(d, x):
    """d as a polynomial in s = 1 / (1 + exp(-x)) (s in no denominator, no exp left),
    with s printed as that expression, or None."""
    if not d.has(sp.exp):
        return None
    cand = sp.factor(sp.cancel(d.subs(sp.exp(x), _S / (1 - _S))))
    if cand.has(sp.exp) or sp.fraction(cand)[1].has(_S):
        return None
    return cand.subs(_S, 1 / (1 + sp.exp(-x)))


def _tidy(d, f, x):
    """One branch of a derivative in its cheapest safe form (see the module's docstring)."""
    # Kinks: torch's subgradient, H(0) = 0 (sign(0) = 0 already).
    d = d.replace(sp.Heaviside, lambda arg, *h0: sp.Heaviside(arg, 0))
    r = _via_result(d, f)
    if r is not None:
        return r
    s = _via_logistic(d, x) if x is not None else None
    if s is not None:
        return s
    if x is not None and not d.is_Number and d.is_polynomial(x):
        return sp.horner(d, x)
    return d


def derivative(f, x):
    """df/dx, Piecewise branch by branch, each branch tidied against f's same branch."""
    d = sp.diff(f, x)
    fb, db = _branches(f), _branches(d)
    if len(fb) != len(db) or any(fc != dc for (_, fc), (_, dc) in zip(fb, db)):
        # diff keeps a Piecewise's conditions; anything else is tidied as a whole.
        fb = [(f, c) for _, c in db]
    unary = len(f.free_symbols & {a, b}) == 1
    pieces = [(_tidy(de, fe, x if unary else None), dc) for (de, dc), (fe, _) in zip(db, fb)]
    return pieces[0][0] if len(pieces) == 1 else sp.Piecewise(*pieces)


_VJP_NAMES = {a: "{a}", b: "{b}", c: "{c}", _R: "{r}", _G: "{G}"}


@functools.lru_cache(maxsize=None)
def tables() -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """(UNARY, VJP), printed from DEFINITIONS. Cached: sympy's work is done once."""
    unary, vjp = {}, {}
    for name, f in DEFINITIONS.items():
        operands = [s for s in (a, b, c) if f.has(s)]
        if operands == [a]:
            unary[name] = to_triton(f, {a: "{0}"})
        vjp[name] = tuple(to_triton(_G * derivative(f, s), _VJP_NAMES) for s in operands)
    vjp.update(_REDUCTIONS)
    return unary, vjp


@functools.lru_cache(maxsize=None)
def nary() -> dict[str, str]:
    """Forward text of the functions of several operands that are no operator (min, max,
    clamp): `{0}`, `{1}`, `{2}` the operands."""
    return {name: to_triton(f, {a: "{0}", b: "{1}", c: "{2}"}) for name, f in DEFINITIONS.items()
            if name in ("min", "max", "clamp", "clamp_min", "clamp_max")}


UNARY, VJP = tables()
NARY = nary()
