"""Regressions of the Triton backend (issue 8, "Every valid spec works"), through Triton's CPU
interpreter on tiny shapes: each spec's Triton module against the NumPy reference (forward,
float64) and the torch backend (gradients, float64).

1. An output that is the bare state (`output y = x`; for a complex state also `re(x)`,
   `2 * x`) works, on the torch backend's chunk loop too (it kept the last chunk only).
2. A non-contiguous initial state (permuted, transposed, sliced) gives the right final state.
3. Powers in the kernel are numpy's: integer powers as products (defined for a negative
   base), halves by sqrt, an exponent known at run time with the sign of (-1)^e.
4. Names from the spec never collide with the kernels' own (a dim `k3`, a block `tl` or
   `triton`, values named after the kernel's variables).
5. The gradient of a static step parameter where the input term has a coefficient
   (`B * u`) is right for every rule and length (the backward kernel summed it N times),
   and on the call that tunes the block sizes (each trial launch added its gradients).
6. The LTI kernel cache sees parameters edited in place without a version bump
   (`p.data.mul_`), on the torch and Triton backends.
7. Unusual but valid specs: a constant A, readouts summing beyond the state's padding
   columns, an output whose dims are not in the state's order, complex readouts with
   im() / abs() / conj(), a scalar structure with mean(), powers of per-token values, of
   dims and of complex values; tanh, expm1 and log1p in the kernels.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import ssmc

# Triton reads TRITON_INTERPRET when it is imported: set it first (tests run on the CPU).
os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _load(text, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssmc.loads(text, backend=backend, strict=True)


def _layer(text, backend, **dims):
    mod = _load(text, backend)
    layer = getattr(mod, mod.__all__[0])(seed=1, **dims)
    return layer if backend == "numpy" else layer.double()


def _inputs(layer, length, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((batch, length) + tuple(layer.dims[d] for d in dims), dtype=torch.float64, generator=g)
            for _, dims in layer.INPUTS]


def _call(layer, ins, **kw):
    extra = {name: t for (name, _), t in zip(layer.INPUTS[1:], ins[1:])}
    with warnings.catch_warnings():
        # Padding lanes of a tile may divide by zero (x ** -1 of a masked 0): never stored.
        warnings.simplefilter("ignore", RuntimeWarning)
        return layer(ins[0], **extra, **kw)


def _close(got, want, tol=1e-9):
    got, want = torch.as_tensor(got), torch.as_tensor(np.asarray(want) if not torch.is_tensor(want) else want)
    assert got.shape == want.shape, (tuple(got.shape), tuple(want.shape))
    scale = max(float(want.abs().max()), 1e-30)
    assert float((got - want).abs().max()) <= tol * scale, float((got - want).abs().max()) / scale


def _forward_matches(text, length=5, dims=None, ins=None, tol=1e-9):
    dims = dims or {}
    ref, tri = _layer(text, "numpy", **dims), _layer(text, "triton", **dims)
    ins = ins or _inputs(ref, length)
    with torch.no_grad():
        y = _call(tri, ins)
    _close(y, _call(ref, ins), tol)
    return tri


def _grads(layer, ins, wanted):
    xs = [t.clone().requires_grad_(i in wanted) for i, t in enumerate(ins)]
    y = _call(layer, xs)
    y = torch.view_as_real(y) if y.is_complex() else y
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).square().sum().backward()
    out = {n: p.grad for n, p in layer.named_parameters()}
    out.update({f"input {i}": x.grad for i, x in enumerate(xs) if i in wanted})
    return out


def _gradients_match(text, length=5, dims=None, ins=None, wanted=(0,), tol=1e-9):
    dims = dims or {}
    tor, tri = _layer(text, "torch", **dims), _layer(text, "triton", **dims)
    assert type(tri).TRITON_BACKWARD, "the backward kernel is what this checks"
    ins = ins or _inputs(tor, length)
    want, got = _grads(tor, ins, wanted), _grads(tri, ins, wanted)
    for name, g in want.items():
        assert got[name] is not None, name
        _close(got[name], g, tol)


# --- 1. the bare state as the output ---------------------------------------------------------

def _bare(state_cplx: bool, out: str, structure: str = "diagonal") -> str:
    if structure == "dense":
        a, A = "param M[H, N, N] = normal(0, 0.3)", "M"
    elif state_cplx:
        a, A = "param a[H, N] = normal(0, 0.5)\n  param w[H, N] = normal(0, 2)", "-exp(a) + 1j * w"
    else:
        a, A = "param a[H, N] = normal(0, 0.5)", "-exp(a)"
    return f"""ssm T {{
  dims H = 2, N = 3
  input u[H]
  state x[H, N]{' complex' if state_cplx else ''}
  {a}
  A = {A} : {structure}
  dynamics x' = A x + u
  discretize zoh, step = 0.1
  scan causal
  output y = {out}
}}
"""


BARE = [(False, "x", "diagonal"), (True, "x", "diagonal"), (True, "re(x)", "diagonal"),
        (True, "2 * x", "diagonal"), (False, "x", "dense")]


@pytest.mark.parametrize("cplx,out,structure", BARE)
def test_bare_state_output(cplx, out, structure):
    text = _bare(cplx, out, structure)
    tri = _forward_matches(text)
    # The torch backend's chunk loop: every chunk's states, not the last chunk's.
    ref, tor = _layer(text, "numpy"), _layer(text, "torch")
    tor.chunk_size = 2
    ins = _inputs(ref, 5)
    with torch.no_grad():
        _close(_call(tor, ins), _call(ref, ins))
    if type(tri).TRITON_BACKWARD:
        _gradients_match(text)


# --- 2. a non-contiguous initial state -------------------------------------------------------

def _noncontiguous(kind: str, shape, cplx: bool):
    B, H, N = shape
    dtype = torch.complex128 if cplx else torch.float64
    if kind == "permuted":
        return torch.randn(H, N, B, dtype=dtype).permute(2, 0, 1)
    if kind == "transposed":
        return torch.randn(B, N, H, dtype=dtype).transpose(1, 2)
    return torch.randn(B, H, 2 * N, dtype=dtype)[..., ::2]  # sliced


@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("kind", ["permuted", "transposed", "sliced"])
def test_noncontiguous_initial_state(kind, cplx):
    text = _bare(cplx, "re(sum(x, N))" if cplx else "sum(x, N)")
    ref, tri = _layer(text, "numpy"), _layer(text, "triton")
    torch.manual_seed(0)
    x0 = _noncontiguous(kind, (2, 2, 3), cplx)
    assert not x0.is_contiguous()
    ins = _inputs(ref, 5)
    y, xf = _call(tri, ins, initial_state=x0, return_state=True)
    ry, rxf = _call(ref, ins, initial_state=x0.contiguous(), return_state=True)
    _close(y, ry)
    _close(xf, rxf)


def test_noncontiguous_initial_state_gradient():
    text = _bare(False, "sum(x, N)")
    tor, tri = _layer(text, "torch"), _layer(text, "triton")
    ins = _inputs(tor, 5)
    grads = []
    for layer in (tor, tri):
        x0 = torch.randn(2, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        x0 = x0.requires_grad_()
        y, xf = _call(layer, ins, initial_state=x0.permute(2, 0, 1), return_state=True)
        (y.square().sum() + xf.square().sum()).backward()
        grads.append(x0.grad)
    _close(grads[1], grads[0])


# --- 3. powers -------------------------------------------------------------------------------

POWERS = """ssm T {
  dims H = 2, N = 3
  input u[H], z[H, N], q[H]
  state x[H, N]
  param a[H, N] = normal(0, 0.5)
  param C[H, N] = normal(0, 1)
  A = -exp(a) : diagonal
  w = z ** 3 + z ** 2 + (1 + z * z) ** -1 + (1 + z * z) ** 0.5 + z ** 0
  dynamics x' = A x + C * w * u
  discretize zoh, step = 0.1
  scan causal
  output y = sum(C * x ** 3 + x ** 2 + (1 + x * x) ** 0.5 + (2 + x) ** -1 + x ** 0 + x ** q + x ** 11 + 2 ** x, N)
}
"""


def _power_inputs(layer):
    u, z, _ = _inputs(layer, 5)
    # Integer exponents known at run time, negative ones included: x ** q is defined for x < 0.
    q = torch.randint(-1, 4, (2, 5, 2), generator=torch.Generator().manual_seed(1)).double()
    return [u, z, q]


def test_powers_match_numpy():
    ref = _layer(POWERS, "numpy")
    _forward_matches(POWERS, ins=_power_inputs(ref))


def test_powers_gradients():
    tor = _layer(POWERS, "torch")
    # (not q's: d(x ** q)/dq = x ** q log(x) is nan for x < 0, on every backend)
    _gradients_match(POWERS, ins=_power_inputs(tor), wanted=(0, 1))


# --- 4. names from the spec in kernels -------------------------------------------------------

# Every name is one the kernels use themselves (or Triton: the block is `triton` / `tl`).
KERNEL_NAMES = """ssm triton {
  dims rows = 2, k3 = 3, BLOCK_T = 2
  input x0[rows], tp[rows]
  state xs[rows, k3]
  param A[rows, k3] = normal(0, 0.5)
  param E[rows, k3] = normal(0, 1)
  param st0[rows] = log(0.1)
  param v12[k3] = normal(0, 1)
  param carry[BLOCK_T] = normal(0, 1)
  pid = softplus(tp) * exp(st0)
  offs = E * x0
  mask = -exp(A) : diagonal
  Z = v12 * xs
  dynamics xs' = mask xs + offs
  discretize zoh, step = pid
  scan causal
  output out0 = sum(Z, k3) + sum(carry, BLOCK_T) * x0
}
"""

# A matrix structure (its kernel has a third tile axis) with a dim called k3.
KERNEL_NAMES_DENSE = """ssm tl {
  dims k3 = 3, triton = 2
  input u[k3]
  state x[k3, triton]
  param BLOCK_T[k3, triton, triton] = normal(0, 0.3)
  param pid[k3, triton] = normal(0, 1)
  param mask[k3, triton] = normal(0, 1)
  offs = pid * u
  A = BLOCK_T : dense
  dynamics x' = A x + offs
  discretize zoh, step = 0.1
  scan causal
  output y = sum(mask * x, triton)
}
"""


@pytest.mark.parametrize("block", ["triton", "tl"])
def test_kernel_names(block):
    text = KERNEL_NAMES.replace("ssm triton {", f"ssm {block} {{")
    # (the zoh series' truncation near 0, ~1e-12, is the tolerance here)
    _forward_matches(text, tol=1e-10)
    _gradients_match(text, wanted=(0, 1), tol=1e-10)


@pytest.mark.parametrize("block", ["tl", "triton"])
def test_kernel_names_dense(block):
    _forward_matches(KERNEL_NAMES_DENSE.replace("ssm tl {", f"ssm {block} {{"))


@pytest.mark.parametrize("block", ["tl", "constexpr"])
def test_kernel_names_in_a_written_file(block, tmp_path, monkeypatch):
    """`ssmc compile --backend triton -o FILE` text, imported as a file: Triton's interpreter
    recompiles kernels from their source there (annotations as strings)."""
    import importlib
    from ssmc.api import Source
    text = KERNEL_NAMES.replace("ssm triton {", f"ssm {block} {{")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = ssmc.compile_source(Source(text, "names.ssm"), backend="triton", strict=True)
    (tmp_path / f"gen_{block}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(f"gen_{block}")
    ref = _layer(text, "numpy")
    layer = getattr(mod, block)(seed=1).double()
    ins = _inputs(ref, 5)
    with torch.no_grad():
        _close(_call(layer, ins), _call(ref, ins), 1e-10)


# --- 5. the gradient of a static step ---------------------------------------------------------

STEP = """ssm T {
  dims H = 2, N = 3
  input u[H]
  state x[H, N]
  param log_dt[H] = log(uniform(0.05, 0.2))
  param a[H, N] = normal(0, 0.5)
  param B[H, N] = normal(0, 1)
  param C[H, N] = normal(0, 1)
  A = -exp(a) : diagonal
  dynamics x' = A x + B * u
  discretize RULE, step = exp(log_dt)
  scan causal
  output y = sum(C * x, N)
}
"""
RULES = ["zoh", "bilinear", "euler", "backward_euler", "zoh_euler"]


@pytest.mark.parametrize("length", [1, 5, 31, 33])
@pytest.mark.parametrize("rule", RULES)
def test_static_step_gradient(rule, length):
    _gradients_match(STEP.replace("RULE", rule), length=length, tol=1e-8)


# Complex statics without the column (D[H]) or the rows (E[N]): summed once too.
COMPLEX_STATICS = """ssm T {
  dims H = 2, N = 3
  input u[H]
  state x[H, N] complex
  param a[H, N] = normal(0, 0.5)
  param w[N] = normal(0, 1)
  param C[H, N] complex = normal(0, 1)
  param D[H] complex = normal(0, 1)
  param E[N] complex = normal(0, 1)
  param log_dt[H] = log(0.1)
  A = -exp(a) + 1j * w : diagonal
  dynamics x' = A x + E * u
  discretize zoh, step = exp(log_dt)
  scan causal
  output y = re(sum(C * x, N) * D)
}
"""


def test_complex_static_gradients():
    _gradients_match(COMPLEX_STATICS, tol=1e-8)


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_static_step_gradcheck(rule):
    layer = _layer(STEP.replace("RULE", rule), "triton")
    (u,) = _inputs(layer, 5, batch=1)
    params = {n: p.detach() for n, p in layer.named_parameters()}

    def f(log_dt):
        return torch.func.functional_call(layer, {**params, "log_dt": log_dt}, (u,)).square().sum()

    assert torch.autograd.gradcheck(f, (params["log_dt"].clone().requires_grad_(),), atol=1e-7)


def test_gradients_on_the_call_that_tunes(monkeypatch, tmp_path):
    """The first call at a shape times every block size by launching the kernel (on a GPU;
    SSMC_AUTOTUNE=1 here): the backward's atomically added gradients must not add up."""
    from ssmc.runtime import triton_autotune
    monkeypatch.setenv("SSMC_AUTOTUNE", "1")
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(triton_autotune, "_memory", {})
    _gradients_match(STEP.replace("RULE", "zoh"), length=5, tol=1e-8)


# --- 6. the LTI kernel cache and in-place edits ----------------------------------------------

LTI = """ssm T {
  dims H = 2, N = 2
  input u[H]
  state x[H, N] complex
  param log_dt[H] = log_uniform(0.01, 0.1)
  param A_imag[H, N] = pi * arange(N)
  param C[H, N] complex = normal(0, 1)
  A = -0.5 + 1j * A_imag : diagonal
  dynamics x' = A x + u
  discretize zoh, step = exp(log_dt)
  scan causal
  output y = 2 * re(sum(C * x, N))
}
"""


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_lti_kernel_cache_sees_inplace_edits(backend):
    layer = _layer(LTI, backend)
    assert type(layer).ALGORITHM == "fft_conv"
    (u,) = _inputs(layer, 40, batch=1)  # long enough for the convolution form

    def fresh():
        other = _layer(LTI, backend)
        other.load_state_dict(layer.state_dict())
        return other(u)

    with torch.no_grad():
        y0 = layer(u)
        layer.C.data.mul_(2)  # no version bump
        _close(layer(u), 2 * y0)
        layer.log_dt.mul_(1.5)  # a version bump
        _close(layer(u), fresh())
        layer.A_imag.data.copy_(layer.A_imag.data.flip(-1))
        _close(layer(u), fresh())


# --- 7. unusual but valid specs --------------------------------------------------------------

UNUSUAL = {
    # A constant A and a readout whose padding columns are not 0 (exp(0) = 1, N = 3 < BLOCK_N).
    "constant_A": """ssm T {
  dims H = 2, N = 3
  input u[H]
  state x[H, N]
  A = -0.5 : diagonal
  dynamics x' = A x + u
  discretize zoh, step = 0.1
  scan causal
  output y = sum(exp(x), N) + mean(x + 1, N)
}
""",
    # Three state dims; the output's dims [M, H] are not in the state's order.
    "output_dims_order": """ssm T {
  dims H = 2, M = 3, N = 4
  input u[H]
  state x[H, M, N]
  param a[H, M, N] = normal(0, 0.5)
  param C[M, N] = normal(0, 1)
  A = -exp(a) : diagonal
  dynamics x' = A x + u
  discretize bilinear, step = 0.1
  scan causal
  output y = sum(C * x, N)
}
""",
    "complex_readouts": """ssm T {
  dims H = 2, N = 3
  input u[H]
  state x[H, N] complex
  param a[H, N] = normal(0, 0.5)
  param w[H, N] = normal(0, 1)
  param C[H, N] complex = normal(0, 1)
  A = -exp(a) + 1j * w : diagonal
  dynamics x' = A x + u
  discretize zoh, step = 0.1
  scan causal
  output y = abs(sum(C * x, N)) + im(sum(conj(C) * x / (1 + 2j), N)) + re(sum(exp(x) * x, N))
}
""",
    "scalar_mean": """ssm T {
  dims H = 2, N = 3
  input u[H], z[H]
  state x[H, N]
  param a[H] = normal(0, 0.5)
  A = -exp(a) : scalar
  dynamics x' = A x + u
  discretize zoh, step = softplus(z)
  scan causal
  output y = mean(x ** 2 * sigmoid(x) + relu(x) - abs(x), N) + sqrt(1 + sum(x * x, N))
}
""",
    # Powers of a per-token step, in the input term and the readout (the torch backend's
    # contraction of a folded product read an operand it never computed).
    "token_step_powers": """ssm T {
  dims H = 2, N = 3
  input u[H], dt[H]
  state x[H, N]
  param a[H, N] = normal(0, 0.5)
  param C[H, N] = normal(0, 1)
  A = -exp(a) : diagonal
  step_ = softplus(dt)
  dynamics x' = A x + C * step_ ** 2 * u
  discretize zoh, step = step_
  scan causal
  output y = sum(C * x * step_ ** -1, N) + step_ ** 0.5 * u
}
""",
    # Dims as exponents and as a base (integer kernel arguments).
    "dim_powers": """ssm T {
  dims H = 2, N = 3
  input u[H]
  state x[H, N]
  param a[H, N] = normal(0, 0.5)
  A = -exp(a) : diagonal
  dynamics x' = A x + u
  discretize zoh, step = 0.1
  scan causal
  output y = sum(x ** N + x ** (N - 1) + N ** x, N)
}
""",
    # Integer powers of complex values, in the readout and in the input term's coefficient.
    "complex_powers": """ssm T {
  dims H = 2, N = 3
  input u[H], z[H, N]
  state x[H, N] complex
  param a[H, N] = normal(0, 0.5)
  param w[H, N] = normal(0, 1)
  param C[H, N] complex = normal(0, 1)
  A = -exp(a) + 1j * w : diagonal
  dynamics x' = A x + (w + 1j * z) ** 2 * u
  discretize zoh, step = 0.1
  scan causal
  output y = re(sum(C * x ** 2 + x ** 3 + (1 + x) ** -2 + x ** 0 + x ** 1, N))
}
""",
    # tanh, expm1, log1p in the input term's coefficient and of the state.
    "functions": """ssm T {
  dims H = 2, N = 3
  input u[H], z[H, N]
  state x[H, N]
  param a[H, N] = normal(0, 0.5)
  param C[H, N] = normal(0, 1)
  A = -exp(a) : diagonal
  dynamics x' = A x + tanh(z) * expm1(0.05 * z) * u
  discretize zoh, step = 0.1
  scan causal
  output y = sum(C * tanh(x) + expm1(x) + log1p(x * x) + tanh(30 * x) + expm1(0.01 * x), N)
}
""",
    "complex_constant_A": """ssm T {
  dims H = 2, N = 3
  input u[H]
  state x[H, N] complex
  A = -0.5 + 2j : diagonal
  dynamics x' = A x + u
  discretize zoh, step = 0.1
  scan causal
  output y = 3 * x
}
""",
}


# tanh, expm1 and log1p in the kernels (they fell back to torch): the printed formulas
# (numpy standing in for `tl`) against numpy's own functions, float64 and float32.
_FUNCTIONS = {"tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
              "expm1": (np.expm1, np.exp),
              "log1p": (np.log1p, lambda x: 1.0 / (1.0 + x))}
_POINTS = [s * v for s in (1, -1) for v in (1e-7, 1e-4, 0.03, 0.0999, 0.1001, 0.5, 3.0, 30.0, 300.0)]


def _printed(fmt: str, **values):
    from types import SimpleNamespace
    tl = SimpleNamespace(exp=np.exp, log=np.log, abs=np.abs, where=np.where)
    text = fmt.format("a", G="G", a="a", r="r")
    with np.errstate(all="ignore"):
        return eval(text, {"__builtins__": {}, "tl": tl}, values)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("op", sorted(_FUNCTIONS))
def test_kernel_functions(op, dtype, tol):
    from ssmc.backends.triton_backend import derivatives as D
    f, df = _FUNCTIONS[op]
    for x in _POINTS:
        if op == "log1p" and x <= -1:
            continue
        a = dtype(x)
        got = _printed(D.UNARY[op], a=a)
        (dfmt,) = D.VJP[op]
        grad = _printed(dfmt, a=a, r=got, G=dtype(1.0))
        assert np.asarray(got).dtype == dtype and np.asarray(grad).dtype == dtype, (op, x)
        with np.errstate(over="ignore"):
            # (what the dtype holds: expm1(300) overflows float32 to inf)
            want, dwant = float(dtype(f(np.float64(a)))), float(dtype(df(np.float64(a))))
        if not np.isfinite(want):
            assert float(got) == want and float(grad) == dwant, (op, x)
            continue
        assert abs(float(got) - want) <= tol * abs(want), (op, x, float(got), want)
        # (relative to at least 0.01: like torch's, the derivatives go through the result,
        # expm1's as r + 1 and tanh's as 1 - r^2, exact only to ~eps where they are tiny)
        assert abs(float(grad) - dwant) <= 10 * tol * max(abs(dwant), 1e-2), (op, x, float(grad), dwant)


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_specs(name):
    text = UNUSUAL[name]
    tri = _forward_matches(text)
    if type(tri).ALGORITHM == "fft_conv":
        _forward_matches(text, length=40)  # the convolution form
    _gradients_match(text, wanted=tuple(range(len(tri.INPUTS))))
