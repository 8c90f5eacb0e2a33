"""Readouts the Triton scan kernel's tile cannot reduce run in torch from every state the
kernel hands over (issue 8): a sum over several state dims, and sums over different state
dims in one loop, compile with strict=True (they fell back to torch before) and agree with
the torch backend, forward and gradients, float64, through Triton's CPU interpreter."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

import ssmc

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

SPECS = {
    "sum over two state dims": """
ssm TwoDimSum {
  dims H = 2, N = 3
  input u[H]
  state x[H, N]
  param a[N] = normal(0, 1)
  param B[H, N] = normal(0, 0.5)
  A = -softplus(a) : diagonal
  recurrence x = A x + B * u
  scan causal
  output y = sum(x, H, N) + 0 * u
}""",
    "sums over different state dims": """
ssm TwoSums {
  dims H = 2, N = 3
  input u[H]
  state x[H, N]
  param a[N] = normal(0, 1)
  param B[H, N] = normal(0, 0.5)
  param C[H, N] = normal(0, 0.5)
  A = -softplus(a) : diagonal
  recurrence x = A x + B * u
  scan bidirectional
  output y = sum(C * x, N) + mean(sum(x, H) * C, N)
}""",
}


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_readout_in_torch_matches_torch(name):
    text = SPECS[name]
    block = text.split()[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tri = getattr(ssmc.loads(text, backend="triton", strict=True), block)(seed=0, dtype=torch.float64)
        ref = getattr(ssmc.loads(text, backend="torch", strict=True), block)(seed=0, dtype=torch.float64)
    ref.load_state_dict(tri.state_dict())
    u = torch.randn(2, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w = torch.randn(2, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = []
    for layer in (tri, ref):
        ui = u.clone().requires_grad_(True)
        y = layer(ui)
        (y * w).sum().backward()
        grads.append([ui.grad] + [p.grad for p in layer.parameters()])
        grads[-1].insert(0, y.detach())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
