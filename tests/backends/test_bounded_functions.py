"""gelu, gelu_tanh, erf, min, max and clamp (docs/language.md, section 7).

The NumPy reference against a recurrence written here from the equations (Mamba-2's
clamped step, a GELU-gated input, the functions in the readout) at 1e-10 in float64;
every backend against the reference through the differential harness (forward, an
initial state, step(), chaining, cu_seqlens packing, float32, gradcheck in float64);
torch's gradient rules at ties; and the errors.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch

import ssmc
from ssmc.testing.harness import check_spec

SPEC = """\
ssm G {
  dims H = 3, N = 4
  input u[H], z[H]
  state x[H, N]
  param A_log[H, N] = log(1 + arange(N))
  param B[H, N] = normal(0, 1)
  param C[H, N] = clamp(normal(0, 1), -1, max = 1)
  param D[H] = normal(0, 1)
  param dt_bias[H] = inv_softplus(0.05)
  param lo[H] = uniform(0.01, 0.03)
  A = -exp(A_log) : diagonal
  dt = clamp(softplus(z + dt_bias), lo, 0.1)
  dynamics x' = A x + B * gelu(z) * u
  discretize zoh, step = dt
  scan causal
  output y = gelu_tanh(sum(C * x, N)) + min(D * u, erf(z)) + max(u, -0.2)
           + clamp(u, max = 0.5) + clamp(z, min = -0.3)
}
"""

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _oracle(p, u, z):
    """x_t = exp(dt A) x + (exp(dt A) - 1) / A * B * gelu(z) * u (ZOH, diagonal A), with
    dt = min(max(softplus(z + dt_bias), lo), 0.1)."""
    A = -np.exp(p["A_log"])
    Bsz, L, H = u.shape
    x = np.zeros((Bsz, H, A.shape[1]))
    ys = []
    for t in range(L):
        ut, zt = u[:, t], z[:, t]
        dt = np.minimum(np.maximum(np.log1p(np.exp(zt + p["dt_bias"])), p["lo"]), 0.1)[..., None]
        gelu = zt * 0.5 * (1 + _erf(zt / math.sqrt(2)))
        x = np.exp(dt * A) * x + (np.exp(dt * A) - 1) / A * p["B"] * (gelu * ut)[..., None]
        s = (p["C"] * x).sum(-1)
        gt = 0.5 * s * (1 + np.tanh(math.sqrt(2 / math.pi) * (s + 0.044715 * s ** 3)))
        ys.append(gt + np.minimum(p["D"] * ut, _erf(zt)) + np.maximum(ut, -0.2) + np.minimum(ut, 0.5)
                  + np.maximum(zt, -0.3))
    return np.stack(ys, 1)


def test_reference_against_the_equations():
    mod = ssmc.loads(SPEC, backend="numpy")
    layer = mod.G(seed=3, dtype=torch.float64)
    p = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    assert np.abs(p["C"]).max() <= 1.0 and p["lo"].min() >= 0.01  # the initializer's clamp
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 11, 3, generator=g, dtype=torch.float64)
    z = 2 * torch.randn(2, 11, 3, generator=g, dtype=torch.float64)
    y = layer(u, z=z).numpy()
    want = _oracle(p, u.numpy(), z.numpy())
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
    # both bounds of the step's clamp are active somewhere in this draw
    dt = np.log1p(np.exp(z.numpy() + p["dt_bias"]))
    assert (dt > 0.1).any() and (dt < p["lo"]).any()


# Specs where the functions sit in the state-sized part too (the Triton kernel's tile).
IN_LOOP = """\
ssm K {
  dims H = 2, N = 3
  input u[H]
  state x[H, N]
  param A_log[H, N] = log(1 + arange(N))
  param B[H, N] = normal(0, 1)
  param C[H, N] = normal(0, 1)
  param cap[N] = uniform(0.2, 0.4)
  A = -exp(A_log) : diagonal
  dynamics x' = A x + B * u
  discretize zoh, step = clamp(0.2 + 0.1 * tanh(u), min = 0.05)
  scan causal
  output y = sum(C * gelu(x) + max(x, 0.3 * C) + min(erf(x), 0.1 + C) + clamp(x, -0.2, cap)
                 + gelu_tanh(x) + clamp(x, max = cap) + clamp(x, min = -cap), N)
}
"""


@pytest.mark.parametrize("text", [SPEC, IN_LOOP], ids=["readout", "in-loop"])
def test_numpy_and_torch_through_the_harness(text):
    rep = check_spec(text, {}, 7, backends=("numpy", "torch"), seed=2)
    assert not rep.findings, "\n".join(map(str, rep.findings))
    assert rep.checks_run >= 10


def test_triton_through_the_harness():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    rep = check_spec(IN_LOOP, {}, 5, backends=("numpy", "torch", "triton"), seed=1)
    assert not rep.findings, "\n".join(map(str, rep.findings))
    assert not rep.unsupported, rep.unsupported


def test_generated_triton_kernel_holds_the_functions():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    src = ssmc.compile_source(ssmc.errors.Source(IN_LOOP, "k.ssm"), "triton", strict=True)
    kernel = src.split("def _direction")[0]
    assert "tl.erf(" in kernel and "tl.where(" in kernel


def test_torch_gradients_at_ties_are_torchs():
    from ssmc.runtime import torch_ops as ops
    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    ops.minimum(a, b).sum().backward()
    assert a.grad.tolist() == [0.5, 1.0] and b.grad.tolist() == [0.5, 0.0]
    x = torch.tensor([[-1.0, 0.0, 0.5, 2.0]], dtype=torch.float64, requires_grad=True)
    hi = torch.tensor([[0.5], [3.0]], dtype=torch.float64, requires_grad=True)
    y = ops.clamp(x, lo=0.0, hi=hi)            # bounds broadcast with x
    assert y.shape == (2, 4)
    y.sum().backward()
    assert x.grad.tolist() == [[0.0, 2.0, 2.0, 1.0]]   # ends included: lo <= x <= hi
    assert hi.grad.tolist() == [[1.0], [0.0]]


@pytest.mark.parametrize("expr, fragment, col", [
    ("clamp(u)", "clamp() needs a bound", 28),
    ("clamp(u, 1)", "one bound written without its name", 37),
    ("clamp(u, 0, 1, 2)", "clamp() takes 3 arguments", 28),
    ("clamp(u, 0, min = 1)", "given its min bound twice", 40),
    ("clamp(u, lo = 1)", "unknown keyword argument 'lo'", 37),
    ("min(u)", "min() takes 2 arguments, got 1", 28),
    ("max(u, 1j)", "max() needs real arguments, but one is complex", 28),
    ("gelu(1j * u)", "gelu() needs a real argument", 28),
    ("clamp(u, 0, 1j)", "clamp() needs real arguments", 28),
    ("max", "'max' is a function; call it with arguments", 28),
])
def test_errors(expr, fragment, col):
    text = SPEC.replace("  output y = gelu_tanh(sum(C * x, N)) + min(D * u, erf(z)) + max(u, -0.2)\n"
                        "           + clamp(u, max = 0.5) + clamp(z, min = -0.3)",
                        f"  output y = sum(C*x, N) + {expr}")
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.loads(text, backend="numpy", filename="g.ssm")
    assert fragment in info.value.message, info.value.message
    assert (info.value.line, info.value.column) == (16, col)


@pytest.mark.parametrize("term, col", [("B * min(u, 0)", 27), ("B * clamp(u, -1, 1)", 27), ("B * gelu(u)", 27)])
def test_not_linear_in_the_input(term, col):
    text = SPEC.replace("dynamics x' = A x + B * gelu(z) * u", f"dynamics x' = A x + {term}")
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.loads(text, backend="numpy", filename="g.ssm")
    assert "not linear in the input 'u'" in info.value.message
    assert (info.value.line, info.value.column) == (13, col)


def test_clamped_coefficient_is_linear_and_min_max_stay_reserved():
    ok = SPEC.replace("dynamics x' = A x + B * gelu(z) * u", "dynamics x' = A x + clamp(dt, 0.01, 0.05) * B * u")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ssmc.loads(ok, backend="numpy")
    for name in ("min", "max", "clamp", "gelu", "erf"):
        with pytest.raises(ssmc.SpecError) as info:
            ssmc.loads(SPEC.replace("param lo[H]", f"param {name}[H]"), backend="numpy")
        assert "reserved" in info.value.message, info.value.message
