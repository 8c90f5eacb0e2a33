"""An independent evaluator of `.ssm` specs: the parsed AST run as float64 loops.

This is the oracle of the differential tester (`ssmc.testing.harness`). It reads the
AST the parser builds and nothing else of ssmc: no IR, no pass, no backend, no
runtime helper. Every rule it applies is written here from the language page
(`docs/language.md`, the contract `spec-language.md`):

* dims are evaluated exactly (fractions) from their expressions, over the sizes given;
* values carry named dims and broadcast by name; the result lists the left
  operand's dims first, then the right operand's new ones; a square matrix over the
  state's last dim keeps its pair last (decision 4);
* the sequence is visited token by token, per batch element and per direction; at
  every token the state matrix, the step and the input term are evaluated, the
  discretization table of the language page gives `Abar` and `Ebar`, the state is
  updated, and the output is evaluated from the updated state;
* `linear` reads the weight `<value>_proj`, `_proj2`, ... (textual order of the
  calls in the definition) of shape `(out, in)`, `in` flattened in the argument's
  dim order; `conv` reads `<value>_conv` of shape `(*dims, K)` and looks back at
  earlier tokens of the (reordered) sequence; `prev(e, k)` is e k tokens earlier
  in that sequence (zero before its start), `prev(x)` of the state the state before
  the token's update (the entering state at the first token);
* scan orders by index maps, each direction evaluating the whole layer, merged by
  add, mean or concat (a trailing `dir` axis); a param's `shared` / `separate` flag
  and a linear's or conv's `params =` override the scan's `params =` for that tensor;
* `scan global`: the state runs over the whole sequence first, then every token's
  output is evaluated from the final state x_L.

It is deliberately slow and plain: clarity over speed, shapes of a few elements.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..frontend import ast

# The column index of a square matrix over the state's last dim `N` is called `N'`
# inside the evaluator, so that values broadcast by name without ambiguity.
COL = "'"


class EvalError(Exception):
    """The evaluator met something it does not understand (a generator or evaluator bug)."""


@dataclass
class V:
    """A value: an array whose axes are the named dims `dims`."""

    a: np.ndarray
    dims: tuple

    def __post_init__(self):
        self.a = np.asarray(self.a)
        if self.a.ndim != len(self.dims):
            raise EvalError(f"value of shape {self.a.shape} with dims {self.dims}")


def _order(adims, bdims):
    """The dims of `a op b`: a's, then b's new ones; a square pair stays last."""
    out = list(adims) + [d for d in bdims if d not in adims]
    pair = [d for d in out if d.endswith(COL)]
    if pair:
        (col,) = pair
        row = col[:-1]
        out = [d for d in out if d not in (row, col)] + [row, col]
    return tuple(out)


def align(v: V, dims: tuple) -> np.ndarray:
    """v's array with axes in the order `dims` (size-1 axes where v lacks a dim)."""
    missing = [d for d in v.dims if d not in dims]
    if missing:
        raise EvalError(f"cannot align dims {v.dims} to {dims}")
    perm = [v.dims.index(d) for d in dims if d in v.dims]
    a = np.transpose(v.a, perm) if perm else v.a
    shape = []
    it = iter(a.shape)
    for d in dims:
        shape.append(next(it) if d in v.dims else 1)
    return a.reshape(shape)


def binop(op, x: V, y: V) -> V:
    dims = _order(x.dims, y.dims)
    a, b = align(x, dims), align(y, dims)
    with np.errstate(all="ignore"):
        if op == "+":
            r = a + b
        elif op == "-":
            r = a - b
        elif op == "*":
            r = a * b
        elif op == "/":
            r = a / b
        elif op == "**":
            r = np.power(a.astype(np.result_type(a, b, np.float64)), b)
        else:
            raise EvalError(op)
    full = tuple(max(s, t) for s, t in zip(a.shape, b.shape)) if dims else ()
    return V(np.broadcast_to(r, full).copy(), dims)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(z):
    # x * Phi(x), Phi the standard normal CDF: (1 + erf(x / sqrt 2)) / 2
    return z * 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))


def _gelu_tanh(z):
    # x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    return z / 2.0 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))


# The elementwise functions of the language page.
UNARY = {
    "erf": _erf,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "exp": np.exp,
    "log": np.log,
    "expm1": np.expm1,
    "log1p": np.log1p,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda z: np.maximum(z, 0.0),
    "softplus": lambda z: np.logaddexp(0.0, z),
    "inv_softplus": lambda z: np.log(np.expm1(z)),
    "silu": lambda z: z * _sigmoid(z),
    "re": np.real,
    "im": np.imag,
    "conj": np.conj,
}


# ============================================================================
# dims
# ============================================================================

def eval_dims(block: ast.Block, given: dict) -> dict:
    """Every dim's size: given, else its expression over earlier dims (exact)."""
    env: dict = {}

    def ev(e):
        if isinstance(e, ast.Num):
            return Fraction(e.value) if isinstance(e.value, int) else Fraction(e.value).limit_denominator(10**12)
        if isinstance(e, ast.Name):
            return Fraction(env[e.id])
        if isinstance(e, ast.Neg):
            return -ev(e.operand)
        if isinstance(e, ast.BinOp):
            a, b = ev(e.left), ev(e.right)
            if e.op == "+":
                return a + b
            if e.op == "-":
                return a - b
            if e.op == "*":
                return a * b
            if e.op == "/":
                return a / b
            if e.op == "**":
                if b.denominator != 1:
                    raise EvalError("fractional power in a dim")
                return a ** int(b)
        if isinstance(e, ast.Call):
            args = [ev(x) for x in e.args]
            if e.fn == "ceil":
                return Fraction(math.ceil(args[0]))
            if e.fn == "floor":
                return Fraction(math.floor(args[0]))
            if e.fn == "min":
                return min(args)
            if e.fn == "max":
                return max(args)
        raise EvalError(f"dim expression {e}")

    for d in block.dims:
        v = Fraction(given[d.name]) if d.name in given else ev(d.value)
        if v.denominator != 1 or v <= 0:
            raise EvalError(f"dim {d.name} = {v}")
        env[d.name] = int(v)
    return env


# ============================================================================
# the block, read once
# ============================================================================

class Spec:
    """What the evaluator needs of a block, by kind of statement."""

    def __init__(self, block: ast.Block):
        self.block = block
        self.name = block.name
        self.inputs = [s for s in block.body if isinstance(s, ast.InputDecl)]
        # Several states (language page, "Several states"): each has one transition naming
        # it; a discretize with `state = x` is x's, the one naming no state every other
        # `dynamics` state's. The spec's attributes state, transition, discretize, sdims
        # and last describe one state: the first here, another in `view(name)`.
        self.states = [s for s in block.body if isinstance(s, ast.StateDecl)]
        if not self.states:
            raise EvalError("no state")
        self.params = {s.name: s for s in block.body if isinstance(s, ast.ParamDecl)}
        self.values = {s.name: s for s in block.body if isinstance(s, ast.Assign)}
        transitions = [s for s in block.body if isinstance(s, ast.Transition)]
        self.transition_of = {t.state: t for t in transitions}
        if len(self.transition_of) != len(transitions) or set(self.transition_of) != {s.name for s in self.states}:
            raise EvalError("each state needs exactly one transition")
        disc = [s for s in block.body if isinstance(s, ast.Discretize)]
        self.discretize_of = {}
        shared = [d for d in disc if self.kw(d, "state") is None]
        for st_ in self.states:
            own = [d for d in disc if isinstance(self.kw(d, "state"), ast.Name) and self.kw(d, "state").id == st_.name]
            if self.transition_of[st_.name].kind == "dynamics":
                self.discretize_of[st_.name] = own[0] if own else (shared[0] if shared else None)
        (self.scan,) = [s for s in block.body if isinstance(s, ast.Scan)]
        (self.output,) = [s for s in block.body if isinstance(s, ast.Output)]
        self.lasts = {st_.dims[-1].name for st_ in self.states if st_.dims}
        self._focus(self.states[0])
        self.dimnames = {d.name for d in block.dims}
        # The weights of `linear` and `conv`, per call node, named as the language says:
        # after the named value (or output) whose definition holds the call; in the input
        # term after the state, in the step `step`; numbered per name in statement order.
        self.weight_of: dict[int, str] = {}
        self.call_of: dict[str, ast.Call] = {}
        counts: dict = {}
        for stmt in block.body:
            if isinstance(stmt, (ast.Assign, ast.Output)):
                owner, expr = stmt.name, stmt.value
            elif isinstance(stmt, ast.Transition):
                owner, expr = stmt.state, stmt.input_term
            elif isinstance(stmt, ast.Discretize):
                owner, expr = "step", self.kw(stmt, "step")
            else:
                continue
            for call in _calls_in_order(expr):
                if call.fn in ("linear", "conv"):
                    base = f"{owner}_{'proj' if call.fn == 'linear' else 'conv'}"
                    counts[base] = counts.get(base, 0) + 1
                    k = counts[base]
                    self.weight_of[id(call)] = base if k == 1 else f"{base}{k}"
                    self.call_of[self.weight_of[id(call)]] = call

    def _focus(self, st_):
        self.state = st_
        self.transition = self.transition_of[st_.name]
        self.discretize = self.discretize_of.get(st_.name)
        self.sdims = tuple(d.name for d in st_.dims)
        self.last = self.sdims[-1]

    def view(self, name) -> "Spec":
        """The spec seen from the state `name` (its transition, discretization, dims)."""
        v = copy.copy(self)
        v._focus(next(st_ for st_ in self.states if st_.name == name))
        return v

    def param_dims(self, name) -> tuple:
        """A param's declared dims; the second of a repeated state dim is the column."""
        dims = [d.name for d in self.params[name].dims]
        if len(dims) >= 2 and dims[-1] == dims[-2] and dims[-1] in self.lasts:
            dims[-1] = dims[-1] + COL
        return tuple(dims)

    def kw(self, node, name, default=None):
        for k in node.kwargs:
            if k.name == name:
                return k.value
        return default

    def structure(self):
        v = self.values[self.transition.matrix]
        return v.structure.name, v.structure

    def directions(self, L: int, sizes: dict):
        """Per direction, the visiting order of time (a list of index arrays)."""
        order = self.scan.order
        fwd = np.arange(L)
        if order in ("causal", "global"):
            return [fwd]
        if order == "reverse":
            return [fwd[::-1]]
        if order == "bidirectional":
            return [fwd, fwd[::-1]]
        if order == "cross2d":
            r = sizes[self.kw(self.scan, "rows").id]
            c = sizes[self.kw(self.scan, "cols").id]
            if r * c != L:
                raise EvalError("cross2d length")
            grid = np.arange(L).reshape(r, c)
            rows, cols = grid.reshape(-1), grid.T.reshape(-1)
            return [rows, rows[::-1], cols, cols[::-1]]
        raise EvalError(order)

    def merge(self):
        m = self.kw(self.scan, "merge")
        return m.id if m is not None else "add"

    def separate(self):
        p = self.kw(self.scan, "params")
        if p is not None:
            return p.id == "separate"
        return self.scan.order == "cross2d"

    def separate_of(self, key: str) -> bool:
        """Whether the state_dict entry `key` has the direction axis: a param's own
        `shared` / `separate` flag, a linear's or conv's `params =` (its bias too), else
        the scan's `params =`; never with one direction."""
        if self.scan.order not in ("bidirectional", "cross2d"):
            return False
        if key in self.params and self.params[key].sharing is not None:
            return self.params[key].sharing == "separate"
        call = self.call_of.get(key[:-len("_bias")] if key.endswith("_bias") and key not in self.call_of else key)
        if call is not None and self.kw(call, "params") is not None:
            return self.kw(call, "params").id == "separate"
        return self.separate()


def _calls_in_order(expr):
    """The calls of an expression in textual order of their names (pre-order)."""
    if isinstance(expr, ast.Call):
        yield expr
        for a in expr.args:
            yield from _calls_in_order(a)
        for k in expr.kwargs:
            yield from _calls_in_order(k.value)
    elif isinstance(expr, ast.BinOp):
        yield from _calls_in_order(expr.left)
        yield from _calls_in_order(expr.right)
    elif isinstance(expr, ast.Neg):
        yield from _calls_in_order(expr.operand)


# ============================================================================
# one direction over one sequence
# ============================================================================

def _expm(m):
    """Matrix exponential by scaling and squaring of a Taylor series (float64/complex128)."""
    m = np.asarray(m, dtype=np.result_type(m, np.float64))
    norm = np.abs(m).sum(axis=1).max() if m.size else 0.0
    s = max(0, int(np.ceil(np.log2(norm))) + 1) if norm > 0.5 else 0
    a = m / (2.0 ** s)
    out = np.eye(m.shape[0], dtype=a.dtype)
    term = np.eye(m.shape[0], dtype=a.dtype)
    for k in range(1, 30):
        term = term @ a / k
        out = out + term
    for _ in range(s):
        out = out @ out
    return out


def elementwise(rule, a, d, e):
    """The elementwise discretization table: (Abar, Ebar) arrays."""
    with np.errstate(all="ignore"):
        if rule == "zoh":
            safe = np.where(a == 0, 1.0, a)
            return np.exp(d * a), np.where(a == 0, d * e, np.expm1(d * a) / safe * e)
        if rule == "bilinear":
            return (1 + d * a / 2) / (1 - d * a / 2), d * e / (1 - d * a / 2)
        if rule == "euler":
            return 1 + d * a, d * e
        if rule == "backward_euler":
            return 1 / (1 - d * a), d * e / (1 - d * a)
        if rule == "zoh_euler":
            return np.exp(d * a), d * e
    raise EvalError(rule)


def matrix(rule, A, d, E):
    """The matrix discretization table for one n x n matrix: (Abar, Ebar)."""
    n = A.shape[0]
    eye = np.eye(n)
    if rule == "zoh":
        # the last column of exp(d [[A, E], [0, 0]]) is A^-1 (exp(dA) - I) E, also for singular A
        aug = np.zeros((n + 1, n + 1), dtype=np.result_type(A, E, np.float64))
        aug[:n, :n], aug[:n, n] = A, E
        big = _expm(d * aug)
        return big[:n, :n], big[:n, n]
    if rule == "bilinear":
        lhs = eye - d / 2 * A
        return np.linalg.solve(lhs, eye + d / 2 * A), np.linalg.solve(lhs, d * E)
    if rule == "euler":
        return eye + d * A, d * E
    if rule == "backward_euler":
        lhs = eye - d * A
        return np.linalg.inv(lhs), np.linalg.solve(lhs, d * E)
    if rule == "zoh_euler":
        return _expm(d * A), d * E
    raise EvalError(rule)


class Run:
    """The layer over one sequence of one batch element, in one direction."""

    def __init__(self, spec: Spec, sizes: dict, params: dict, inputs: dict, x0=None):
        self.s, self.sizes, self.p, self.inputs = spec, sizes, params, inputs
        self.L = next(iter(inputs.values())).shape[0]
        self.memo: dict = {}
        # Per state (by name): its view of the spec, its current value, its value after
        # each token's update; x0 is one array, or a tuple in declaration order.
        self.views = {st_.name: spec.view(st_.name) for st_ in spec.states}
        self.xs: dict = {}
        self.x0s: dict = {}
        self.states: dict = {n: {} for n in self.views}
        self.updating: set = set()
        x0s = (x0,) if len(spec.states) == 1 else (x0 if x0 is not None else (None,) * len(spec.states))
        for st_, x0_ in zip(spec.states, x0s):
            v = self.views[st_.name]
            shape = tuple(sizes[d] for d in v.sdims)
            x = np.zeros(shape, dtype=np.complex128 if st_.complex else np.float64)
            self.xs[st_.name] = self.x0s[st_.name] = x + x0_ if x0_ is not None else x

    # --- expressions at token t ------------------------------------------------
    def ev(self, e, t) -> V:
        key = (id(e), t)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        v = self._ev(e, t)
        if not (isinstance(e, ast.Name) and e.id in self.views):
            self.memo[key] = v
        return v

    def _ev(self, e, t) -> V:
        s = self.s
        if isinstance(e, ast.Num):
            return V(np.float64(e.value), ())
        if isinstance(e, ast.Imag):
            return V(np.complex128(e.value), ())
        if isinstance(e, ast.Neg):
            v = self.ev(e.operand, t)
            return V(-v.a, v.dims)
        if isinstance(e, ast.BinOp):
            return binop(e.op, self.ev(e.left, t), self.ev(e.right, t))
        if isinstance(e, ast.Name):
            return self.name(e.id, t)
        if isinstance(e, ast.Call):
            return self.call(e, t)
        raise EvalError(f"expression {e}")

    def name(self, n, t) -> V:
        s = self.s
        if n == "pi":
            return V(np.float64(np.pi), ())
        if n in s.dimnames:
            return V(np.float64(self.sizes[n]), ())
        for i in s.inputs:
            if i.name == n:
                return V(self.inputs[n][t], tuple(d.name for d in i.dims))
        if n in self.views:
            if t not in self.states[n]:
                # Another state's transition reads this one: it is updated first (the
                # language: it sees the state after the token's update); a cycle is an error.
                if n in self.updating or not self.updating:
                    raise EvalError(f"the state {n} is read at token {t} before its update")
                self.step_token(t, n)
            return V(self.states[n][t], self.views[n].sdims)
        if n in s.params:
            return V(self.p[n], s.param_dims(n))
        if n in s.values:
            return self.ev(s.values[n].value, t)
        raise EvalError(f"unknown name {n}")

    def call(self, e: ast.Call, t) -> V:
        fn = e.fn
        if fn in ("min", "max"):
            # elementwise, broadcast by name like `+`
            return self._minmax(fn, *(self.ev(a, t) for a in e.args))
        if fn == "clamp":
            # clamp(e, lo, hi) = min(max(e, lo), hi); clamp(e, min = lo, max = hi), either left out
            bounds = dict(zip(("min", "max"), e.args[1:]))
            bounds.update({k.name: k.value for k in e.kwargs})
            v = self.ev(e.args[0], t)
            if "min" in bounds:
                v = self._minmax("max", v, self.ev(bounds["min"], t))
            if "max" in bounds:
                v = self._minmax("min", v, self.ev(bounds["max"], t))
            return v
        if fn in UNARY:
            (arg,) = e.args
            v = self.ev(arg, t)
            with np.errstate(all="ignore"):
                return V(UNARY[fn](v.a), v.dims)
        if fn in ("sum", "mean"):
            v = self.ev(e.args[0], t)
            red = [a.id for a in e.args[1:]]
            axes = tuple(v.dims.index(d) for d in red)
            r = v.a.sum(axis=axes) if fn == "sum" else v.a.mean(axis=axes)
            return V(r, tuple(d for d in v.dims if d not in red))
        if fn == "arange":
            (d,) = e.args
            return V(np.arange(self.sizes[d.id], dtype=np.float64), (d.id,))
        if fn == "linear":
            v = self.ev(e.args[0], t)
            out = tuple(a.id for a in e.args[1:])
            w = self.p[self.s.weight_of[id(e)]]
            y = w @ v.a.reshape(-1)
            if _true(self.s.kw(e, "bias")):
                y = y + self.p[self.s.weight_of[id(e)] + "_bias"]
            return V(y.reshape(tuple(self.sizes[d] for d in out)), out)
        if fn == "conv":
            arg, k = e.args
            K = self.sizes[k.id] if isinstance(k, ast.Name) else int(k.value)
            name = self.s.weight_of[id(e)]
            w = self.p[name]                                  # (*dims, K)
            cur = self.ev(arg, t)
            acc = np.zeros_like(cur.a, dtype=np.result_type(cur.a, w))
            for j in range(K):
                tt = t - K + 1 + j
                if tt < 0:
                    continue
                ej = self.ev(arg, tt)
                acc = acc + w[..., j] * ej.a
            if _true(self.s.kw(e, "bias")):
                acc = acc + self.p[name + "_bias"]
            return V(acc, cur.dims)
        if fn == "prev":
            # The language page: prev(e, k) is e at the token k places earlier in the
            # direction's order, zero before the first token; prev of the state is the
            # state before the current token's update (the entering state at the first).
            arg = e.args[0]
            k = int(e.args[1].value) if len(e.args) > 1 else 1
            name = self._is_state(arg)
            if name is not None:
                v = self.views[name]
                if t >= 1 and t - 1 not in self.states[name]:
                    raise EvalError(f"prev({name}) at token {t} before the update at {t - 1}")
                return V(self.states[name][t - 1] if t >= 1 else self.x0s[name], v.sdims)
            if t - k < 0:
                cur = self.ev(arg, t)
                return V(np.zeros_like(cur.a), cur.dims)
            return self.ev(arg, t - k)
        raise EvalError(f"function {fn}")

    def _is_state(self, e):
        """The state that e names (directly or through named values that are only its name), or None."""
        seen = set()
        while isinstance(e, ast.Name) and e.id not in seen:
            if e.id in self.views:
                return e.id
            seen.add(e.id)
            if e.id not in self.s.values:
                return None
            e = self.s.values[e.id].value
        return None

    def _minmax(self, fn, x: V, y: V) -> V:
        dims = _order(x.dims, y.dims)
        a, b = align(x, dims), align(y, dims)
        r = np.minimum(a, b) if fn == "min" else np.maximum(a, b)
        return V(r, dims)

    # --- the recurrence ----------------------------------------------------------
    def to_state(self, v: V, dims=None, spec=None) -> np.ndarray:
        dims = dims or (spec or self.s).sdims
        return np.broadcast_to(align(v, dims), tuple(self.sizes[d.rstrip(COL)] for d in dims))

    def transition_matrix(self, t, s):
        """The state matrix at token t: (kind, array) with kind 'elementwise' or 'matrix'."""
        kind, st = s.structure()
        expr = s.values[s.transition.matrix].value
        sd = s.sdims
        mdims = sd + (s.last + COL,)
        if kind in ("diagonal", "scalar"):
            return "elementwise", self.to_state(self.ev(expr, t), spec=s)
        if kind == "dplr":
            lam, P, Q = (self.ev(a, t) for a in expr.args)
            # A Lambda without N is the same on the whole diagonal (Lambda times the identity):
            # broadcast over the state's dims, it is. P and Q without a rank dim are rank one.
            extra = [d for d in P.dims if d not in sd]
            lam_a = self.to_state(lam, spec=s)
            # Q's N is the column index of A
            Qc = V(Q.a, tuple(s.last + COL if d == s.last else d for d in Q.dims))
            if extra:
                (r,) = extra
                P_a = self.to_state(P, sd + (r,))
                Q_a = self.to_state(Qc, sd[:-1] + (s.last + COL, r))
            else:
                P_a = self.to_state(P, spec=s)[..., None]
                Q_a = self.to_state(Qc, sd[:-1] + (s.last + COL,))[..., None]
            A = -np.einsum("...nr,...kr->...nk", P_a, np.conj(Q_a))
            n = self.sizes[s.last]
            A = A + lam_a[..., :, None] * np.eye(n)
            return "matrix", A
        A = self.to_state(self.ev(expr, t), mdims)
        if kind == "block_diagonal":
            k = s.kw(st, "blocks")
            nb = self.sizes[k.id] if isinstance(k, ast.Name) else int(k.value)
            n = self.sizes[s.last]
            if n % nb:
                raise EvalError(f"block_diagonal: {n} is not divisible by blocks = {nb}")
            bs = n // nb
            blk = (np.arange(n)[:, None] // bs) == (np.arange(n)[None, :] // bs)
            A = np.where(blk, A, 0)
        elif kind != "dense":
            raise EvalError(kind)
        return "matrix", A

    def step_token(self, t, name):
        s = self.views[name]
        self.updating.add(name)
        tr = s.transition
        kind, A = self.transition_matrix(t, s)
        x = self.xs[name]
        E = self.to_state(self.ev(tr.input_term, t), spec=s) if tr.input_term is not None else np.zeros(x.shape)
        if tr.kind == "recurrence":
            if kind == "elementwise":
                new = A * x + E
            else:
                new = np.einsum("...nk,...k->...n", A, x) + E
        else:
            rule = s.discretize.rule
            step_v = self.ev(s.kw(s.discretize, "step"), t)
            if kind == "elementwise":
                d = self.to_state(step_v, spec=s)
                ab, eb = elementwise(rule, A, d, E)
                new = ab * x + eb
            else:
                d = np.broadcast_to(align(step_v, s.sdims[:-1] + (s.last,)),
                                    x.shape)[..., 0]        # one step per matrix
                new = np.empty(np.broadcast_shapes(x.shape, E.shape),
                               dtype=np.result_type(A, E, x, np.float64))
                for idx in np.ndindex(*x.shape[:-1]):
                    ab, eb = matrix(rule, A[idx], d[idx], E[idx])
                    new[idx] = ab @ x[idx] + eb
        if not s.state.complex and np.iscomplexobj(new):
            raise EvalError("a complex update of a real state")
        self.xs[name] = new.astype(x.dtype)
        self.states[name][t] = self.xs[name]
        self.updating.discard(name)

    def run(self):
        ys = []
        if self.s.scan.order == "global":
            # Every token's output reads the states after the whole sequence (x_L): the
            # updates run first, then the readout with each state's final value.
            for t in range(self.L):
                for st_ in self.s.states:
                    if t not in self.states[st_.name]:
                        self.step_token(t, st_.name)
            self.memo.clear()
            for st_ in self.s.states:
                self.states[st_.name] = {t: self.xs[st_.name] for t in range(self.L)}
            for t in range(self.L):
                ys.append(self.ev(self.s.output.value, t))
            finals = tuple(self.xs[st_.name] for st_ in self.s.states)
            return np.stack([y.a for y in ys]), ys[0].dims, finals[0] if len(finals) == 1 else finals
        for t in range(self.L):
            for st_ in self.s.states:
                if t not in self.states[st_.name]:
                    self.step_token(t, st_.name)
            ys.append(self.ev(self.s.output.value, t))
        dims = ys[0].dims
        finals = tuple(self.xs[st_.name] for st_ in self.s.states)
        return np.stack([y.a for y in ys]), dims, finals[0] if len(finals) == 1 else finals


def _true(v) -> bool:
    return isinstance(v, ast.Name) and v.id == "true"


# ============================================================================
# the whole layer
# ============================================================================

def evaluate(block: ast.Block, sizes: dict, params: dict, inputs: dict,
             initial_state=None, return_state=False):
    """Run a block on a batch.

    sizes: every dim's size (as `eval_dims` gives them); params: `state_dict()` as
    numpy arrays (with the direction axis for `params = separate`); inputs: name ->
    array `(batch, length, *dims)`; initial_state: `(batch, *state dims)` or None (with
    several states, a tuple of them in declaration order).
    Returns y `(batch, length, *output dims[, dir])` (and the final states, likewise).
    """
    spec = Spec(block)
    prim = spec.inputs[0].name
    B, L = inputs[prim].shape[:2]
    orders = spec.directions(L, sizes)
    ys, finals = [], []
    for b in range(B):
        per_dir = []
        for i, order in enumerate(orders):
            p = {k: (v[i] if spec.separate_of(k) else v) for k, v in params.items()}
            seq = {k: v[b][order] for k, v in inputs.items()}
            x0 = None if initial_state is None else (
                initial_state[b] if len(spec.states) == 1 else tuple(x[b] for x in initial_state))
            y, dims, xf = Run(spec, sizes, p, seq, x0).run()
            back = np.empty_like(y)
            back[order] = y
            per_dir.append(back)
            if i == 0:
                finals.append(xf)
        if len(per_dir) == 1:
            y = per_dir[0]
        else:
            m = spec.merge()
            if m == "concat":
                y = np.stack(per_dir, axis=-1)
            else:
                y = sum(per_dir)
                if m == "mean":
                    y = y / len(per_dir)
        ys.append(y)
    y = np.stack(ys)
    if return_state:
        if len(spec.states) > 1:
            return y, tuple(np.stack([f[k] for f in finals]) for k in range(len(spec.states)))
        return y, np.stack(finals)
    return y

