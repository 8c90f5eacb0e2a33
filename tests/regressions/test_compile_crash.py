"""Specs that compiled and then crashed (issue 8, "Every valid spec works").

1. A function of a number or a dim in a run-time expression (`linear(u, N) / sqrt(N)`,
   `softplus(...) * sqrt(H)`): torch's functions take tensors, not Python numbers.
2. A computation an initializer and the forward share (`param W[H] = -0.5 * ones` and
   `N ** -0.5`; a named value `c = 0.5 * N` and `param P[H] = 0.5 * N`): it was
   computed only in the initializer and the forward read an undefined name.
3. A constant state matrix (`A = -1 : diagonal`, `A = 0.5 : scalar`,
   `A = -0.5 + 1j : diagonal`), with every discretization rule and with `recurrence`;
   in the convolution form, also a static one over fewer dims than the state (`a[N]`).
4. A named value that is a dim (`h = N` as the step): the verifier found a node with
   no op.
5. Initializer arguments that cannot be drawn from (`uniform(1, 1)`, `normal(0, -1)`,
   `lru_ring(0.9, 0.5)`, ...): a located SpecError at compile time, not a ValueError
   at construction.

Every run compares the NumPy reference with the torch backend in float64 (1e-10) and,
where the system is small enough to write down, with a computation done here by hand.
"""
from __future__ import annotations

import cmath
import math
import os
import warnings

# Triton reads TRITON_INTERPRET when it is imported: its kernels run on the CPU interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

import ssmc

TOL = 1e-10
B_, L = 2, 5


def spec(body: str, dims: str = "H = 3, N = 4") -> str:
    lines = "\n".join("  " + line.strip() for line in body.strip().splitlines())
    return f"ssm T {{\n  dims {dims}\n{lines}\n}}\n"


def build(text: str, backend: str, **dims):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.loads(text, backend=backend, strict=True)
    return mod.T(seed=0, dtype=torch.float64, **dims)


def inputs(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    sizes = m.dims
    (first, fdims), *rest = m.INPUTS
    u = torch.randn((B_, L) + tuple(sizes[d] for d in fdims), generator=g, dtype=torch.float64)
    kw = {name: torch.rand((B_, L) + tuple(sizes[d] for d in dd), generator=g, dtype=torch.float64)
          for name, dd in rest}
    return u, kw


def both(text: str, **dims):
    """(numpy module, its output, the input): the torch backend's output checked equal."""
    mn, mt = build(text, "numpy", **dims), build(text, "torch", **dims)
    u, kw = inputs(mn)
    with torch.no_grad():
        yn, yt = mn(u, **kw), mt(u, **kw)
    assert yn.shape == yt.shape
    torch.testing.assert_close(yt, yn, rtol=TOL, atol=TOL)
    if mt.ALGORITHM == "fft_conv":
        # An LTI system: also its convolution form, which short sequences do not take.
        mt.fft_min_length = 1
        with torch.no_grad():
            torch.testing.assert_close(mt(u, **kw), yn, rtol=TOL, atol=TOL)
    return mn, yn, u


def weights(m) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in m.state_dict().items()}


def scan(abar, ebar):
    """x_t = abar_t * x_{t-1} + ebar_t from x = 0, elementwise, over axis 1: all x_t."""
    x = np.zeros(ebar.shape[:1] + ebar.shape[2:], dtype=np.result_type(abar, ebar))
    xs = []
    abar = np.broadcast_to(abar, ebar.shape)
    for t in range(ebar.shape[1]):
        x = abar[:, t] * x + ebar[:, t]
        xs.append(x)
    return np.stack(xs, axis=1)


def softplus(x):
    return np.logaddexp(0.0, x)


# --- 1. functions of numbers and dims at run time ---------------------------------------

def test_sqrt_of_dims_in_the_step_and_the_readout():
    # Mamba with the readout scaled by 1/sqrt(N) and the step by sqrt(H).
    text = spec("""
        input u[H]
        state x[H, N]
        param A_log[H, N] = log(0.5 * ones)
        A = -exp(A_log) : diagonal
        B = linear(u, N)
        C = linear(u, N) / sqrt(N)
        dt = softplus(linear(u, H)) * sqrt(H)
        dynamics x' = A x + B * u
        discretize zoh, step = dt
        scan causal
        output y = sum(C * x, N)
    """)
    m, y, u = both(text)
    w, u = weights(m), u.numpy()
    H, N = 3, 4
    Bt = u @ w["B_proj"].T                                    # [B, L, N]
    Ct = u @ w["C_proj"].T / math.sqrt(N)
    dt = softplus(u @ w["dt_proj"].T) * math.sqrt(H)          # [B, L, H]
    z = dt[..., None] * -np.exp(w["A_log"])                   # [B, L, H, N]
    xs = scan(np.exp(z), np.expm1(z) / z * dt[..., None] * Bt[:, :, None, :] * u[..., None])
    np.testing.assert_allclose(y.numpy(), np.sum(Ct[:, :, None, :] * xs, axis=-1), rtol=TOL, atol=TOL)


# (expression, its value for H = 3, N = 4): functions of numbers and dims.
NUMBERS = [
    ("sqrt(N)", 2.0), ("exp(-1)", math.exp(-1)), ("log(H)", math.log(3)), ("expm1(0.5)", math.expm1(0.5)),
    ("log1p(N)", math.log(5)), ("abs(-N)", 4.0), ("tanh(0.5)", math.tanh(0.5)),
    ("sigmoid(N)", 1 / (1 + math.exp(-4))), ("relu(-1)", 0.0), ("relu(H)", 3.0),
    ("softplus(1)", math.log1p(math.e)), ("inv_softplus(0.01)", math.log(math.expm1(0.01))),
    ("silu(N)", 4 / (1 + math.exp(-4))), ("re(1j * N)", 0.0), ("im(1j * N)", 4.0), ("abs(1j)", 1.0),
    ("re(conj(2 + 1j))", 2.0), ("sqrt(N) ** 2", 4.0), ("exp(log(N))", 4.0), ("sqrt(sqrt(H))", 3 ** 0.25),
    ("re(exp(1j * pi))", -1.0), ("1 / sqrt(N * H)", 1 / math.sqrt(12)), ("sqrt(2 * N + 1)", 3.0),
    ("abs(-0.5 + 1j)", abs(-0.5 + 1j)), ("-sqrt(N)", -2.0), ("log(2) * N", 4 * math.log(2)),
    ("N ** -0.5", 0.5), ("pi / N", math.pi / 4),
]


@pytest.mark.parametrize("expr, value", NUMBERS, ids=[e for e, _ in NUMBERS])
def test_a_function_of_numbers_as_a_static_coefficient(expr, value):
    # x_t = 0.5 x_{t-1} + k u_t in every mode, y = sum over the N modes: N times one mode.
    text = spec(f"""
        input u[H]
        state x[H, N]
        A = 0.5 : scalar
        k = {expr}
        recurrence x = A x + k * u
        scan causal
        output y = sum(x, N) + abs({expr}) * u
    """)
    _, y, u = both(text)
    u = u.numpy()
    xs = scan(0.5, value * u)
    np.testing.assert_allclose(y.numpy(), 4 * xs + abs(value) * u, rtol=TOL, atol=TOL)


WHERE = {
    "readout": ("C = linear(u, N) * {f}", "dt = softplus(linear(u, H))", "B = linear(u, N)"),
    "step": ("C = linear(u, N)", "dt = softplus(linear(u, H)) * abs({f})", "B = linear(u, N)"),
    "input": ("C = linear(u, N)", "dt = softplus(linear(u, H))", "B = linear(u, N) * {f}"),
    "static step": ("C = linear(u, N)", "dt = 0.01 * abs({f}) + 0.001", "B = linear(u, N)"),
    "lti": ("C = C0 * {f}", "dt = 0.01 * abs({f}) + 0.001", "B = B0 / (1 + abs({f}))"),
}


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("expr", ["sqrt(N)", "exp(-H)", "sigmoid(N)", "re(exp(1j * pi / N))", "log(2) * N"])
def test_a_function_of_numbers_anywhere(where, expr):
    lines = "\n".join(line.replace("{f}", expr) for line in WHERE[where])
    both(spec(f"""
        input u[H]
        state x[H, N]
        param A_log[H, N] = log(0.5 * ones)
        param C0[H, N] = normal(0, 1)
        param B0[N] = normal(0, 1)
        A = -exp(A_log) : diagonal
        {lines}
        dynamics x' = A x + B * u
        discretize zoh, step = dt
        scan causal
        output y = sum(C * x, N) + abs({expr}) * u
    """))


@pytest.mark.parametrize("B, C", [("linear(u, N)", "(H * N) ** 0.25"), ("2", "N ** 0.5"), ("sqrt(N)", "exp(-1)")])
def test_a_number_as_the_input_or_readout_coefficient(B, C):
    # sum(C * x, N) with a number C was one contraction (einsum) of a number; with a scalar
    # A and a per-token step it is the SSD form, which read C and B's factors as tensors.
    text = spec(f"""
        input u[H]
        state x[H, N]
        A = -1 : scalar
        B = {B}
        C = {C}
        dt = softplus(linear(u, H)) * 0.1
        dynamics x' = A x + B * u
        discretize zoh_euler, step = dt
        scan causal
        output y = sum(C * x, N)
    """)
    m, y, u = both(text)
    w, u = weights(m), u.numpy()
    H, N = 3, 4
    b = u @ w["B_proj"].T if "linear" in B else np.full((B_, L, N), eval(B, {"sqrt": math.sqrt, "N": N}))
    c = eval(C, {"exp": math.exp, "H": H, "N": N})
    dt = (softplus(u @ w["dt_proj"].T) * 0.1)[..., None]
    xs = scan(np.exp(-dt), dt * b[:, :, None, :] * u[..., None])
    np.testing.assert_allclose(y.numpy(), c * xs.sum(-1), rtol=TOL, atol=TOL)


# --- 2. computations an initializer and the forward share ----------------------------------

def test_a_literal_shared_by_an_initializer_and_the_forward():
    text = spec("""
        input u[H]
        state x[H, N]
        param A_log[H, N] = log(0.5 * ones)
        param W[H] = -0.5 * ones
        A = -exp(A_log) : diagonal
        B = linear(u, N) * N ** -0.5
        dynamics x' = A x + B * u
        discretize zoh, step = 0.1
        scan causal
        output y = sum(x, N) + W * u
    """)
    m, y, u = both(text)
    w, u = weights(m), u.numpy()
    np.testing.assert_array_equal(w["W"], -0.5)
    np.testing.assert_allclose(w["A_log"], math.log(0.5))
    z = 0.1 * -0.5
    Bt = u @ w["B_proj"].T * 4 ** -0.5
    xs = scan(math.exp(z), math.expm1(z) / z * 0.1 * Bt[:, :, None, :] * u[..., None])
    np.testing.assert_allclose(y.numpy(), xs.sum(-1) - 0.5 * u, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("value, init", [
    ("c = 0.5 * N", "0.5 * N"),
    ("c = log(0.5)", "log(0.5)"),
    ("c = -0.5", "-0.5 * ones"),
    ("c = N ** -0.5", "N ** -0.5 + 0 * ones"),
    ("c = exp(-0.5 * log(0.5))", "exp(-0.5 * log(0.5)) * ones"),
])
def test_a_named_value_equal_to_an_initializer(value, init):
    text = spec(f"""
        input u[H]
        state x[H, N]
        param P[H] = {init}
        {value}
        A = -1 : diagonal
        dynamics x' = A x + c * u
        discretize euler, step = 0.1
        scan causal
        output y = sum(x, N) * c + P * u
    """)
    m, y, u = both(text)
    N = 4
    c = eval(value.split("=", 1)[1], {"N": N, "log": math.log, "exp": math.exp})
    p = weights(m)["P"]
    np.testing.assert_allclose(p, c, rtol=TOL)
    u = u.numpy()
    xs = scan(1 - 0.1, 0.1 * c * u)
    np.testing.assert_allclose(y.numpy(), N * xs * c + p * u, rtol=TOL, atol=TOL)


def test_the_state_matrix_shares_a_computation_with_an_initializer():
    # -exp(log(c)): `log(c)` is also a param's initializer.
    both(spec("""
        input u[H]
        state x[H, N]
        param A_log[H, N] = log(0.5)
        c = 0.5
        A = -exp(log(c) + 0 * A_log) : diagonal
        dynamics x' = A x + u
        discretize zoh, step = 0.1
        scan causal
        output y = sum(x, N)
    """))


# --- 3. constant state matrices ---------------------------------------------------------

RULES = {
    # Abar(z), G(z) of docs/language.md, section 10; Ebar = s G(z) E.
    "zoh": (cmath.exp, lambda z: (cmath.exp(z) - 1) / z if z != 0 else 1),
    "bilinear": (lambda z: (2 + z) / (2 - z), lambda z: 2 / (2 - z)),
    "euler": (lambda z: 1 + z, lambda z: 1),
    "backward_euler": (lambda z: 1 / (1 - z), lambda z: 1 / (1 - z)),
    "zoh_euler": (cmath.exp, lambda z: 1),
}
# (written, its value for H = 3, N = 4, structure)
CONSTANT_A = [
    ("-1", -1.0, "diagonal"), ("0.5", 0.5, "scalar"), ("-0.5 + 1j", -0.5 + 1j, "diagonal"),
    ("-1 / N", -0.25, "scalar"), ("-sqrt(N)", -2.0, "diagonal"), ("-exp(-1)", -math.exp(-1), "scalar"),
    ("0", 0.0, "diagonal"), ("-H", -3.0, "diagonal"), ("-0.5 + 1j * pi", -0.5 + 1j * math.pi, "scalar"),
    ("-N ** -0.5", -0.5, "diagonal"),
]


def _constant_system(a_text, structure, complex_, transition):
    return spec(f"""
        input u[H]
        state x[H, N]{" complex" if complex_ else ""}
        A = {a_text} : {structure}
        {transition}
        scan causal
        output y = {"re(sum(x, N))" if complex_ else "sum(x, N)"}
    """)


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("a_text, a, structure", CONSTANT_A, ids=[t for t, _, _ in CONSTANT_A])
def test_a_constant_state_matrix(rule, a_text, a, structure):
    complex_ = isinstance(a, complex)
    # The step is a number too: 1 / N = 0.25.
    text = _constant_system(a_text, structure, complex_, f"dynamics x' = A x + u\ndiscretize {rule}, step = 1 / N")
    _, y, u = both(text)
    s = 0.25
    abar_f, g_f = RULES[rule]
    abar, gz = complex(abar_f(s * a)), complex(g_f(s * a))
    if not complex_:
        abar, gz = abar.real, gz.real
    xs = scan(abar, s * gz * u.numpy())
    expect = 4 * (xs.real if complex_ else xs)
    np.testing.assert_allclose(y.numpy(), expect, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("a_text, a, structure", CONSTANT_A, ids=[t for t, _, _ in CONSTANT_A])
def test_a_constant_recurrence(a_text, a, structure):
    complex_ = isinstance(a, complex)
    _, y, u = both(_constant_system(a_text, structure, complex_, "recurrence x = A x + u"))
    xs = scan(a, u.numpy().astype(complex if complex_ else float))
    np.testing.assert_allclose(y.numpy(), 4 * xs.real, rtol=TOL, atol=TOL)


def test_a_constant_state_matrix_with_a_selective_step():
    # A per-token step with a constant A: Mamba-2's scalar form.
    text = spec("""
        input u[H]
        state x[H, N]
        A = -1 : scalar
        B = linear(u, N)
        C = linear(u, N)
        dt = softplus(linear(u, H))
        dynamics x' = A x + B * u
        discretize zoh_euler, step = dt
        scan causal
        output y = sum(C * x, N)
    """)
    m, y, u = both(text)
    w, u = weights(m), u.numpy()
    dt = softplus(u @ w["dt_proj"].T)[..., None]
    xs = scan(np.exp(-dt), dt * (u @ w["B_proj"].T)[:, :, None, :] * u[..., None])
    np.testing.assert_allclose(y.numpy(), np.sum((u @ w["C_proj"].T)[:, :, None, :] * xs, -1), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("decl, structure", [
    ("param a[N] = log(0.5 + arange(N))", "diagonal"),
    ("param a[] = log(0.5)", "diagonal"),
    ("param a[] = log(0.5)", "scalar"),
])
def test_a_state_matrix_over_fewer_dims_than_the_state_in_convolution_form(decl, structure):
    # The LTI kernel reads Abar over all the state's dims: [N] or [] had to be broadcast.
    text = spec(f"""
        input u[H]
        state x[H, N]
        {decl}
        A = -exp(a) : {structure}
        dynamics x' = A x + u
        discretize zoh, step = 0.1
        scan causal
        output y = sum(x, N)
    """)
    m, y, u = both(text)
    assert m.ALGORITHM == "fft_conv"
    a = np.broadcast_to(-np.exp(weights(m)["a"]), (3, 4))
    z = 0.1 * a
    xs = scan(np.exp(z), (np.expm1(z) / a) * u.numpy()[..., None])
    np.testing.assert_allclose(y.numpy(), xs.sum(-1), rtol=TOL, atol=TOL)


# --- 4. named values that are dims ------------------------------------------------------

@pytest.mark.parametrize("values, step, out, scale", [
    ("h = N", "h / 100", "sum(x, N)", 1.0),
    ("h = k; k = N", "h / 100", "sum(x, N)", 1.0),
    ("k = N; h = k", "k / 100", "sum(x, N) * h / N", 1.0),
    ("h = H", "h * 4 / 300", "sum(x, N) * h", 3.0),
    ("s = sqrt(N)", "0.04", "sum(x, N) / s", 0.5),
])
def test_a_named_value_that_is_a_dim(values, step, out, scale):
    text = spec(f"""
        input u[H]
        state x[H, N]
        {values}
        A = -2 : diagonal
        dynamics x' = A x + u
        discretize zoh, step = {step}
        scan causal
        output y = {out}
    """)
    _, y, u = both(text)
    s = 0.04  # every step above is 4 / 100
    xs = scan(math.exp(-2 * s), math.expm1(-2 * s) / -2 * u.numpy())
    np.testing.assert_allclose(y.numpy(), 4 * xs * scale, rtol=TOL, atol=TOL)


def test_a_state_matrix_that_is_a_dim():
    text = spec("""
        input u[H]
        state x[H, N]
        nA = N
        A = nA : scalar
        dynamics x' = A x - u
        discretize backward_euler, step = 1 / H
        scan causal
        output y = sum(x, N)
    """)
    _, y, u = both(text)
    z = 4 / 3
    xs = scan(1 / (1 - z), -(1 / 3) / (1 - z) * u.numpy())
    np.testing.assert_allclose(y.numpy(), 4 * xs, rtol=TOL, atol=TOL)


# --- 5. initializer arguments that cannot work ---------------------------------------------

BAD_INITS = [
    # (initializer, the argument the caret is under, words of the message)
    ("uniform(1, 1)", "1)", "must be above lo"),
    ("uniform(2, 1)", "1)", "must be above lo"),
    ("log_uniform(0.1, 0.001)", "0.001", "must be above lo"),
    ("log_uniform(-1, 1)", "-1", "must be > 0"),
    ("log_uniform(0, 1)", "0,", "must be > 0"),
    ("normal(0, 1j)", "1j", "must be a real number"),
    ("normal(0, -1)", "-1", "must be >= 0"),
    ("normal(0, -1 / sqrt(N))", "-1 / sqrt(N)", "(at the default N = 4)"),
    ("normal(0, sqrt(-1))", "sqrt(-1)", "not a finite number"),
    ("normal(0, arange(N))", "arange(N)", "a single number"),
    ("uniform(0, log(0))", "log(0)", "not a finite number"),
    ("uniform(1j, 2)", "1j", "must be a real number"),
    ("uniform(N, 2)", "2)", "(at the default N = 4)"),
    ("uniform(-1e308, 1e308)", "1e308)", "overflows"),
    ("lru_ring(0.9, 0.5)", "0.5", "below r_min"),
    ("lru_ring(-1, 1)", "-1", "must be > 0"),
    ("lru_ring(0.5, 2)", "2)", "must be <= 1"),
]


def _spec_with_init(init: str, complex_: bool) -> str:
    return spec(f"""
        input u[H]
        state x[H, N]
        param W[N]{" complex" if complex_ else ""} = {init}
        A = -1 : diagonal
        dynamics x' = A x + u
        discretize zoh, step = 0.1
        scan causal
        output y = re(sum(W * x, N))
    """)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("init, at, words", BAD_INITS, ids=[b[0] for b in BAD_INITS])
def test_an_initializer_argument_that_cannot_work(init, at, words, complex_):
    if init.startswith("lru_ring") and not complex_:
        pytest.skip("lru_ring draws complex values: a real param is another error")
    text = _spec_with_init(init, complex_)
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.loads(text, backend="numpy")
    err = info.value
    line = text.splitlines()[err.line - 1]
    assert err.line == 5 and "param W" in line
    call = line.index(init)
    assert err.column - 1 == line.index(at, call + len(init.split("(")[0])), str(err)
    assert words in err.message, str(err)
    assert err.hint and init.split("(")[0] + "(" in err.hint   # what is allowed


def test_a_complex_mean_on_a_real_param():
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.loads(_spec_with_init("normal(1j, 1)", False), backend="numpy")
    assert "real param" in info.value.message and info.value.hint.startswith("declare it complex")


def test_hippo_fout_needs_an_even_default():
    text = spec("""
        input u[H]
        state x[H, N]
        param A[N, N] = hippo_fout(N)
        Am = A : dense
        dynamics x' = Am x + u
        discretize bilinear, step = 0.1
        scan causal
        output y = sum(x, N)
    """, dims="H = 2, N = 5")
    with pytest.raises(ssmc.SpecError, match="even"):
        ssmc.loads(text, backend="numpy")


@pytest.mark.parametrize("init, complex_", [
    ("normal(1j, 1)", True), ("normal(0, 0)", False), ("normal(0, 1 / sqrt(N))", False),
    ("uniform(-N, N)", False), ("log_uniform(0.001, 0.1)", False), ("lru_ring(1, 1)", True),
    ("lru_ring(0.9, 0.999)", True), ("normal(-1, abs(-0.5 + 1j))", False), ("log(uniform(0.81, 0.998))", False),
    ("uniform(sum(arange(N), N), N * N)", False), ("normal(0, relu(-1) + 1) * 2 + uniform(0, 2 * pi)", False),
])
def test_initializer_arguments_that_work(init, complex_):
    # The checks reject only what cannot be drawn from.
    both(_spec_with_init(init, complex_))


def test_arguments_are_checked_again_with_the_sizes_passed():
    text = _spec_with_init("uniform(N, 8)", False)
    build(text, "numpy")                       # N = 4 at the default
    with pytest.raises(ValueError, match="lo < hi"):
        build(text, "numpy", N=8)


# --- the Triton backend shares the torch backend's host code ---------------------------------

@pytest.mark.parametrize("text", [
    spec("""
        input u[H]
        state x[H, N]
        param A_log[H, N] = log(0.5 * ones)
        param W[H] = -0.5 * ones
        A = -exp(A_log) : diagonal
        B = linear(u, N) * N ** -0.5
        C = linear(u, N) / sqrt(N)
        dt = softplus(linear(u, H)) * sqrt(H)
        dynamics x' = A x + B * u
        discretize zoh, step = dt
        scan causal
        output y = sum(C * x, N) + W * u
    """),
    spec("""
        input u[H]
        state x[H, N] complex
        h = N
        A = -0.5 + 1j : diagonal
        dynamics x' = A x + u
        discretize bilinear, step = 1 / h
        scan causal
        output y = re(sum(x, N))
    """),
], ids=["selective", "constant"])
def test_triton(text):
    pytest.importorskip("triton")
    mn = build(text, "numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.loads(text, backend="triton", strict=True)
    mt = mod.T(seed=0, dtype=torch.float64)
    u, _ = inputs(mn)
    with torch.no_grad():
        expect = mn(u)
        torch.testing.assert_close(mt(u), expect, rtol=TOL, atol=TOL)
        mt.fft_min_length = 1
        torch.testing.assert_close(mt(u), expect, rtol=TOL, atol=TOL)
