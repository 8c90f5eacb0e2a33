"""ssmc's NumPy reference backend against independent paper oracles.

The oracles (``papers.py``) are written from the papers' equations in float64 /
complex128 NumPy with an explicit loop over time, and never touch ssmc. Every
case compiles a spec with ``backend="numpy"``, takes its parameters from
``state_dict()``, and requires

    max|ssmc - oracle| / max(max|oracle|, 1e-300) <= 1e-10

for outputs and final states.
"""

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ssmc

from . import papers

RTOL = 1e-10

# ----------------------------------------------------------------------------
# the five specs of section 12 of the language page, verbatim
# ----------------------------------------------------------------------------

S4D_SPEC = """
ssm S4D "S4D-Lin: diagonal LTI SSM, ZOH (Gu et al. 2022)" {
  dims    H = 64, N = 32                  # N complex modes = conjugate pairs of a 2N real state
  input   u[H]
  state   x[H, N] complex
  param   log_dt[H]        = log_uniform(0.001, 0.1)
  param   log_A_real[H, N] = log(0.5)
  param   A_imag[H, N]     = pi * arange(N)
  param   C[H, N] complex  = normal(0, 1)
  param   D[H]             = normal(0, 1)
  A = -exp(log_A_real) + 1j * A_imag : diagonal
  dynamics   x' = A x + u
  discretize zoh, step = exp(log_dt)
  scan       causal
  output     y = 2 * re(sum(C * x, N)) + D * u
}
"""

MAMBA_SPEC = """
ssm Mamba "Selective SSM, the core of a Mamba block (Gu & Dao 2023)" {
  dims    H = 64, N = 16, R = ceil(H / 16)
  input   u[H]
  state   x[H, N]
  param   A_log[H, N] = log(1 + arange(N))
  param   D[H]        = ones
  param   dt_bias[H]  = inv_softplus(log_uniform(0.001, 0.1))
  A  = -exp(A_log) : diagonal
  dt = softplus(linear(linear(u, R), H) + dt_bias)
  B  = linear(u, N)
  C  = linear(u, N)
  dynamics   x' = A x + B * u
  discretize zoh_euler, step = dt
  scan       causal
  output     y = sum(C * x, N) + D * u
}
"""

MAMBA2_SPEC = """
ssm Mamba2 "SSD: scalar-times-identity A per head (Dao & Gu 2024)" {
  dims    Hd = 8, P = 16, N = 32
  input   u[Hd, P]
  state   x[Hd, P, N]
  param   A_log[Hd]   = log(uniform(1, 16))
  param   dt_bias[Hd] = inv_softplus(log_uniform(0.001, 0.1))
  param   D[Hd]       = ones
  A  = -exp(A_log) : scalar
  dt = softplus(linear(u, Hd) + dt_bias)
  B  = linear(u, N)
  C  = linear(u, N)
  dynamics   x' = A x + B * u
  discretize zoh_euler, step = dt
  scan       causal
  output     y = sum(C * x, N) + D * u
}
"""

S5_SPEC = """
ssm S5 "MIMO diagonal SSM (Smith et al. 2023)" {
  dims    H = 32, P = 16
  input   u[H]
  state   x[P] complex
  param   Lambda[P] complex = hippo_legs_diag(P)
  param   B[P, H] complex   = normal(0, 0.25)
  param   C[H, P] complex   = normal(0, 0.25)
  param   D[H]              = normal(0, 1)
  param   log_dt[P]         = log_uniform(0.001, 0.1)
  A = Lambda : diagonal
  dynamics   x' = A x + sum(B * u, H)
  discretize zoh, step = exp(log_dt)
  scan       causal
  output     y = re(sum(C * x, P)) + D * u
}
"""

LRU_SPEC = """
ssm LRU "Linear Recurrent Unit (Orvieto et al. 2023)" {
  dims    H = 32, N = 16
  input   u[H]
  state   x[N] complex
  param   nu_log[N]     = log(-0.5 * log(uniform(0.81, 0.998)))   # |lambda| uniform on the ring r in [0.9, 0.999]
  param   theta_log[N]  = log(uniform(0, 2 * pi))
  param   B[N, H] complex = normal(0, 0.125)
  param   C[H, N] complex = normal(0, 0.177)
  param   D[H]          = normal(0, 1)
  lam   = exp(-exp(nu_log) + 1j * exp(theta_log)) : diagonal
  gamma = sqrt(1 - abs(lam) ** 2)
  recurrence x = lam x + gamma * sum(B * u, H)
  scan       causal
  output     y = re(sum(C * x, N)) + D * u
}
"""

# ----------------------------------------------------------------------------
# further specs written for these tests
# ----------------------------------------------------------------------------

S4D_REAL_SPEC = """
ssm S4DReal "S4D-Real: real diagonal LTI SSM, bilinear" {
  dims    H = 4, N = 8
  input   u[H]
  state   x[H, N]
  param   log_dt[H]  = log(log_uniform(0.01, 0.5))
  param   A_re[H, N] = s4d_real(N)
  param   B[H, N]    = normal(0, 1)
  param   C[H, N]    = normal(0, 1)
  param   D[H]       = normal(0, 1)
  A = A_re : diagonal
  dynamics   x' = A x + B * u
  discretize bilinear, step = exp(log_dt)
  scan       causal
  output     y = sum(C * x, N) + D * u
}
"""

LSSL_SPEC = """
ssm LSSL "LSSL: dense HiPPO-LegS state matrix, bilinear (Gu et al. 2021)" {
  dims    H = 4, N = 8
  input   u[H]
  state   x[H, N]
  param   A[N, N] frozen = hippo_legs(N)
  param   Bv[N] frozen   = hippo_legs_B(N)
  param   log_dt[H]      = log(log_uniform(0.01, 0.3))
  param   C[H, N]        = normal(0, 1)
  param   D[H]           = normal(0, 1)
  Am = A : dense
  dynamics   x' = Am x + Bv * u
  discretize bilinear, step = exp(log_dt)
  scan       causal
  output     y = sum(C * x, N) + D * u
}
"""

S4D_REV_SPEC = """
ssm S4DRev "S4D-Lin scanned from the last token to the first" {
  dims    H = 4, N = 8
  input   u[H]
  state   x[H, N] complex
  param   log_dt[H]        = log(log_uniform(0.01, 0.3))
  param   log_A_real[H, N] = log(0.5)
  param   A_imag[H, N]     = pi * arange(N)
  param   C[H, N] complex  = normal(0, 1)
  param   D[H]             = normal(0, 1)
  A = -exp(log_A_real) + 1j * A_imag : diagonal
  dynamics   x' = A x + u
  discretize zoh, step = exp(log_dt)
  scan       reverse
  output     y = 2 * re(sum(C * x, N)) + D * u
}
"""

MAMBA_REV_SPEC = MAMBA_SPEC.replace("ssm Mamba ", "ssm MambaRev ").replace(
    "scan       causal", "scan       reverse")

BIMAMBA_SPEC = MAMBA_SPEC.replace("ssm Mamba ", "ssm BiMamba ").replace(
    "scan       causal", "scan       bidirectional(merge = add, params = separate)")

BIMAMBA_SHARED_SPEC = MAMBA_SPEC.replace("ssm Mamba ", "ssm BiMambaShared ").replace(
    "scan       causal", "scan       bidirectional(merge = add, params = shared)")

# ----------------------------------------------------------------------------
# the examples of published layers, read from examples/ as they stand
# ----------------------------------------------------------------------------

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def example(stem):
    return (EXAMPLES_DIR / f"{stem}.ssm").read_text()


assert "scan       reverse" in MAMBA_REV_SPEC
assert "params = separate" in BIMAMBA_SPEC and "params = shared" in BIMAMBA_SHARED_SPEC


# ----------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------

def _zero_params(*names):
    """The output without its skip term: the named params set to zero."""
    def part(case, P, u, y_ref):
        if not all(k in P for k in names):
            return None
        P0 = dict(P)
        for k in names:
            P0[k] = np.zeros_like(P[k])
        return case.reference(P0, u)[0]
    return part


def _minus_residual(case, P, u, y_ref):
    """The output without its residual connection (y = ... + u)."""
    return y_ref - u


class Case:
    def __init__(self, spec, cls, oracle, dims, input_dims, state_dims, complex_state,
                 scan="causal", ssm_part=_zero_params("D")):
        self.spec = spec
        self.cls = cls
        self.oracle = oracle              # (P, u, x0=None, reverse=False) -> (y, x)
        self.dims = dims                  # list of dim dicts
        self.input_dims = input_dims      # dims -> tuple
        self.state_dims = state_dims      # dims -> tuple
        self.complex_state = complex_state
        self.scan = scan                  # causal | reverse | bi_separate | bi_shared
        self.ssm_part = ssm_part          # (case, P, u, y_ref) -> y without its skip term, or None

    def reference(self, P, u, x0=None):
        if self.scan == "bi_separate":
            return papers.bidirectional(self.oracle, P, u, params="separate"), None
        if self.scan == "bi_shared":
            return papers.bidirectional(self.oracle, P, u, params="shared"), None
        return self.oracle(P, u, x0, reverse=(self.scan == "reverse"))


def _hn(d):
    return (d["H"],)


def _hxn(d):
    return (d["H"], d["N"])


CASES = {
    "s4d_zoh": Case(S4D_SPEC, "S4D", papers.s4d_zoh,
                    [dict(H=3, N=5), dict(H=1, N=2)], _hn, _hxn, True),
    "s4d_real_bilinear": Case(S4D_REAL_SPEC, "S4DReal", papers.s4d_real_bilinear,
                              [dict(H=3, N=5)], _hn, _hxn, False),
    "lssl_bilinear": Case(LSSL_SPEC, "LSSL", papers.lssl_bilinear,
                          [dict(H=3, N=5), dict(H=2, N=7)], _hn, _hxn, False),
    "s5": Case(S5_SPEC, "S5", papers.s5,
               [dict(H=3, P=5)], _hn, lambda d: (d["P"],), True),
    "lru": Case(LRU_SPEC, "LRU", papers.lru,
                [dict(H=3, N=5)], _hn, lambda d: (d["N"],), True),
    "mamba": Case(MAMBA_SPEC, "Mamba", papers.mamba,
                  [dict(H=3, N=5), dict(H=17, N=3)], _hn, _hxn, False),
    "mamba2": Case(MAMBA2_SPEC, "Mamba2", papers.mamba2,
                   [dict(Hd=3, P=2, N=5)], lambda d: (d["Hd"], d["P"]),
                   lambda d: (d["Hd"], d["P"], d["N"]), False),
    "s4d_reverse": Case(S4D_REV_SPEC, "S4DRev", papers.s4d_zoh,
                        [dict(H=3, N=5)], _hn, _hxn, True, scan="reverse"),
    "mamba_reverse": Case(MAMBA_REV_SPEC, "MambaRev", papers.mamba,
                          [dict(H=3, N=5)], _hn, _hxn, False, scan="reverse"),
    "mamba_bidirectional": Case(BIMAMBA_SPEC, "BiMamba", papers.mamba,
                                [dict(H=3, N=5)], _hn, _hxn, False, scan="bi_separate"),
    "mamba_bidirectional_shared": Case(BIMAMBA_SHARED_SPEC, "BiMambaShared", papers.mamba,
                                       [dict(H=3, N=5)], _hn, _hxn, False, scan="bi_shared"),
    # published layers, the specs of examples/
    "mamba2_dt_limit": Case(example("mamba2_dt_limit"), "Mamba2DtLimit",
                            functools.partial(papers.mamba2, dt_limit=(0.001, 0.1)),
                            [dict(Hd=3, P=2, N=5)], lambda d: (d["Hd"], d["P"]),
                            lambda d: (d["Hd"], d["P"], d["N"]), False),
    "rglru": Case(example("rglru"), "RGLRU", papers.rglru,
                  [dict(H=3), dict(H=6)], _hn, _hn, False, ssm_part=None),
    "gla": Case(example("gla"), "GLA", functools.partial(papers.gla, Hd=2),
                [dict(D=5, Hd=2, Dk=3, Dv=2, R=2)], lambda d: (d["D"],),
                lambda d: (d["Hd"], d["Dk"], d["Dv"]), False, ssm_part=None),
    "gla_3heads": Case(example("gla"), "GLA", functools.partial(papers.gla, Hd=3),
                       [dict(D=4, Hd=3, Dk=2, Dv=3, R=3)], lambda d: (d["D"],),
                       lambda d: (d["Hd"], d["Dk"], d["Dv"]), False, ssm_part=None),
    "retnet": Case(example("retnet"), "RetNet", functools.partial(papers.retnet, Hd=3),
                   [dict(D=5, Hd=3, Dk=2, Dv=3)], lambda d: (d["D"],),
                   lambda d: (d["Hd"], d["Dk"], d["Dv"]), False, ssm_part=None),
    "gss": Case(example("gss"), "GSS", papers.gss,
                [dict(E=5, H=3, F=4, N=2)], lambda d: (d["E"],), lambda d: (d["H"], d["N"]), True,
                ssm_part=_minus_residual),
    "s7": Case(example("s7"), "S7", papers.s7,
               [dict(H=3, N=5), dict(H=2, N=3)], _hn, lambda d: (d["N"],), False,
               ssm_part=_zero_params("Dk_proj")),
}

STATEFUL = [k for k, c in CASES.items() if c.scan in ("causal", "reverse")]
CAUSAL = [k for k, c in CASES.items() if c.scan == "causal"]
SHAPES = [(1, 1), (1, 7), (3, 7), (3, 31), (1, 31), (3, 1)]   # (batch, length)


def _dims_key(d):
    return tuple(sorted(d.items()))


ALL_CASE_DIMS = [pytest.param(name, i, id=f"{name}-" + "-".join(f"{k}{v}" for k, v in d.items()))
                 for name, c in CASES.items() for i, d in enumerate(c.dims)]
STATEFUL_CASE_DIMS = [p for p in ALL_CASE_DIMS if p.values[0] in STATEFUL]
CAUSAL_CASE_DIMS = [p for p in ALL_CASE_DIMS if p.values[0] in CAUSAL]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def compiled(name):
    return ssmc.loads(CASES[name].spec, backend="numpy")


def to_numpy(v):
    v = v.detach()
    return v.cdouble().numpy() if v.is_complex() else v.double().numpy()


@functools.lru_cache(maxsize=None)
def _layer(name, dims_key):
    mod = compiled(name)
    layer = getattr(mod, CASES[name].cls)(**dict(dims_key), seed=0)
    P = {k: to_numpy(v) for k, v in layer.state_dict().items()}
    return layer, P


def layer_and_params(name, i):
    layer, P = _layer(name, _dims_key(CASES[name].dims[i]))
    return layer, {k: v.copy() for k, v in P.items()}


def rel(a, b):
    """max|a - b| / max(max|b|, 1e-300); b is the oracle."""
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, f"shape {a.shape} != oracle shape {b.shape}"
    assert np.all(np.isfinite(a)), "non-finite values"
    if b.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def make_input(name, i, Bsz, L, seed):
    c = CASES[name]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((Bsz, L, *c.input_dims(c.dims[i])))


def make_state(name, i, Bsz, seed):
    c = CASES[name]
    rng = np.random.default_rng(seed)
    shape = (Bsz, *c.state_dims(c.dims[i]))
    x = rng.standard_normal(shape)
    if c.complex_state:
        x = (x + 1j * rng.standard_normal(shape)) / math.sqrt(2)
    return x


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def check_y(name, P, y, y_ref, u, what="y"):
    """Relative error on y, and on y without the skip term D*u (stricter: the
    skip term must not hide an error in the state-space part)."""
    assert y.dtype == np.float64, f"{what}: dtype {y.dtype}, expected float64"
    e = rel(y, y_ref)
    assert e <= RTOL, f"{name}: {what} relative error {e:.3e}"
    c = CASES[name]
    y_ssm = c.ssm_part(c, P, u, y_ref) if what == "y" and c.ssm_part else None
    if y_ssm is not None and np.max(np.abs(y_ssm)) > 0:
        e2 = float(np.max(np.abs(y - y_ref)) / np.max(np.abs(y_ssm)))
        assert e2 <= RTOL, f"{name}: {what} error relative to the SSM part {e2:.3e}"


# ----------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("Bsz,L", SHAPES)
@pytest.mark.parametrize("name,i", ALL_CASE_DIMS)
def test_forward_matches_oracle(name, i, Bsz, L):
    layer, P = layer_and_params(name, i)
    u = make_input(name, i, Bsz, L, seed=100 + 10 * Bsz + L)
    with torch.no_grad():
        y = layer(t(u))
    assert isinstance(y, torch.Tensor)
    y = y.numpy()
    y_ref, _ = CASES[name].reference(P, u)
    check_y(name, P, y, y_ref, u)


@pytest.mark.parametrize("Bsz,L", [(1, 1), (3, 7), (1, 31)])
@pytest.mark.parametrize("name,i", STATEFUL_CASE_DIMS)
def test_final_state_and_initial_state(name, i, Bsz, L):
    c = CASES[name]
    layer, P = layer_and_params(name, i)
    u = make_input(name, i, Bsz, L, seed=200 + L)
    # zero initial state
    with torch.no_grad():
        y, x = layer(t(u), return_state=True)
    y_ref, x_ref = c.reference(P, u)
    check_y(name, P, y.numpy(), y_ref, u)
    assert tuple(x.shape) == x_ref.shape, f"state shape {tuple(x.shape)} != {x_ref.shape}"
    assert x.is_complex() == c.complex_state
    assert rel(to_numpy(x), x_ref) <= RTOL, f"{name}: final state"
    # random initial state
    x0 = make_state(name, i, Bsz, seed=300 + L)
    with torch.no_grad():
        y, x = layer(t(u), initial_state=t(x0), return_state=True)
    y_ref, x_ref = c.reference(P, u, x0)
    assert rel(y.numpy(), y_ref) <= RTOL, f"{name}: y with initial_state"
    assert rel(to_numpy(x), x_ref) <= RTOL, f"{name}: final state with initial_state"


@pytest.mark.parametrize("L,cut", [(7, 3), (31, 1), (31, 17)])
@pytest.mark.parametrize("name,i", STATEFUL_CASE_DIMS)
def test_initial_state_chaining(name, i, L, cut):
    """Run the sequence in two pieces, passing the state across; for a reverse
    scan the tail is visited first."""
    c = CASES[name]
    layer, P = layer_and_params(name, i)
    Bsz = 3
    u = make_input(name, i, Bsz, L, seed=400 + L + cut)
    x0 = make_state(name, i, Bsz, seed=500 + L)
    y_ref, x_ref = c.reference(P, u, x0)
    first, second = (u[:, :cut], u[:, cut:])
    if c.scan == "reverse":
        first, second = second, first
    with torch.no_grad():
        y1, x1 = layer(t(first), initial_state=t(x0), return_state=True)
        y2, x2 = layer(t(second), initial_state=x1, return_state=True)
    pieces = [y1.numpy(), y2.numpy()]
    if c.scan == "reverse":
        pieces = pieces[::-1]
    assert rel(np.concatenate(pieces, axis=1), y_ref) <= RTOL, f"{name}: chained y"
    assert rel(to_numpy(x2), x_ref) <= RTOL, f"{name}: chained final state"


@pytest.mark.parametrize("name,i", CAUSAL_CASE_DIMS)
def test_step_matches_oracle(name, i):
    c = CASES[name]
    layer, P = layer_and_params(name, i)
    Bsz, L = 3, 7
    u = make_input(name, i, Bsz, L, seed=600)
    x0 = make_state(name, i, Bsz, seed=601)
    y_ref, x_ref = c.reference(P, u, x0)
    x = layer.init_state(Bsz)
    assert tuple(x.shape) == (Bsz, *c.state_dims(c.dims[i]))
    assert float(x.abs().max()) == 0.0
    x = t(x0)
    ys = []
    with torch.no_grad():
        for k in range(L):
            y_t, x = layer.step(t(u[:, k]), x)
            ys.append(y_t.numpy())
    assert rel(np.stack(ys, axis=1), y_ref) <= RTOL, f"{name}: step outputs"
    assert rel(to_numpy(x), x_ref) <= RTOL, f"{name}: step final state"


@pytest.mark.parametrize("name,i", ALL_CASE_DIMS)
def test_loaded_parameters_are_used(name, i):
    """Perturb every trainable parameter, load it back, compare again: the module
    must read its parameters, not values fixed at construction."""
    c = CASES[name]
    layer0, P = layer_and_params(name, i)
    P0 = dict(P)
    layer = getattr(compiled(name), c.cls)(**c.dims[i], seed=1)
    rng = np.random.default_rng(700)
    trainable = {k for k, _ in layer.named_parameters()}
    sd = {}
    for k, v in layer0.state_dict().items():
        a = P[k]
        if k in trainable:
            noise = rng.standard_normal(a.shape)
            if np.iscomplexobj(a):
                noise = noise + 1j * rng.standard_normal(a.shape)
            a = a + 0.1 * noise
            P[k] = a
        sd[k] = t(a).to(v.dtype)
    layer.load_state_dict(sd)
    # read back what the module holds (its storage dtype may round the perturbation)
    P = {k: to_numpy(v) for k, v in layer.state_dict().items()}
    assert any(not np.array_equal(P[k], P0[k]) for k in trainable), "perturbation not loaded"
    u = make_input(name, i, 2, 7, seed=701)
    with torch.no_grad():
        y = layer(t(u)).numpy()
    y_ref, _ = c.reference(P, u)
    check_y(name, P, y, y_ref, u)


# ----------------------------------------------------------------------------
# parameter names and shapes (the contract the oracles rely on)
# ----------------------------------------------------------------------------

def _expected_shapes(name, d):
    H, N = d.get("H"), d.get("N")
    if name in ("s4d_zoh", "s4d_reverse"):
        return {"log_dt": (H,), "log_A_real": (H, N), "A_imag": (H, N), "C": (H, N), "D": (H,)}
    if name == "s4d_real_bilinear":
        return {"log_dt": (H,), "A_re": (H, N), "B": (H, N), "C": (H, N), "D": (H,)}
    if name == "lssl_bilinear":
        return {"A": (N, N), "Bv": (N,), "log_dt": (H,), "C": (H, N), "D": (H,)}
    if name == "s5":
        Pd = d["P"]
        return {"Lambda": (Pd,), "B": (Pd, H), "C": (H, Pd), "D": (H,), "log_dt": (Pd,)}
    if name == "lru":
        return {"nu_log": (N,), "theta_log": (N,), "B": (N, H), "C": (H, N), "D": (H,)}
    if name.startswith("mamba") and name not in ("mamba2", "mamba2_dt_limit"):
        R = math.ceil(H / 16)
        s = {"A_log": (H, N), "D": (H,), "dt_bias": (H,), "dt_proj": (H, R),
             "dt_proj2": (R, H), "B_proj": (N, H), "C_proj": (N, H)}
        if name == "mamba_bidirectional":
            s = {k: (2, *v) for k, v in s.items()}
        return s
    if name == "rglru":
        return {"Lambda": (H,), "r_proj": (H, H), "r_proj_bias": (H,), "i_proj": (H, H),
                "i_proj_bias": (H,)}
    if name in ("gla", "gla_3heads"):
        D, Hd, Dk, Dv, R = d["D"], d["Hd"], d["Dk"], d["Dv"], d["R"]
        return {"q_proj": (Hd * Dk, D), "k_proj": (Hd * Dk, D), "v_proj": (Hd * Dv, D),
                "alpha_proj2": (R, D), "alpha_proj": (Hd * Dk, R), "alpha_proj_bias": (Hd * Dk,)}
    if name == "retnet":
        D, Hd, Dk, Dv = d["D"], d["Hd"], d["Dk"], d["Dv"]
        return {"q_proj": (Hd * Dk, D), "k_proj": (Hd * Dk, D), "v_proj": (Hd * Dv, D)}
    if name == "gss":
        E, F = d["E"], d["F"]
        return {"ln_scale": (E,), "ln_bias": (E,), "Lambda": (H, N), "log_dt": (H,), "W": (H, N),
                "v_proj": (F, E), "v_proj_bias": (F,), "u_proj": (H, E), "u_proj_bias": (H,),
                "y_proj2": (F, H), "y_proj2_bias": (F,), "y_proj": (E, F), "y_proj_bias": (E,)}
    if name == "s7":
        return {"Lambda": (N,), "w_proj": (N, H), "B_proj": (N * H, H), "C_proj": (H * N, H),
                "Dk_proj": (H, H), "x_proj": (N, H)}
    if name in ("mamba2", "mamba2_dt_limit"):
        Hd, Pd = d["Hd"], d["P"]
        return {"A_log": (Hd,), "dt_bias": (Hd,), "D": (Hd,), "dt_proj": (Hd, Hd * Pd),
                "B_proj": (N, Hd * Pd), "C_proj": (N, Hd * Pd)}
    raise KeyError(name)


@pytest.mark.parametrize("name,i", ALL_CASE_DIMS)
def test_state_dict_names_and_shapes(name, i):
    _, P = layer_and_params(name, i)
    expected = _expected_shapes(name, CASES[name].dims[i])
    assert {k: v.shape for k, v in P.items()} == expected


# ----------------------------------------------------------------------------
# initializers that the papers fix exactly
# ----------------------------------------------------------------------------

def test_deterministic_initializers():
    _, P = layer_and_params("lssl_bilinear", 1)
    N = CASES["lssl_bilinear"].dims[1]["N"]
    assert rel(P["A"], papers.hippo_legs(N)) <= 1e-6      # float32 storage allowed
    assert rel(P["Bv"], papers.hippo_legs_B(N)) <= 1e-6

    _, P = layer_and_params("s4d_real_bilinear", 0)
    d = CASES["s4d_real_bilinear"].dims[0]
    assert rel(P["A_re"], np.broadcast_to(papers.s4d_real(d["N"]), (d["H"], d["N"]))) <= 1e-14

    _, P = layer_and_params("s4d_zoh", 0)
    d = CASES["s4d_zoh"].dims[0]
    A = -np.exp(P["log_A_real"]) + 1j * P["A_imag"]
    assert rel(A, np.broadcast_to(papers.s4d_lin(d["N"]), A.shape)) <= 1e-6   # float32 storage
    # the language page: log_uniform(lo, hi) is the value itself (exp of a uniform
    # draw in log space), so section 12's `log_dt = log_uniform(0.001, 0.1)` holds
    # values in [0.001, 0.1] (and the step exp(log_dt) is about 1)
    assert np.all((P["log_dt"] >= 0.001 * (1 - 1e-6)) & (P["log_dt"] <= 0.1 * (1 + 1e-6)))
    # our own specs write log(log_uniform(...)), the papers' dt range
    _, P = layer_and_params("s4d_reverse", 0)
    assert np.all((np.exp(P["log_dt"]) >= 0.01 * (1 - 1e-6)) & (np.exp(P["log_dt"]) <= 0.3 * (1 + 1e-6)))

    _, P = layer_and_params("mamba", 0)
    d = CASES["mamba"].dims[0]
    assert rel(-np.exp(P["A_log"]), np.broadcast_to(papers.s4d_real(d["N"]), (d["H"], d["N"]))) <= 1e-6
    assert np.all(P["D"] == 1.0)
    dt0 = papers.softplus(P["dt_bias"])
    assert np.all((dt0 >= 0.001 * (1 - 1e-5)) & (dt0 <= 0.1 * (1 + 1e-5)))

    _, P = layer_and_params("lru", 0)
    r = np.abs(np.exp(-np.exp(P["nu_log"]) + 1j * np.exp(P["theta_log"])))
    assert np.all((r >= 0.9 - 1e-6) & (r <= 0.999 + 1e-6)), r


def test_s5_lambda_is_normal_hippo_spectrum():
    _, P = layer_and_params("s5", 0)
    Pd = CASES["s5"].dims[0]["P"]
    lam = P["Lambda"]
    assert np.allclose(lam.real, -0.5, atol=1e-6), lam
    ev = np.linalg.eigvals(papers.hippo_legs_normal(2 * Pd))
    # every Lambda is an eigenvalue of the 2P x 2P normal HiPPO-LegS matrix with positive
    # imaginary part (the DSS / S4D-LegS half spectrum)
    assert np.all(lam.imag > 0)
    dist = np.min(np.abs(lam[:, None] - ev[None, :]), axis=1)
    assert np.all(dist <= 1e-5 * max(1.0, float(np.max(np.abs(ev))))), (lam, ev)


def test_bidirectional_rejects_initial_state_and_step():
    layer, _ = layer_and_params("mamba_bidirectional", 0)
    u = t(make_input("mamba_bidirectional", 0, 1, 3, seed=0))
    x0 = torch.zeros(1, 3, 5, dtype=torch.float64)
    with pytest.raises(Exception):
        layer(u, initial_state=x0)
    with pytest.raises(Exception):
        layer.step(u[:, 0], x0)
