"""Regressions for findings reported while fixing issue 8 (outside the helpers' tables)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ssmc

NONLINEAR_READOUT = """
ssm T { dims H = 2, N = 3; input u[H]; state x[H, N]; A = -1 : scalar
  dynamics x' = A x + u; discretize backward_euler, step = 0.5; scan causal
  output y = %s }
"""


@pytest.mark.parametrize("readout", [
    "sum(x * x, N) - sum(x, N) * sum(x, N)",       # cancelled when sum was read as the identity
    "sum(x * x, N)",
    "mean(x, N) * sum(x, N) - sum(x, N) * sum(x, N)",
])
def test_a_readout_nonlinear_in_the_state_is_not_a_convolution(readout):
    """Silently wrong before: the readout was taken as linear, the layer ran as an FFT
    convolution from 32 tokens on and gave another function."""
    text = NONLINEAR_READOUT % readout
    g = ssmc.check(ssmc.errors.Source(text, "<t>")).graphs[0]
    assert g.meta["classification"]["readout_linear"] is False
    assert g.meta["classification"]["lti"] is False
    u = torch.randn(2, 40, 2, dtype=torch.float64)
    ref = ssmc.loads(text, backend="numpy").T(dtype=torch.float64, seed=0)
    tor = ssmc.loads(text, backend="torch").T(dtype=torch.float64, seed=0)
    np.testing.assert_allclose(tor(u).numpy(), ref(u).numpy(), rtol=1e-10, atol=1e-12)


def test_a_linear_readout_with_sums_stays_a_convolution():
    text = NONLINEAR_READOUT % "sum(x, N) - 2 * mean(x, N) + re(sum(x, N))"
    g = ssmc.check(ssmc.errors.Source(text, "<t>")).graphs[0]
    assert g.meta["classification"]["lti"] is True
