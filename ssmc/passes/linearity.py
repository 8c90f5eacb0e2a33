"""check_linearity: the input term is linear in the primary input, and the system is
classified LTI or selective.

The input term E is translated to sympy with the primary input as a symbol `u`.
Values computed by `linear(...)` or `conv(...)`, params, other inputs and dims are
opaque coefficients. sum/mean/re/im/conj of a value linear in u are linear in u, each
a sympy symbol of its own (keyed by its node), so algebra cannot cancel values that are
not equal: `u / sum(u, H)` and, in the readout, `r / sum(r, H)` are of degree 0 in u (x)
as one scalar but not linear in the symbols; linearity is judged jointly in u and those
symbols (every derivative free of all of them). Where that makes
E linear, a `linear(e, ...)` without bias is first read as W * e instead (W static), so
`x' = A x + linear(u, N)` with static A is LTI, exactly like `sum(W * u, H)`.

`prev(e)` is linear in u where e is (a shifted input counts as an input: Mamba-3's
`beta * prev(B * u)`), times a per-token marker, so `prev(u) * u` is not linear and a
term with a shift is never LTI; `prev(x)` of the state likewise in the readout.

Named values are coefficients (the contract, section 7). The check first inlines them
(so `w = 2 * u; E = B * w` stays linear in u with a static coefficient and an LTI system
stays LTI); when that view is not linear, each named value other than E itself is taken
as an opaque coefficient and only what E writes out is checked: `B * u` with
`B = sum(W_B * u, H)` is linear (a per-token coefficient), `u * u` or `exp(u)` written
in E is not.

E = c * u + f: the forcing f (the part without u) must be per-token, like
`B * u + linear(u, N)` or `B * silu(conv(...))` (a term driven only by features); a part
that depends on no input at all (`B * u + 1`, `+ b` for a param b) is an error: a
constant forcing is not an input term, and it would make an LTI system affine.

The same translation of the output in the state symbol `x` tells whether the
readout is linear in the state and whether its coefficient is per-token; there a
linear(...)/conv(...) of the state is linear in it too (not an opaque coefficient:
`silu(linear(x, H))` is not linear, and a per-token gate inside one is a per-token
readout), and a readout that reads the state but cancels to a value free of it
(`r / r`) is not called linear.

Guarantees afterwards: meta["classification"] = {"A", "step", "input_coef", "forcing",
"readout": "static" | "token" (forcing: "token" | None), "readout_linear": bool,
"lti": bool, "driven_by": "input" | "features"}; an LTI system has no forcing.

Example: E = B * u with B = linear(u, N): coefficient B (per-token) -> selective.
Example: E = B * u + linear(u, N) with B = linear(u, N): coefficient B, per-token forcing
         -> selective; with a param B instead: coefficient B + W, no forcing -> LTI.
"""
from __future__ import annotations

import sympy as sp

from ..errors import SpecError
from ..ir.graph import Graph



class _tanh(sp.Function):
    """tanh, without sympy's own: building and differentiating sp.tanh(sp.tanh(...)) takes
    time exponential in the nesting (10 levels: minutes). This one knows only what the
    linearity test needs: tanh(0) = 0 and the derivative."""

    @classmethod
    def eval(cls, arg):
        if arg == 0:
            return sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return 1 - _tanh(self.args[0]) ** 2


_FUNCS = {"exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "tanh": _tanh, "abs": sp.Abs}
_LINEAR = ("sum", "mean", "re", "im", "conj", "output")
_OPAQUE = ("param", "input", "dim", "const", "arange", "linear", "conv", "family", "dplr", "state")


def _err(g, msg, span, hint=None):
    return SpecError(msg, span, g.meta["source"], hint)


class _ToSympy:
    """IR subtree -> sympy, with chosen leaves as symbols and opaque nodes as symbols."""

    def __init__(self, g: Graph, leaf: int, leaf_symbol: sp.Symbol, opaque: frozenset = frozenset(),
                 linear_maps: bool = False, maps_of_leaf: bool = False):
        self.g, self.leaf, self.sym = g, leaf, leaf_symbol
        # Nodes taken as coefficients whatever their kind (named values, in the last view).
        self.opaque = opaque
        # A linear(e) without bias as W * e (W a static coefficient) where e is linear in the
        # leaf: `linear(u, N)` is then linear in u like `sum(W * u, H)`.
        self.linear_maps = linear_maps
        # linear(e, ...) / conv(e, ...) of a leaf-dependent e as an operation linear in e (a
        # bias is an affine offset), never an opaque coefficient free of the leaf: the readout
        # `linear(x, H)` is linear in the state, `linear(x, H) * linear(x, H)` is not.
        self.maps_of_leaf = maps_of_leaf
        self.memo: dict[int, sp.Expr] = {}
        self.symbols: dict[sp.Symbol, int] = {}
        # The symbols that stand for a value linear in the leaf: the leaf itself and one per
        # reduction (sum/mean/re/im/conj) or shift of a leaf-dependent value, each with the
        # time of its own coefficient in the leaf. A symbol per reduction, never marker *
        # argument: with the leaf one scalar, `r / sum(r, H)` would cancel to 1 / marker.
        self.dep: dict[sp.Symbol, str] = {leaf_symbol: "static"}

    def depends(self, expr: sp.Expr) -> bool:
        """expr uses the leaf (directly or through a reduction of it)."""
        return any(s in self.dep for s in expr.free_symbols)

    def nonlinear(self, expr: sp.Expr) -> bool:
        """expr is not of degree <= 1 in the leaf-dependent symbols (jointly)."""
        ds = [s for s in expr.free_symbols if s in self.dep]
        return any(self.depends(sp.diff(expr, s)) for s in ds)

    def at_zero(self, expr: sp.Expr) -> sp.Expr:
        """expr with the leaf (so every value linear in it) at 0: what does not multiply it."""
        ds = [s for s in expr.free_symbols if s in self.dep]
        return expr.subs({s: 0 for s in ds}) if ds else expr

    def coef_time(self, expr: sp.Expr) -> str:
        """The time of expr's coefficient in the leaf (expr linear in it): per-token where a
        coefficient of a leaf-dependent symbol is, or that symbol's own coefficient is."""
        for s in [s for s in expr.free_symbols if s in self.dep]:
            d = sp.diff(expr, s)
            if d != 0 and (self.dep[s] == "token" or _time(self.g, self.symbols, d) == "token"):
                return "token"
        return "static"

    def _fresh(self, n: int, arg: sp.Expr, kind: str, time: str | None = None) -> sp.Expr:
        """The value of node n, an operation linear in its argument arg (linear in the leaf):
        a symbol of its own for the part linear in the leaf, plus the operation of the rest."""
        s = sp.Symbol(f"l{n}")
        self.dep[s] = time or self.coef_time(arg)
        rest = sp.expand(self.at_zero(arg))
        return s + (sp.Function(kind)(rest) if rest != 0 else 0)

    def visible(self, root: int) -> list[int]:
        """The nodes written in root's expression, in id order: through linear/conv calls (a
        `u * u` inside one is still written there) but not into named values of `opaque` nor
        into a param's initializer."""
        seen, stack = set(), [root]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n != self.leaf and self.g.op(n).kind != "param" and n not in self.opaque:
                stack.extend(self.g.operands(n))
        return sorted(seen)

    def __call__(self, n: int) -> sp.Expr:
        if n in self.memo:
            return self.memo[n]
        g, o = self.g, self.g.op(n)
        if n == self.leaf:
            r = self.sym
        elif o.kind == "const":
            v = o.get("value")
            r = sp.nsimplify(v) if not isinstance(v, complex) else sp.Symbol(f"c{n}")
        elif self.linear_maps and o.kind == "linear" and o.get("bias") is None \
                and not self.nonlinear(self(g.operands(n)[0])):
            r = sp.Symbol(f"W{n}") * self(g.operands(n)[0])
        elif self.maps_of_leaf and o.kind in ("linear", "conv") and n not in self.opaque \
                and self.depends(self(g.operands(n)[0])):
            inner = self(g.operands(n)[0])
            # conv mixes past tokens (like prev): its coefficient is never a static one.
            r = self._fresh(n, inner, o.kind, time="token" if o.kind == "conv" else None) \
                if not self.nonlinear(inner) else sp.Function(o.kind)(inner)
        elif o.kind in ("prev", "prev_state") and n not in self.opaque:
            # A shifted value: linear in the leaf where its argument is, with a per-token
            # marker of its own (u_{t-1} is not u_t: prev(u) * u is not linear, and a
            # shifted input is never an LTI system's static coefficient).
            inner = self(g.operands(n)[0])
            if self.depends(inner) and not self.nonlinear(inner):
                r = self._fresh(n, inner, "prev", time="token")
            elif self.depends(inner):
                r = sp.Function("prev")(inner)
            else:
                s = sp.Symbol(f"v{n}")
                self.symbols[s] = n
                r = s
        elif o.kind in _OPAQUE or n in self.opaque:
            s = sp.Symbol(f"v{n}")
            self.symbols[s] = n
            r = s
        else:
            args = [self(i) for i in g.operands(n)]
            k = o.kind
            if k == "add":
                r = args[0] + args[1]
            elif k == "sub":
                r = args[0] - args[1]
            elif k == "mul":
                r = args[0] * args[1]
            elif k == "div":
                r = args[0] / args[1]
            elif k == "pow":
                r = args[0] ** args[1]
            elif k == "neg":
                r = -args[0]
            elif k == "output":
                r = args[0]
            elif k in _LINEAR:
                # A linear operation times a marker symbol of its own: the degree in the
                # leaf is kept, and different operations never cancel (`sum(x * x, N) -
                # sum(x, N) * sum(x, N)` is not 0, `re(x) ** 2 - im(x) ** 2` neither).
                dims = o.get("dims") or ()
                marker = "_" + k + "".join("_" + str(d) for d in dims)
                if self.depends(args[0]) and not self.nonlinear(args[0]):
                    r = self._fresh(n, args[0], marker)
                else:
                    # Not linear in the leaf (or free of it): an opaque function of its argument,
                    # never marker * argument, which would cancel against that argument
                    # elsewhere (`exp(r) / sum(exp(r), H)`, a softmax, is not 1 / marker).
                    r = sp.Function(marker)(args[0])
            elif k in _FUNCS:
                r = _FUNCS[k](args[0])
            else:
                # Any other function (gelu, min, clamp, ...) is an opaque function of all its
                # arguments: linear in none of them.
                r = sp.Function(k)(*args)
        self.memo[n] = r
        return r


def _first_nonlinear(conv: "_ToSympy", nodes: list[int], u: sp.Symbol) -> int | None:
    """The first node (in id order: innermost first) whose value is not linear in u."""
    for n in nodes:
        if conv.nonlinear(conv(n)):
            return n
    return None


def _static_part(g: Graph, conv: "_ToSympy", expr: sp.Expr, u: sp.Symbol) -> sp.Expr:
    """The part of expr that depends on no input: its addends at u = 0 free of per-token values."""
    off = sp.expand_mul(conv.at_zero(expr))
    return sp.simplify(sp.Add(*[t for t in sp.Add.make_args(off) if _time(g, conv.symbols, t) != "token"]))


def _offset_span(g: Graph, e: int, conv: "_ToSympy", u: sp.Symbol, espan):
    """Where the first addend of E (through + - and unary -) with a part that depends on no input is written."""
    n = _offset_term(g, e, conv, u)
    return g.op(n).span if n != e else espan


def _offset_term(g: Graph, e: int, conv: "_ToSympy", u: sp.Symbol) -> int:
    """The first addend of E (through + - and unary -) with a part that depends on no input; else E."""
    terms, stack = [], [e]
    while stack:
        n = stack.pop()
        if g.op(n).kind in ("add", "sub", "neg"):
            stack.extend(reversed(g.operands(n)))
        else:
            terms.append(n)
    whole = g.op(e).span
    for n in terms:
        if _static_part(g, conv, conv(n), u) != 0:
            # A name resolved to its declaration has lost the place it was used; point at E then.
            return n if _inside(g.op(n).span, whole) else e
    return e


def _inside(span, whole) -> bool:
    if span is None or whole is None or whole.end_line is None or whole.end_column is None:
        return False
    start, end = (span.line, span.column), (span.end_line or span.line, span.end_column or span.column)
    return (whole.line, whole.column) <= start and end <= (whole.end_line, whole.end_column)


def _time(g, symbols, expr) -> str:
    nodes = [symbols[s] for s in expr.free_symbols if s in symbols]
    return "token" if any(g.fact(n, "time") == "token" for n in nodes) else "static"


def check_linearity(g: Graph) -> Graph:
    """E linear in the primary input; classify the system LTI or selective."""
    g = g.copy()
    meta = g.meta
    ops = g.operands(meta["system"])
    a, e = ops[0], ops[1]
    u_node = meta["inputs"][0]
    u_name = g.op(u_node).get("name")
    u = sp.Symbol("u")
    # Where E is written in the transition (a bare name's node carries its declaration's span).
    espan = (meta.get("transition") or {}).get("term_span") or g.op(e).span
    # First with named values inlined and linear(...) maps without bias read as static
    # coefficients (so `linear(u, N)` is as LTI as `sum(W * u, H)`); if that is not linear,
    # with linear(...) results as coefficients (`B * u` with B = linear(u, N)); if that is
    # not linear either, with every named value but E itself as a coefficient (the
    # contract: named values are coefficients).
    ancestors = sorted(g.ancestors(e) | {e})
    conv = _ToSympy(g, u_node, u, linear_maps=True)
    bad = _first_nonlinear(conv, ancestors, u)
    if bad is not None:
        conv = _ToSympy(g, u_node, u)
        bad = _first_nonlinear(conv, ancestors, u)
    if bad is not None:
        named = frozenset(n for n in meta["values"].values() if n not in (e, u_node))
        conv = _ToSympy(g, u_node, u, opaque=named)
        bad = _first_nonlinear(conv, conv.visible(e), u)
        if bad is not None:
            raise _err(g, f"the input term is not linear in the input '{u_name}'", g.op(bad).span or espan,
                       hint=f"write it as coefficient * {u_name}, with a coefficient that does not "
                            f"use '{u_name}' directly (a named value or a linear(...) of it is fine)")
    expr = conv(e)
    driven_by = "input"
    forcing = None
    if not conv.depends(expr):
        if g.fact(e, "time") != "token":
            raise _err(g, "the input term does not depend on any input", espan,
                       hint=f"write it as a coefficient times the input, e.g. B * {u_name}")
        driven_by = "features"
        coef_time = "token"
    else:
        coef_time = conv.coef_time(expr)
        if sp.simplify(conv.at_zero(expr)) != 0:
            # What does not multiply u is a forcing term: per-token (the token's features) is fine.
            forcing = "token"
    if _static_part(g, conv, expr, u) != 0:
        raise _err(g, f"the input term has a part that does not depend on the input '{u_name}' "
                      f"nor on any per-token value (a constant forcing)",
                   _offset_span(g, e, conv, u, espan),
                   hint=f"every term must multiply '{u_name}' or be per-token, like linear({u_name}, "
                        f"{meta['state_dims'][-1]}) (no constant offset)")
    # The readout: linear in the state?
    xs = sp.Symbol("x")
    rconv = _ToSympy(g, meta["state"], xs, maps_of_leaf=True)
    y = rconv(meta["output"])
    # A readout that reads the state but came out free of it cancelled (`r / r`, 1 where
    # defined): not a linear map of the state, whatever the algebra says.
    cancelled = not rconv.depends(y) and meta["state"] in g.ancestors(meta["output"])
    readout_linear = not rconv.nonlinear(y) and not cancelled
    readout_time = rconv.coef_time(y) if rconv.depends(y) else "static"
    cls = dict(A=g.fact(a, "time"), input_coef=coef_time, forcing=forcing, readout=readout_time,
               readout_linear=readout_linear, driven_by=driven_by)
    if g.op(meta["system"]).kind == "dynamics":
        cls["step"] = g.fact(ops[2], "time")
    else:
        cls["step"] = None
    cls["lti"] = all(cls[k] in ("static", None) for k in ("A", "step", "input_coef", "forcing", "readout")) \
        and readout_linear
    spans = {"A": meta["transition"].get("matrix_span"), "step": (meta.get("discretize") or {}).get("step_span")}
    for k, n in (("A", a),) + ((("step", ops[2]),) if len(ops) > 2 else ()):
        if meta["state"] in g.ancestors(n):
            raise _err(g, f"the {'state matrix' if k == 'A' else 'step'} may not depend on the state",
                       spans[k] or g.op(n).span,
                       hint="only the output may read the state")
    if meta["state"] in g.ancestors(e):
        raise _err(g, "the input term may not depend on the state", espan,
                   hint="the state enters only through the transition term")
    meta["classification"] = cls
    return g
