"""Any valid spec compiles and is exact: generated specs against a naive evaluator.

The specs below are generated programmatically over

* the structure of the state matrix: diagonal, scalar, dense, dplr,
  block_diagonal(blocks = 2);
* the discretization rule: zoh, bilinear, euler, backward_euler, zoh_euler, and
  `recurrence` (a discrete system stated directly);
* the scan order: causal, reverse, bidirectional(merge = add | mean | concat,
  params = shared | separate), cross2d(rows = R, cols = C2, ...);
* the layout: unusual dim names (`Ch`, `Sz`, `K9`, `C2`) and orders (a state
  `x[Ch, Sz]`, a state `x[Sz, Ch]` whose matrix dim is `Ch`, a MIMO state `x[Sz]`
  driven by `u[Ch]`), params declared in another dim order than the state;
* real and complex states, a static step, a per-token step (`linear` of the input,
  or `exp(log_dt) * tau` with an extra `input tau[]`), static or per-token
  (`linear`) input and readout coefficients, an input term added or subtracted.

Every case is compiled with the NumPy reference backend in float64, its
parameters are overwritten with well-conditioned random values (the state matrix
is invertible, so the matrix ZOH formula applies as written), and its outputs
(and final states) are compared with the naive evaluator of this file, which never
calls ssmc: it computes `Abar`, `Ebar` from the discretization table of the
language page at every token (`torch.linalg.matrix_exp`, `numpy.linalg.solve`,
`numpy.linalg.inv`; elementwise formulas for diagonal and scalar), runs the
recurrence with explicit loops over batch, time and state entries, applies the
scan order by index maps and merges the directions. Tolerance: relative error
1e-10.

Also tested: `step()` token by token equals `forward()`; a forward over a prefix
and then over the rest from the returned state equals one forward over the whole;
ZOH with `A = 0` in some entries gives `Ebar = step * E` there; a reverse scan's
`initial_state` enters at the last token.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import zlib

# Triton reads TRITON_INTERPRET when it is imported: run its kernels on the CPU interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

import ssmc

RTOL = 1e-10

STRUCTURES = ("diagonal", "scalar", "dense", "dplr", "block")
RULES = ("zoh", "bilinear", "euler", "backward_euler", "zoh_euler")
LAYOUTS = ("CS", "SC", "S")
STEPS = ("static", "token", "tau")
MATRIX_STRUCTURES = ("dense", "dplr", "block")

# the state's dims per layout: (state dims, leading dims, the last (matrix) dim)
_LAYOUT_DIMS = {
    "CS": (("Ch", "Sz"), ("Ch",), "Sz"),   # x[Ch, Sz]; input u[Ch] over a leading dim
    "SC": (("Sz", "Ch"), ("Sz",), "Ch"),   # x[Sz, Ch]; the matrix dim is Ch, the input's dim
    "S": (("Sz",), (), "Sz"),              # x[Sz];     MIMO: u[Ch] is not a state dim
}

# The spec's defaults are deliberately other sizes than those the tests construct
# with: every dim is passed as a keyword argument.
_SPEC_DEFAULTS = "Ch = 6, Sz = 6, K9 = 1, R = 3, C2 = 2"


# ============================================================================
# the combinations
# ============================================================================

@dataclasses.dataclass(frozen=True)
class Combo:
    structure: str           # one of STRUCTURES
    rule: str                # one of RULES, or "recurrence"
    scan: tuple              # ("causal",), ("reverse",), ("bidirectional", merge, params),
                             # ("cross2d", merge, params); merge/params None = defaults
    layout: str = "CS"       # one of LAYOUTS
    cplx: bool = False       # complex state
    step: str = "static"     # one of STEPS (for "recurrence": "token" = a per-token gate)
    coef: str = "static"     # "static" params B, C or per-token linear(u, Sz)
    neg: bool = False        # x' = A x - E instead of + E

    # --- derived ----------------------------------------------------------
    @property
    def sdims(self):
        return _LAYOUT_DIMS[self.layout][0]

    @property
    def lead(self):
        return _LAYOUT_DIMS[self.layout][1]

    @property
    def last(self):
        return _LAYOUT_DIMS[self.layout][2]

    @property
    def is_matrix(self):
        return self.structure in MATRIX_STRUCTURES

    @property
    def ndir(self):
        return {"causal": 1, "reverse": 1, "bidirectional": 2, "cross2d": 4}[self.scan[0]]

    @property
    def merge(self):
        if self.scan[0] in ("causal", "reverse"):
            return None
        return self.scan[1] or "add"

    @property
    def separate(self):
        if self.scan[0] == "bidirectional":
            return (self.scan[2] or "shared") == "separate"
        if self.scan[0] == "cross2d":
            return (self.scan[2] or "separate") == "separate"
        return False

    @property
    def step_dims(self):
        # a diagonal MIMO state gets a step per mode (S5), the rest one per leading index
        if self.structure == "diagonal" and self.layout == "S":
            return ("Sz",)
        return self.lead

    @property
    def scan_text(self):
        kind = self.scan[0]
        if kind in ("causal", "reverse"):
            return kind
        kw = []
        if kind == "cross2d":
            kw += ["rows = R", "cols = C2"]
        if self.scan[1] is not None:
            kw.append(f"merge = {self.scan[1]}")
        if self.scan[2] is not None:
            kw.append(f"params = {self.scan[2]}")
        return f"{kind}({', '.join(kw)})"

    @property
    def id(self):
        scan = "-".join(s if s is not None else "dflt" for s in self.scan)
        return (f"{self.structure}-{self.rule}-{scan}-x{self.layout}-"
                f"{'complex' if self.cplx else 'real'}-step_{self.step}-coef_{self.coef}"
                + ("-neg" if self.neg else ""))

    def sizes(self):
        n_last = 4 if self.structure == "block" else 3
        n_lead = 2
        if self.layout == "CS":
            s = {"Ch": n_lead, "Sz": n_last}
        elif self.layout == "SC":
            s = {"Sz": n_lead, "Ch": n_last}
        else:
            s = {"Sz": n_last, "Ch": 2}
        s.update(K9=2, R=2, C2=3)
        return s


def _causal_combos():
    out = []
    for si, s in enumerate(STRUCTURES):
        for ri, r in enumerate(RULES):
            out.append(Combo(
                structure=s, rule=r, scan=("causal",),
                layout=LAYOUTS[ri % 3],
                cplx=(s == "dplr") or (ri + si) % 2 == 1,
                step=STEPS[(ri + si) % 3],
                coef=("static", "token")[(ri // 2 + si) % 2],
                neg=(ri + 2 * si) % 4 == 0,
            ))
    return out


_SCANS = (
    ("reverse",),
    ("bidirectional", "add", "shared"),
    ("bidirectional", "add", "separate"),
    ("bidirectional", "mean", "shared"),
    ("bidirectional", "mean", "separate"),
    ("bidirectional", "concat", "shared"),
    ("bidirectional", "concat", "separate"),
    ("cross2d", "add", "separate"),
    ("cross2d", "add", "shared"),
    ("cross2d", "mean", "separate"),
    ("cross2d", "concat", "separate"),
    ("cross2d", "concat", "shared"),
    ("cross2d", None, None),              # defaults: add, separate
)


def _scan_combos():
    out = []
    for si, s in enumerate(STRUCTURES):
        for qi, q in enumerate(_SCANS):
            out.append(Combo(
                structure=s, rule=RULES[(qi + 2 * si) % 5], scan=q,
                layout=LAYOUTS[(qi + si) % 3],
                cplx=(s == "dplr") or (qi + si) % 2 == 0,
                step=STEPS[(qi + 2 * si) % 3],
                coef=("static", "token")[(qi // 3 + si) % 2],
                neg=(qi + si) % 5 == 1,
            ))
    return out


def _recurrence_combos():
    return [
        Combo("diagonal", "recurrence", ("causal",), "CS", cplx=True, step="static"),
        Combo("diagonal", "recurrence", ("reverse",), "SC", cplx=False, step="token",
              coef="token", neg=True),
        Combo("diagonal", "recurrence", ("bidirectional", "concat", "separate"), "S",
              cplx=True, step="token"),
        Combo("diagonal", "recurrence", ("cross2d", "mean", "separate"), "CS",
              cplx=False, step="static", coef="token"),
        Combo("dense", "recurrence", ("causal",), "SC", cplx=True, step="static"),
        Combo("dense", "recurrence", ("cross2d", "add", "shared"), "S", cplx=False,
              step="static", coef="token"),
    ]


CAUSAL_COMBOS = _causal_combos()
SCAN_COMBOS = _scan_combos()
RECURRENCE_COMBOS = _recurrence_combos()
ALL_COMBOS = CAUSAL_COMBOS + SCAN_COMBOS + RECURRENCE_COMBOS
assert len({c.id for c in ALL_COMBOS}) == len(ALL_COMBOS)


# ============================================================================
# the spec text of a combination
# ============================================================================

def build_spec(c: Combo):
    """Return (spec text, {param name: declared dims}) for the combination."""
    sd, lead, last = c.sdims, c.lead, c.last
    cx = " complex" if c.cplx else ""
    lines = [f"dims {_SPEC_DEFAULTS}"]
    lines.append("input u[Ch]" + (", tau[]" if c.step == "tau" and c.rule != "recurrence"
                                  else ""))
    lines.append(f"state x[{', '.join(sd)}]{cx}")
    pdims = {}

    def param(name, dims, init, complex_=False):
        pdims[name] = tuple(dims)
        flag = " complex" if complex_ else ""
        lines.append(f"param {name}[{', '.join(dims)}]{flag} = {init}")

    # ---- the state matrix --------------------------------------------------
    if c.structure == "diagonal":
        adims = {"CS": ("Ch", "Sz"), "SC": ("Ch", "Sz"), "S": ("Sz",)}[c.layout]
        if c.rule == "recurrence" and c.step == "token":
            # a per-token gate: a gated linear recurrence
            if c.cplx:
                param("Aw", adims, "normal(0, 2)")
                lines.append(f"A = sigmoid(linear(u, {last})) * exp(1j * Aw) : diagonal")
            else:
                lines.append(f"A = sigmoid(linear(u, {last})) : diagonal")
        else:
            param("Ad", adims, "uniform(0.2, 1.5)")
            if c.cplx:
                param("Aw", adims, "normal(0, 2)")
                a = "-Ad + 1j * Aw"
            else:
                a = "-Ad"
            if c.rule == "recurrence":
                a = f"exp({a})"
            lines.append(f"A = {a} : diagonal")
    elif c.structure == "scalar":
        sdims_ = sd[:1] if c.layout != "S" else ()
        param("As", sdims_, "log(uniform(0.2, 1.5))")
        if c.cplx:
            param("Aw", sdims_, "normal(0, 2)")
            lines.append("A = -exp(As) + 1j * Aw : scalar")
        else:
            lines.append("A = -exp(As) : scalar")
    elif c.structure in ("dense", "block"):
        mdims = {"CS": ("Ch", "Sz", "Sz"), "SC": ("Ch", "Ch"), "S": ("Sz", "Sz")}[c.layout]
        param("M", mdims, "normal(0, 0.3)", complex_=c.cplx)
        st = "dense" if c.structure == "dense" else "block_diagonal(blocks = 2)"
        lines.append(f"A = M : {st}")
    elif c.structure == "dplr":
        assert c.cplx
        param("Lam", sd, "-0.5 + 1j * pi * arange(%s)" % last, complex_=True)
        param("P", sd + ("K9",), "normal(0, 0.3)", complex_=True)
        param("Q", (last, "K9"), "normal(0, 0.3)", complex_=True)
        lines.append("A = dplr(Lam, P, Q) : dplr")
    else:
        raise AssertionError(c.structure)

    # ---- the step -----------------------------------------------------------
    step_expr = None
    if c.rule != "recurrence":
        sdm = c.step_dims
        if c.step in ("static", "tau"):
            param("log_dt", sdm, "log_uniform(0.1, 0.6)")
            step_expr = "exp(log_dt)" + (" * tau" if c.step == "tau" else "")
        else:
            param("dt_bias", sdm, "inv_softplus(uniform(0.1, 0.5))")
            if sdm:
                lines.append(f"dt = softplus(linear(u, {', '.join(sdm)}) + dt_bias)")
            else:
                param("wdt", ("Ch",), "normal(0, 0.3)")
                lines.append("dt = softplus(sum(wdt * u, Ch) + dt_bias)")
            step_expr = "dt"

    # ---- the input term -----------------------------------------------------
    if c.coef == "static":
        bdims = {"CS": ("Sz",), "SC": ("Ch", "Sz"), "S": ("Sz", "Ch")}[c.layout]
        param("B", bdims, "normal(0, 1)", complex_=c.cplx)
        e = "sum(B * u, Ch)" if c.layout == "S" else "B * u"
    else:
        lines.append("Bt = linear(u, Sz)")
        e = "Bt * mean(u, Ch)" if c.layout == "S" else "Bt * u"
    sign = "-" if c.neg else "+"
    if c.rule == "recurrence":
        lines.append(f"recurrence x = A x {sign} {e}")
    else:
        lines.append(f"dynamics x' = A x {sign} {e}")
        lines.append(f"discretize {c.rule}, step = {step_expr}")

    lines.append(f"scan {c.scan_text}")

    # ---- the output ---------------------------------------------------------
    if c.coef == "static":
        param("C", ("Ch", "Sz"), "normal(0, 1)", complex_=c.cplx)
        read = "sum(C * x, Sz)"
    else:
        lines.append("Ct = linear(u, Sz)")
        read = "sum(Ct * x, Sz)"
    if c.cplx:
        read = f"re({read})"
    param("D", ("Ch",), "normal(0, 1)")
    lines.append(f"output y = {read} + D * u")

    text = "ssm Gen \"generated: %s\" {\n  %s\n}\n" % (c.id, "\n  ".join(lines))
    return text, pdims


@functools.lru_cache(maxsize=None)
def _compiled(text, backend="numpy"):
    return ssmc.loads(text, backend=backend, filename="<generated>")


# ============================================================================
# parameters: well-conditioned random values, by role
# ============================================================================

def _rng(key):
    return np.random.default_rng(zlib.crc32(key.encode()))


def _cnormal(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


def _matrix(rng, shape, c: Combo, complex_):
    """Stacks of n x n matrices: invertible (dynamics) or contractive (recurrence)."""
    n = shape[-1]
    base = 0.3 * (_cnormal(rng, shape) if complex_ else rng.standard_normal(shape))
    eye = np.eye(n)
    if c.rule == "recurrence":
        m = 0.6 * base + 0.5 * eye
    else:
        shift = 0.8 + 0.7 * rng.random(shape[:-2] + (1, 1))
        m = base - shift * eye
    if c.structure == "block":
        bs = n // 2
        blk = (np.arange(n)[:, None] // bs) == (np.arange(n)[None, :] // bs)
        junk = 5.0 * (rng.standard_normal(shape) + (1j * rng.standard_normal(shape)
                                                     if complex_ else 0))
        m = np.where(blk, m, junk)     # entries outside the blocks must be ignored
    return m


def fill_params(layer, c: Combo, key):
    """Overwrite every parameter with controlled random values; return them as numpy."""
    rng = _rng(key)
    sd = layer.state_dict()
    new = {}
    for name, t in sd.items():
        shape = tuple(t.shape)
        cpl = t.is_complex()
        if name == "Ad":
            v = (rng.uniform(0.05, 0.7, shape) if c.rule == "recurrence"
                 else rng.uniform(0.2, 1.5, shape))
        elif name == "Aw":
            v = 2.0 * rng.standard_normal(shape)
        elif name == "As":
            v = np.log(rng.uniform(0.2, 1.5, shape))
        elif name == "M":
            v = _matrix(rng, shape, c, cpl)
        elif name == "Lam":
            v = -rng.uniform(0.3, 1.5, shape) + 2j * rng.standard_normal(shape)
        elif name in ("P", "Q"):
            v = 0.3 * _cnormal(rng, shape)
        elif name == "log_dt":
            v = np.log(rng.uniform(0.1, 0.6, shape))
        elif name == "dt_bias":
            v = np.log(np.expm1(rng.uniform(0.1, 0.5, shape)))
        elif name == "wdt":
            v = 0.3 * rng.standard_normal(shape)
        elif name in ("B", "C", "D"):
            v = _cnormal(rng, shape) if cpl else rng.standard_normal(shape)
        elif name.endswith("_proj"):
            v = 0.7 * rng.standard_normal(shape) / np.sqrt(shape[-1])
        else:
            raise AssertionError(f"unexpected parameter {name}")
        assert np.iscomplexobj(v) <= cpl, name
        new[name] = torch.as_tensor(np.asarray(v, dtype=np.complex128 if cpl else np.float64))
        assert new[name].shape == t.shape
    layer.load_state_dict(new)
    return {k: v.numpy().copy() for k, v in new.items()}


def declared_shapes(params, c: Combo, pdims, sizes):
    """The params with exactly their declared dims (plus the direction axis).

    ssmc registers a scalar param `NAME[]` with shape (1,) instead of ()
    (see test_scalar_param_has_no_dims); the evaluator reads it by its
    declared dims either way.
    """
    out = dict(params)
    for name, dims in pdims.items():
        shape = ((c.ndir,) if c.separate else ()) + tuple(sizes[d] for d in dims)
        assert out[name].size == int(np.prod(shape)), name
        out[name] = out[name].reshape(shape)
    return out


# ============================================================================
# the naive evaluator (no ssmc)
# ============================================================================

def _softplus(z):
    return np.logaddexp(0.0, z)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _at(arr, dims, idx):
    """arr, whose axes are the named dims `dims`, at the named index `idx`."""
    return arr[tuple(idx[d] for d in dims)]


def _expm(m):
    return torch.linalg.matrix_exp(torch.as_tensor(m)).numpy()


def elementwise_rule(rule, a, d, e):
    """The language page's elementwise table: (Abar, Ebar) for one state entry."""
    if rule == "zoh":
        return np.exp(d * a), (d * e if a == 0 else np.expm1(d * a) / a * e)
    if rule == "bilinear":
        return (1 + d * a / 2) / (1 - d * a / 2), d * e / (1 - d * a / 2)
    if rule == "euler":
        return 1 + d * a, d * e
    if rule == "backward_euler":
        return 1 / (1 - d * a), d * e / (1 - d * a)
    if rule == "zoh_euler":
        return np.exp(d * a), d * e
    raise AssertionError(rule)


def zoh_van_loan(A, d, E):
    """d phi1(d A) E = A^-1 (exp(d A) - I) E, also for singular A: the last column
    of exp(d [[A, E], [0, 0]]) (Van Loan)."""
    n = A.shape[0]
    aug = np.zeros((n + 1, n + 1), dtype=np.result_type(A, E))
    aug[:n, :n], aug[:n, n] = A, E
    return _expm(d * aug)[:n, n]


def matrix_rule(rule, A, d, E, singular=False):
    """The language page's matrix table: (Abar, Ebar) for A (n x n), E (n,)."""
    eye = np.eye(A.shape[0])
    if rule == "zoh" and singular:
        return _expm(d * A), zoh_van_loan(A, d, E)
    if rule == "zoh":
        ea = _expm(d * A)
        return ea, np.linalg.solve(A, (ea - eye) @ E)
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
    raise AssertionError(rule)


class Naive:
    """One direction of a generated spec, written from the language page."""

    def __init__(self, c: Combo, sizes, p, pdims, singular=False):
        self.c, self.sizes, self.p, self.pd = c, sizes, p, pdims
        self.singular = singular          # matrix ZOH by Van Loan (A may be singular)

    def P(self, name, idx):
        return _at(self.p[name], self.pd[name], idx)

    # --- per-token pieces ----------------------------------------------------
    def step_size(self, idx, u, tau):
        c = self.c
        if c.step in ("static", "tau"):
            d = np.exp(self.P("log_dt", idx))
            return d * tau if c.step == "tau" else d
        if c.step_dims:                       # softplus(linear(u, D) + dt_bias)
            (dim,) = c.step_dims
            k = idx[dim]
            w = self.p["dt_proj"]              # (out, in) like torch.nn.Linear
            pre = sum(w[k, j] * u[j] for j in range(self.sizes["Ch"]))
            return _softplus(pre + self.p["dt_bias"][k])
        pre = sum(self.p["wdt"][j] * u[j] for j in range(self.sizes["Ch"]))
        return _softplus(pre + self.p["dt_bias"][()])

    def linear_sz(self, name, u):
        w = self.p[name]
        return np.array([sum(w[s, j] * u[j] for j in range(self.sizes["Ch"]))
                         for s in range(self.sizes["Sz"])])

    def input_term(self, idx, u):
        c = self.c
        nch = self.sizes["Ch"]
        if c.coef == "static":
            if c.layout == "S":
                e = sum(self.P("B", {**idx, "Ch": j}) * u[j] for j in range(nch))
            else:
                e = self.P("B", idx) * u[idx["Ch"]]
        else:
            bt = self.linear_sz("Bt_proj", u)
            if c.layout == "S":
                e = bt[idx["Sz"]] * (sum(u[j] for j in range(nch)) / nch)
            else:
                e = bt[idx["Sz"]] * u[idx["Ch"]]
        return -e if c.neg else e

    def a_entry(self, idx, u):
        """Diagonal and scalar: the entry of A (or of ABAR) for the state entry idx."""
        c = self.c
        if c.structure == "scalar":
            a = -np.exp(self.P("As", idx))
            return a + 1j * self.P("Aw", idx) if c.cplx else a
        if c.rule == "recurrence" and c.step == "token":
            w = self.p["A_proj"]
            k = idx[c.last]
            g = _sigmoid(sum(w[k, j] * u[j] for j in range(self.sizes["Ch"])))
            return g * np.exp(1j * self.P("Aw", idx)) if c.cplx else g
        a = -self.P("Ad", idx)
        if c.cplx:
            a = a + 1j * self.P("Aw", idx)
        return np.exp(a) if c.rule == "recurrence" else a

    def a_matrix(self, idx0):
        """Dense, block and dplr: the n x n matrix for the leading index idx0."""
        c = self.c
        n = self.sizes[c.last]
        dt = complex if c.cplx else float
        A = np.zeros((n, n), dtype=dt)
        for i in range(n):
            for k in range(n):
                if c.structure == "dplr":
                    v = (self.P("Lam", {**idx0, c.last: i}) if i == k else 0)
                    for r in range(self.sizes["K9"]):
                        v -= (_at(self.p["P"], self.pd["P"], {**idx0, c.last: i, "K9": r})
                              * np.conj(self.p["Q"][k, r]))
                else:
                    lead_m = tuple(idx0[d] for d in self.pd["M"][:-2])
                    v = self.p["M"][lead_m + (i, k)]
                    if c.structure == "block" and i // (n // 2) != k // (n // 2):
                        v = 0.0
                A[i, k] = v
        return A

    # --- one token -----------------------------------------------------------
    def update(self, x, u, tau):
        c = self.c
        n = self.sizes[c.last]
        new = np.zeros_like(x)
        for lead_idx in itertools.product(*(range(self.sizes[d]) for d in c.lead)):
            idx0 = dict(zip(c.lead, lead_idx))
            if c.is_matrix:
                A = self.a_matrix(idx0)
                E = np.array([self.input_term({**idx0, c.last: i}, u) for i in range(n)])
                if c.rule == "recurrence":
                    Abar, Ebar = A, E
                else:
                    d = self.step_size(idx0, u, tau)     # no step along the matrix dim
                    Abar, Ebar = matrix_rule(c.rule, A, d, E, self.singular)
                xv = np.array([x[lead_idx + (i,)] for i in range(n)])
                xn = Abar @ xv + Ebar
                for i in range(n):
                    new[lead_idx + (i,)] = xn[i]
            else:
                for i in range(n):
                    idx = {**idx0, c.last: i}
                    e = self.input_term(idx, u)
                    a = self.a_entry(idx, u)
                    if c.rule == "recurrence":
                        abar, ebar = a, e
                    else:
                        abar, ebar = elementwise_rule(c.rule, a, self.step_size(idx, u, tau), e)
                    new[lead_idx + (i,)] = abar * x[lead_idx + (i,)] + ebar
        return new

    def output(self, x, u):
        c = self.c
        y = np.zeros(self.sizes["Ch"])
        ct = self.linear_sz("Ct_proj", u) if c.coef == "token" else None
        for ch in range(self.sizes["Ch"]):
            acc = 0
            for s in range(self.sizes["Sz"]):
                idx = {"Ch": ch, "Sz": s}
                coef = self.p["C"][ch, s] if ct is None else ct[s]
                acc = acc + coef * _at(x, c.sdims, idx)
            y[ch] = np.real(acc) + self.p["D"][ch] * u[ch]
            if not c.cplx:
                assert np.imag(acc) == 0
        return y

    def run(self, u, tau, x0):
        """u (B, L, Ch), tau (B, L) or None, x0 (B, *state) or None: visiting order."""
        c = self.c
        bsz, L = u.shape[:2]
        shape = tuple(self.sizes[d] for d in c.sdims)
        dt = complex if c.cplx else float
        y = np.zeros((bsz, L, self.sizes["Ch"]))
        xs = np.zeros((bsz,) + shape, dtype=dt)
        for b in range(bsz):
            x = np.zeros(shape, dtype=dt) if x0 is None else x0[b].astype(dt)
            for t in range(L):
                x = self.update(x, u[b, t], None if tau is None else tau[b, t])
                y[b, t] = self.output(x, u[b, t])
            xs[b] = x
        return y, xs


def visiting_orders(c: Combo, L, rows=None, cols=None):
    """Per direction, the original token index visited at each step."""
    kind = c.scan[0]
    fwd = list(range(L))
    if kind == "causal":
        return [fwd]
    if kind == "reverse":
        return [fwd[::-1]]
    if kind == "bidirectional":
        return [fwd, fwd[::-1]]
    assert rows * cols == L
    colmajor = [i * cols + j for j in range(cols) for i in range(rows)]
    return [fwd, fwd[::-1], colmajor, colmajor[::-1]]


def reference(c: Combo, sizes, params, pdims, u, tau=None, x0=None, rows=None, cols=None,
              singular=False):
    """The whole layer: every direction on its reordered sequence, merged."""
    outs, finals = [], []
    for i, order in enumerate(visiting_orders(c, u.shape[1], rows, cols)):
        p = {k: v[i] for k, v in params.items()} if c.separate else params
        order = np.asarray(order, dtype=np.int64)
        yv, xl = Naive(c, sizes, p, pdims, singular).run(
            u[:, order], None if tau is None else tau[:, order], x0)
        y = np.empty_like(yv)
        y[:, order] = yv                  # back to the original token order
        outs.append(y)
        finals.append(xl)
    if c.merge is None:
        return outs[0], finals[0]
    if c.merge == "add":
        return sum(outs), None
    if c.merge == "mean":
        return sum(outs) / len(outs), None
    return np.stack(outs, axis=-1), None   # concat: a trailing dir axis


# ============================================================================
# helpers
# ============================================================================

def relerr(got, want):
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got)), "non-finite values"
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


def make_layer(c: Combo, backend: str = "numpy"):
    text, pdims = build_spec(c)
    mod = _compiled(text, backend)
    sizes = c.sizes()
    layer = mod.Gen(seed=0, dtype=torch.float64, **sizes)
    params = declared_shapes(fill_params(layer, c, c.id), c, pdims, sizes)
    return layer, sizes, params, pdims


def make_inputs(c: Combo, sizes, L, key, bsz=2):
    rng = _rng(key)
    u = rng.standard_normal((bsz, L, sizes["Ch"]))
    tau = rng.uniform(0.5, 1.5, (bsz, L)) if c.step == "tau" and c.rule != "recurrence" else None
    return u, tau


def make_state(c: Combo, sizes, key, bsz=2):
    rng = _rng(key)
    shape = (bsz,) + tuple(sizes[d] for d in c.sdims)
    return _cnormal(rng, shape) if c.cplx else rng.standard_normal(shape)


def call(layer, u, tau=None, **kw):
    if tau is not None:
        kw["tau"] = torch.as_tensor(tau)
    return layer(torch.as_tensor(u), **kw)


def lengths(c: Combo):
    return (6,) if c.scan[0] == "cross2d" else (1, 5, 7)


# ============================================================================
# the tests
# ============================================================================

def test_generated_specs_cover_the_grid():
    seen = {(c.structure, c.rule) for c in CAUSAL_COMBOS}
    assert seen == set(itertools.product(STRUCTURES, RULES))
    for s in STRUCTURES:
        mine = [c for c in ALL_COMBOS if c.structure == s]
        assert {c.scan for c in mine} >= set(_SCANS) | {("causal",)}
        assert {c.layout for c in mine} == set(LAYOUTS)
        assert {c.step for c in mine} == set(STEPS)
        assert {c.coef for c in mine} == {"static", "token"}
        assert {c.cplx for c in mine} == ({True} if s == "dplr" else {True, False})


@pytest.mark.parametrize("backend", ["numpy", "torch", "triton"])
@pytest.mark.parametrize("c", ALL_COMBOS, ids=lambda c: c.id)
def test_forward_matches_naive_evaluator(c, backend):
    if backend == "triton":
        # Through Triton's CPU interpreter (float64 here); specs beyond the kernel fall back
        # to the torch backend with a notice, and must be exact all the same.
        pytest.importorskip("triton")
    layer, sizes, params, pdims = make_layer(c, backend)
    single = c.scan[0] in ("causal", "reverse")
    for L in lengths(c):
        u, tau = make_inputs(c, sizes, L, f"{c.id}/{L}")
        x0 = make_state(c, sizes, f"{c.id}/x0/{L}") if single and L != 5 else None
        want, want_x = reference(c, sizes, params, pdims, u, tau, x0,
                                 rows=sizes["R"], cols=sizes["C2"])
        if single:
            kw = {} if x0 is None else {"initial_state": torch.as_tensor(x0)}
            got, got_x = call(layer, u, tau, return_state=True, **kw)
            assert relerr(got_x, want_x) <= RTOL, f"final state, L={L}"
        else:
            got = call(layer, u, tau)
        assert got.dtype == torch.float64
        assert relerr(got, want) <= RTOL, f"output, L={L}"

    if c.scan[0] == "cross2d":
        # rows and cols are dims, settable per call: a 3 x 2 image this time
        u, tau = make_inputs(c, sizes, 6, f"{c.id}/3x2")
        want, _ = reference(c, sizes, params, pdims, u, tau, rows=3, cols=2)
        got = call(layer, u, tau, R=3, C2=2)
        assert relerr(got, want) <= RTOL, "output, R=3, C2=2 per call"


CAUSAL_ALL = [c for c in ALL_COMBOS if c.scan == ("causal",)]
SINGLE_ALL = [c for c in ALL_COMBOS if c.scan[0] in ("causal", "reverse")]


@pytest.mark.parametrize("c", CAUSAL_ALL, ids=lambda c: c.id)
def test_step_matches_forward(c):
    layer, sizes, params, pdims = make_layer(c)
    L = 5
    u, tau = make_inputs(c, sizes, L, f"{c.id}/step")
    x0 = make_state(c, sizes, f"{c.id}/step/x0")
    want, want_x = call(layer, u, tau, initial_state=torch.as_tensor(x0), return_state=True)
    x = torch.as_tensor(x0)
    ys = []
    for t in range(L):
        kw = {} if tau is None else {"tau": torch.as_tensor(tau[:, t])}
        y_t, x = layer.step(torch.as_tensor(u[:, t]), x, **kw)
        ys.append(y_t)
    assert relerr(torch.stack(ys, dim=1), want.detach().numpy()) <= RTOL
    assert relerr(x, want_x.detach().numpy()) <= RTOL
    # from the zero state of init_state()
    x = layer.init_state(2)
    assert tuple(x.shape) == (2,) + tuple(sizes[d] for d in c.sdims)
    assert np.all(x.detach().numpy() == 0)
    ys = []
    for t in range(L):
        kw = {} if tau is None else {"tau": torch.as_tensor(tau[:, t])}
        y_t, x = layer.step(torch.as_tensor(u[:, t]), x, **kw)
        ys.append(y_t)
    want0 = call(layer, u, tau)
    assert relerr(torch.stack(ys, dim=1), want0.detach().numpy()) <= RTOL


@pytest.mark.parametrize("c", SINGLE_ALL, ids=lambda c: c.id)
def test_chunked_forward_matches_whole(c):
    layer, sizes, params, pdims = make_layer(c)
    L, T = 7, 3
    u, tau = make_inputs(c, sizes, L, f"{c.id}/chunk")
    x0 = make_state(c, sizes, f"{c.id}/chunk/x0")
    whole, whole_x = call(layer, u, tau, initial_state=torch.as_tensor(x0), return_state=True)

    def part(sl, x):
        return call(layer, u[:, sl], None if tau is None else tau[:, sl],
                    initial_state=x, return_state=True)

    # the first visited chunk, then the rest from the state it returns
    first, rest = (slice(0, T), slice(T, L)) if c.scan[0] == "causal" else \
        (slice(T, L), slice(0, T))
    y1, x1 = part(first, torch.as_tensor(x0))
    y2, x2 = part(rest, x1)
    got = torch.empty_like(whole)
    got[:, first], got[:, rest] = y1, y2
    assert relerr(got, whole.detach().numpy()) <= RTOL
    assert relerr(x2, whole_x.detach().numpy()) <= RTOL


# ---- ZOH with A exactly zero in some entries ------------------------------

_ZERO_COMBOS = [
    Combo("diagonal", "zoh", ("causal",), "CS", cplx=False, step="static"),
    Combo("diagonal", "zoh", ("causal",), "CS", cplx=True, step="static"),
    Combo("diagonal", "zoh", ("causal",), "SC", cplx=True, step="token", coef="token"),
    Combo("diagonal", "zoh", ("causal",), "S", cplx=False, step="tau"),
    Combo("scalar", "zoh", ("causal",), "CS", cplx=True, step="static"),
]


@pytest.mark.parametrize("c", _ZERO_COMBOS, ids=lambda c: c.id)
def test_zoh_zero_eigenvalue_is_the_integrator_limit(c):
    text, pdims = build_spec(c)
    if c.structure == "scalar":
        # A = -exp(As) is never 0; state A directly from a param instead
        text = text.replace("A = -exp(As) + 1j * Aw : scalar", "A = As + 1j * Aw : scalar")
        assert "A = As + 1j * Aw : scalar" in text
    layer = _compiled(text).Gen(seed=0, dtype=torch.float64, **c.sizes())
    sizes = c.sizes()
    params = fill_params(layer, c, c.id + "/zero")
    # zero some entries of A exactly (both parts if complex)
    if c.structure == "scalar":
        params["As"] = -np.exp(params["As"])
        params["As"][0] = 0.0
        params["Aw"][0] = 0.0
        zero_mask = lambda idx: idx[c.sdims[0]] == 0                      # noqa: E731
    else:
        ad = params["Ad"]
        flat = ad.reshape(-1)
        flat[::2] = 0.0
        if c.cplx:
            params["Aw"].reshape(-1)[::2] = 0.0
        zero_mask = lambda idx: _at(params["Ad"], pdims["Ad"], idx) == 0 and \
            (not c.cplx or _at(params["Aw"], pdims["Aw"], idx) == 0)       # noqa: E731
    layer.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})

    # naive reference (for scalar, As now holds A's real part itself)
    ref_c = dataclasses.replace(c, structure="diagonal") if c.structure == "scalar" else c
    ref_params = dict(params)
    ref_pdims = dict(pdims)
    if c.structure == "scalar":
        ref_params["Ad"] = -params["As"]
        ref_pdims["Ad"] = pdims["As"]
        del ref_params["As"]
    u, tau = make_inputs(c, sizes, 5, c.id + "/zero/u")
    want, want_x = reference(ref_c, sizes, ref_params, ref_pdims, u, tau)
    got, got_x = call(layer, u, tau, return_state=True)
    assert np.all(np.isfinite(got.detach().numpy()))
    assert relerr(got, want) <= RTOL
    assert relerr(got_x, want_x) <= RTOL

    # one token from the zero state: x_1 = Ebar, which is step * E where A = 0
    _, x1 = call(layer, u[:, :1], None if tau is None else tau[:, :1], return_state=True)
    x1 = x1.detach().numpy()
    nv = Naive(ref_c, sizes, ref_params, ref_pdims)
    nzero = 0
    for b in range(2):
        for full in itertools.product(*(range(sizes[d]) for d in c.sdims)):
            idx = dict(zip(c.sdims, full))
            if not zero_mask(idx):
                continue
            nzero += 1
            d = nv.step_size(idx, u[b, 0], None if tau is None else tau[b, 0])
            e = nv.input_term(idx, u[b, 0])
            assert abs(x1[(b,) + full] - d * e) <= RTOL * max(abs(d * e), 1e-300)
    assert nzero > 0


@pytest.mark.parametrize("c", [
    Combo("dense", "zoh", ("causal",), "CS", cplx=False, step="static"),
    Combo("dense", "zoh", ("causal",), "S", cplx=True, step="token", coef="token"),
    Combo("block", "zoh", ("causal",), "CS", cplx=True, step="tau"),
], ids=lambda c: c.id)
def test_zoh_singular_matrix_is_the_phi1_limit(c):
    """Matrix ZOH where A is singular: Ebar = step phi1(step A) E (section 10),
    which is step * E where A = 0."""
    layer, sizes, params, pdims = make_layer(c)
    M = params["M"]
    if c.layout == "S":
        # rank-deficient, not zero: two equal columns
        M[..., :, 0] = M[..., :, 1]
        assert abs(np.linalg.det(M)) < 1e-12
    else:
        M[0] = 0.0                      # channel 0: A = 0 exactly
        if c.structure == "block":
            n = M.shape[-1]
            M[1, : n // 2, : n // 2] = 0.0   # channel 1: one zero block
    layer.load_state_dict({k: torch.as_tensor(v.reshape(layer.state_dict()[k].shape))
                           for k, v in params.items()})
    u, tau = make_inputs(c, sizes, 5, c.id + "/singular")
    want, want_x = reference(c, sizes, params, pdims, u, tau, singular=True)
    got, got_x = call(layer, u, tau, return_state=True)
    assert relerr(got, want) <= RTOL
    assert relerr(got_x, want_x) <= RTOL
    if c.layout != "S":
        # channel 0 is a pure integrator: x_1 = step * E from the zero state
        _, x1 = call(layer, u[:, :1], None if tau is None else tau[:, :1], return_state=True)
        nv = Naive(c, sizes, params, pdims)
        for b in range(2):
            for i in range(sizes["Sz"]):
                idx = {"Ch": 0, "Sz": i}
                de = (nv.step_size({"Ch": 0}, u[b, 0], None if tau is None else tau[b, 0])
                      * nv.input_term(idx, u[b, 0]))
                assert abs(x1[b, 0, i].item() - de) <= RTOL * max(abs(de), 1e-300)


# ---- a reverse scan's initial_state enters at the last token ----------------

@pytest.mark.parametrize("c", [
    Combo("diagonal", "zoh", ("reverse",), "CS", cplx=True, step="static"),
    Combo("dense", "bilinear", ("reverse",), "SC", cplx=False, step="static"),
], ids=lambda c: c.id)
def test_reverse_initial_state_enters_at_last_token(c):
    layer, sizes, params, pdims = make_layer(c)
    L = 5
    x0 = make_state(c, sizes, c.id + "/rev/x0")
    u = np.zeros((2, L, sizes["Ch"]))
    y, xl = call(layer, u, initial_state=torch.as_tensor(x0), return_state=True)
    y = y.detach().numpy()

    # the LTI transition of one token, from the naive evaluator with no input
    nv = Naive(c, sizes, params, pdims)
    states = []
    x = x0.copy()
    for _ in range(L):
        x = np.stack([nv.update(x[b], u[b, 0], None) for b in range(2)])
        states.append(x)
    # with no input, token L sees Abar x0, token L-1 sees Abar^2 x0, ..., token 1 Abar^L x0
    for k in range(L):
        t = L - 1 - k
        want_t = np.stack([nv.output(states[k][b], u[b, t]) for b in range(2)])
        assert relerr(y[:, t], want_t) <= RTOL, f"token {t}"
    assert relerr(xl, states[-1]) <= RTOL
    # the decay really shows: the last token is closest to x0
    assert np.max(np.abs(y[:, -1])) > 0

    # and the reverse scan is the causal scan of the flipped sequence
    uu, _ = make_inputs(c, sizes, L, c.id + "/rev/u")
    yr, xr = call(layer, uu, initial_state=torch.as_tensor(x0), return_state=True)
    causal = dataclasses.replace(c, scan=("causal",))
    yc, xc = Naive(causal, sizes, params, pdims).run(uu[:, ::-1], None, x0)
    assert relerr(yr, yc[:, ::-1]) <= RTOL
    assert relerr(xr, xc) <= RTOL


# ---- the evaluator checks itself --------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_evaluator_diagonal_table_is_the_matrix_table(rule, cplx):
    rng = _rng(f"self/{rule}/{cplx}")
    n = 3
    a = -rng.uniform(0.2, 1.5, n) + (1j * rng.standard_normal(n) if cplx else 0)
    e = rng.standard_normal(n) + (1j * rng.standard_normal(n) if cplx else 0)
    d = 0.37
    Abar, Ebar = matrix_rule(rule, np.diag(a), d, e)
    pairs = [elementwise_rule(rule, a[i], d, e[i]) for i in range(n)]
    np.testing.assert_allclose(np.diag(Abar), [p[0] for p in pairs], rtol=1e-13)
    np.testing.assert_allclose(Abar - np.diag(np.diag(Abar)), 0, atol=1e-14)
    np.testing.assert_allclose(Ebar, [p[1] for p in pairs], rtol=1e-13)


def test_evaluator_zoh_is_van_loan():
    """A^-1 (exp(dA) - I) E equals the corner of exp(d [[A, E], [0, 0]])."""
    rng = _rng("self/vanloan")
    n = 4
    A = 0.3 * rng.standard_normal((n, n)) - np.eye(n)
    E = rng.standard_normal(n)
    d = 0.41
    aug = np.zeros((n + 1, n + 1))
    aug[:n, :n], aug[:n, n] = A, E
    corner = _expm(d * aug)[:n, n]
    np.testing.assert_allclose(matrix_rule("zoh", A, d, E)[1], corner, rtol=1e-12)


# ---- regressions: compiler bugs this file found (fixed) ------------------------

_SCALAR_PARAM_SPEC = """
ssm ScalarParam {
  dims Ch = 3, Sz = 2
  input u[Ch]
  state x[Ch, Sz]
  param As[] = log(0.7)
  param g[] = 2.5
  A = -exp(As) : scalar
  dynamics x' = A x + u
  discretize zoh, step = 0.3
  scan causal
  output y = g * sum(x, Sz)
}
"""


def test_scalar_param_has_no_dims():
    layer = _compiled(_SCALAR_PARAM_SPEC).ScalarParam(seed=0, dtype=torch.float64)
    sd = layer.state_dict()
    assert tuple(sd["As"].shape) == () and tuple(sd["g"].shape) == ()


def test_scalar_param_values_are_right():
    # the values (whatever the shape) and the forward are right
    layer = _compiled(_SCALAR_PARAM_SPEC).ScalarParam(seed=0, dtype=torch.float64)
    sd = layer.state_dict()
    assert sd["As"].numel() == 1 and sd["g"].numel() == 1
    assert abs(sd["As"].item() - np.log(0.7)) < 1e-15 and sd["g"].item() == 2.5
    u = _rng("scalar-param").standard_normal((2, 5, 3))
    a, d = -0.7, 0.3
    x = np.zeros((2, 3, 2))
    want = np.zeros((2, 5, 3))
    for t in range(5):
        x = np.exp(d * a) * x + (np.expm1(d * a) / a * u[:, t])[:, :, None]
        want[:, t] = 2.5 * x.sum(-1)
    assert relerr(layer(torch.as_tensor(u)), want) <= RTOL


_ONE_DIM_SPEC = """
ssm OneDim {
  dims N = 4
  input u[N]
  state x[N]
  param a[N] = uniform(0.2, 1.5)
  A = -a : diagonal
  dynamics x' = A x + u
  discretize zoh, step = 0.1
  scan causal
  output y = x
}
"""


def test_block_with_a_single_dim():
    layer = _compiled(_ONE_DIM_SPEC).OneDim(seed=0, dtype=torch.float64)
    a = -layer.state_dict()["a"].numpy()
    u = _rng("one-dim").standard_normal((2, 5, 4))
    x = np.zeros((2, 4))
    want = np.zeros((2, 5, 4))
    for t in range(5):
        x = np.exp(0.1 * a) * x + np.expm1(0.1 * a) / a * u[:, t]
        want[:, t] = x
    assert relerr(layer(torch.as_tensor(u)), want) <= RTOL
