"""Regression tests for failures found when several changes met (issue 8 integration)."""
import os
import warnings

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

import ssmc

NEG_MAMBA2 = """
ssm NegSSD {
  dims    Hd = 2, P = 3, N = 2
  input   u[Hd, P]
  state   x[Hd, P, N]
  param   A_log[Hd]   = log(uniform(1, 16))
  param   D[Hd]       = ones
  A  = -exp(A_log) : scalar
  dt = softplus(linear(u, Hd))
  B  = linear(u, N)
  C  = linear(u, N)
  dynamics   x' = A x - B * u
  discretize zoh_euler, step = dt
  scan       causal
  output     y = sum(C * x, N) + D * u
}
"""


def test_negated_input_factors_keep_two_factors():
    """-(u * dt) as the SSD kernel's X side: still two unmultiplied factors, the smaller
    (dt) negated, whose product is the negated product (was: TypeError, bad operand type
    for unary -: 'Factors')."""
    pytest.importorskip("triton")
    from ssmc.runtime import triton_ssd
    g = torch.Generator().manual_seed(0)
    u, dt = torch.randn(2, 5, 2, 3, generator=g), torch.rand(2, 5, 2, generator=g)
    X, xd = triton_ssd.factors([(u, ("Hd", "P")), (dt, ("Hd",))])
    neg = -X
    assert isinstance(neg, triton_ssd.Factors) and len(neg.factors) == 2
    assert neg.factors[0][0] is u
    torch.testing.assert_close(neg.product(), -X.product())


def test_negated_input_term_runs_the_triton_ssd_form():
    """A Mamba-2 layer with `x' = A x - B * u` on the Triton backend (its SSD form, the
    interpreter on CPU) matches the torch backend, forward and gradients."""
    pytest.importorskip("triton")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T = ssmc.loads(NEG_MAMBA2, backend="triton", strict=True).NegSSD
    R = ssmc.loads(NEG_MAMBA2, backend="torch").NegSSD
    assert T.ALGORITHM == "ssd"
    t, r = T(seed=3, dtype=torch.float64), R(seed=3, dtype=torch.float64)
    u = torch.randn(2, 7, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ut, ur = u.clone().requires_grad_(), u.clone().requires_grad_()
    yt, yr = t(ut), r(ur)
    torch.testing.assert_close(yt, yr)
    gt = torch.autograd.grad(yt.square().sum(), [ut, *t.parameters()])
    gr = torch.autograd.grad(yr.square().sum(), [ur, *r.parameters()])
    for a, b in zip(gt, gr):
        torch.testing.assert_close(a, b)
