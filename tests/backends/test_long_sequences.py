"""Numerics at L = 65 536: decays near 0 and near 1, float32 and bfloat16, forward and
backward, no NaN or Inf (the state only ever multiplies by decays in [0, 1])."""
from __future__ import annotations

import warnings

import pytest
import torch

import ssmc

SPEC = """
ssm Decays {
  dims H = 4, N = 2
  input u[H]
  state x[H, N]
  param A_log[H, N] = zeros
  A  = -exp(A_log) : diagonal
  dt = softplus(linear(u, H))
  dynamics   x' = A x + u
  discretize zoh_euler, step = dt
  scan causal
  output y = sum(x, N)
}
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_no_overflow_at_65536_tokens(dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.loads(SPEC, backend="torch")
    layer = mod.Decays(seed=0)
    with torch.no_grad():
        # Per channel: decays exp(-dt) from ~1 - 1e-6 (A tiny) to ~0 (A huge).
        layer.A_log.copy_(torch.tensor([[-14.0, -7.0], [0.0, 2.0], [5.0, 9.0], [12.0, 20.0]]))
    u = (torch.randn(1, 65536, 4) * 3).to(dtype).requires_grad_()
    y = layer(u)
    assert y.dtype == dtype
    assert torch.isfinite(y.float()).all()
    y.float().square().mean().backward()
    assert torch.isfinite(u.grad.float()).all()
    for p in layer.parameters():
        assert torch.isfinite(p.grad).all()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_lti_convolution_at_65536_tokens(dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.load(__import__("pathlib").Path(__file__).parents[2] / "examples" / "s4d.ssm", backend="torch")
    layer = mod.S4D(H=3, N=4, seed=0)
    with torch.no_grad():
        # Real parts from -1e-6 (decay ~1 per step) to -1e4 (decay ~0).
        layer.log_A_real.copy_(torch.tensor([[-14.0, -5.0, 0.0, 9.0]]).expand(3, 4))
    u = torch.randn(2, 65536, 3).to(dtype).requires_grad_()
    y = layer(u)
    assert type(layer).ALGORITHM == "fft_conv" and y.dtype == dtype
    assert torch.isfinite(y.float()).all()
    y.float().square().mean().backward()
    assert torch.isfinite(u.grad.float()).all()
    for p in layer.parameters():
        assert torch.isfinite(p.grad).all()
