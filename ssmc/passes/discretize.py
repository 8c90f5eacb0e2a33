"""discretize: `dynamics(A, E, step)` -> `recurrence(Abar, Ebar)`, derived with sympy.

For each rule the one-dimensional system x' = a x + e is solved (or stepped) over one
step s with sympy, giving x1 = Abar(z) x0 + s * G(z) * e with z = s a. Because every
Abar and G is a function of z alone, the same formulas hold for a matrix A with
Z = s A (functions of one matrix commute). The pass then emits IR for them:

  rule             Abar(z)             G(z)
  zoh              exp(z)              phi1(z) = (exp(z) - 1) / z,  phi1(0) = 1 (sympy limit)
  bilinear         (2 + z) / (2 - z)   2 / (2 - z)
  euler            1 + z               1
  backward_euler   1 / (1 - z)         1 / (1 - z)
  zoh_euler        exp(z)              1

Elementwise structures (diagonal, scalar) use exp / phi1 / division; matrix
structures (dense, dplr, block_diagonal) use expm / phi1m / solve / matvec.

Example:  dynamics(A, B*u, dt) rule=zoh_euler, diagonal
      ->  recurrence(exp(dt * A), dt * (B * u))

Guarantees afterwards: no `dynamics` node; the system is `recurrence(Abar, Ebar)`
with facts on every new node; meta["discretization"] records the derived formulas.
"""
from __future__ import annotations

import functools

import sympy as sp

from ..ir import functions as F
from ..ir.graph import Graph, op
from .shapes import annotate_shapes
from .time import annotate_time

z, s, a, e, x0, x1, t = sp.symbols("z s a e x0 x1 t")
phi1 = sp.Function("phi1")


@functools.lru_cache(maxsize=None)
def derive(rule: str) -> tuple[sp.Expr, sp.Expr]:
    """(Abar(z), G(z)) for a rule, derived from x' = a x + e over one step s."""
    if rule in ("zoh", "zoh_euler"):
        X = sp.Function("X")
        sol = sp.dsolve(sp.Eq(X(t).diff(t), a * X(t) + e), X(t), ics={X(0): x0}).rhs.subs(t, s)
    elif rule == "euler":
        sol = x0 + s * (a * x0 + e)
    elif rule == "backward_euler":
        sol = sp.solve(sp.Eq(x1, x0 + s * (a * x1 + e)), x1)[0]
    elif rule == "bilinear":
        sol = sp.solve(sp.Eq(x1, x0 + s * (a * (x0 + x1) / 2 + e)), x1)[0]
    else:
        raise ValueError(rule)
    abar = sp.simplify(sp.diff(sol, x0)).subs(a, z / s)
    g = sp.simplify(sol.subs(x0, 0) / (s * e)).subs(a, z / s)
    abar, g = sp.simplify(abar), sp.simplify(g)
    if rule == "zoh_euler":
        # Mamba's rule: ZOH for the transition, Euler (s * e) for the input.
        g = sp.Integer(1)
    if rule in ("zoh",):
        # (exp(z) - 1) / z is phi1; sympy confirms it and its z -> 0 limit, used where A = 0.
        assert sp.simplify(g - (sp.exp(z) - 1) / z) == 0
        assert sp.limit(g, z, 0) == 1
        g = phi1(z)
    return abar, g


def _rational(expr: sp.Expr) -> tuple[tuple, tuple]:
    """expr in z as (numerator coeffs, denominator coeffs), each of degree <= 1."""
    num, den = sp.fraction(sp.together(expr))
    pn, pd = sp.Poly(num, z), sp.Poly(den, z)
    if pn.degree() > 1 or pd.degree() > 1:
        raise AssertionError(f"discretize: {expr} is not a ratio of degree-1 polynomials in z")
    c = pd.coeff_monomial(1) if pd.coeff_monomial(1) != 0 else pd.coeff_monomial(z)
    return (tuple(float(pn.coeff_monomial(m) / c) for m in (1, z)),
            tuple(float(pd.coeff_monomial(m) / c) for m in (1, z)))


class _Emit:
    def __init__(self, g: Graph, span, matrix: bool, n: str):
        self.g, self.span, self.matrix, self.n = g, span, matrix, n
        self.new: list[int] = []

    def add(self, kind, *operands, **attrs):
        m = self.g.add(op(kind, self.span, **attrs), *operands)
        self.new.append(m)
        return m

    def const(self, v):
        return self.add("const", value=v)

    def poly(self, coeffs, Z):
        """c0 + c1 Z (times the identity in matrix mode)."""
        c0, c1 = coeffs
        one = self.add("eye", dim=self.n) if self.matrix else self.const(1.0)
        terms = []
        if c0 != 0:
            terms.append(one if c0 == 1 else self.add("mul", self.const(c0), one))
        if c1 == 0:
            return terms[0] if terms else self.const(0.0)
        # c0 I - |c1| Z reads better (and prints better) than c0 I + (-|c1|) Z.
        scaled = Z if abs(c1) == 1 else self.add("mul", self.const(abs(c1)), Z)
        if not terms:
            return scaled if c1 > 0 else self.add("neg", scaled)
        return self.add("add" if c1 > 0 else "sub", terms[0], scaled)

    def function_of(self, f: sp.Expr, Z: int) -> int | None:
        """f(Z) as IR; None when f == 1."""
        if f == 1:
            return None
        if f == sp.exp(z):
            return self.add("expm" if self.matrix else "exp", Z)
        if f == phi1(z):
            return self.add("phi1m" if self.matrix else "phi1", Z)
        num, den = _rational(f)
        p = self.poly(num, Z)
        if den == (1.0, 0.0):
            return p
        q = self.poly(den, Z)
        return self.add("solve", q, p) if self.matrix else self.add("div", p, q)


def discretize(g: Graph) -> Graph:
    """Replace the continuous system by its discrete recurrence, per the rule."""
    g = g.copy()
    meta = g.meta
    sysn = meta["system"]
    o = g.op(sysn)
    structure = o.get("structure")
    matrix = structure in F.MATRIX_STRUCTURES
    n = meta["state_dims"][-1]
    operands = g.operands(sysn)
    A = operands[0]
    # The continuous-time pieces stay in the graph (the discrete ones read them); keep
    # their ids where `explain` can find them, updated if a later pass merges nodes.
    meta["roots"] = {"A": operands[0], "E": operands[1], "step": operands[2] if len(operands) > 2 else None}
    em = _Emit(g, o.span, matrix, n)
    if structure == "block_diagonal":
        A = em.add("blockdiag", A, blocks=o.get("blocks"))
    if o.kind == "recurrence":
        if structure == "block_diagonal":
            g.set_operand(sysn, 0, A)
        meta["discretization"] = None
    else:
        A_, E, step = operands
        rule = o.get("rule")
        abar_f, g_f = derive(rule)
        Z = em.add("mul", step, A)
        abar = em.function_of(abar_f, Z)
        sE = em.add("mul", step, E)
        G = em.function_of(g_f, Z)
        if G is None:
            ebar = sE
        else:
            ebar = em.add("matvec", G, sE) if matrix else em.add("mul", G, sE)
        rec = g.add(op("recurrence", o.span, structure=structure, blocks=o.get("blocks"), rule=rule), abar, ebar)
        g.replace_all_uses(sysn, rec)
        g.erase(sysn)
        meta["system"] = rec
        meta["discretization"] = dict(rule=rule, abar=str(abar_f), g=str(g_f), matrix=matrix)
        em.new.append(rec)
    annotate_shapes(g, em.new)
    annotate_time(g, em.new)
    return g
