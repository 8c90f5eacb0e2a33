"""Regressions (issue 8): findings of the differential tester that are not reproducers
under tests/testing/regressions (those need a spec that runs).

A block_diagonal state dim given at construction so that the blocks no longer divide it
(the compiler checks only the defaults) is a one-line ValueError at construction naming
the dim, its value and the block count, for every backend: before, forward failed deep
inside a matmul (torch) or block_diagonal (numpy).

A conv's bias is drawn with the conv's width as fan-in, also with no channel dims.
"""
from __future__ import annotations

import pytest
import torch

import ssmc

BLOCKS = """ssm Blocks {
  dims H = 2, N = 4, K = 2
  input u[H]
  param M[H, N, N] = normal(0, 0.3)
  param W[H, N] = normal(0, 0.5)
  state x[H, N]
  A = M : block_diagonal(blocks = BLOCKS)
  dynamics x' = A x + W * u
  discretize bilinear, step = 0.1
  scan causal
  output y = sum(x, N)
}
"""


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("blocks, given, count", [
    ("4", {"N": 1}, "4"),
    ("4", {"N": 6}, "4"),
    ("K", {"K": 3}, "K = 3"),
    ("K", {"N": 5}, "K = 2"),
])
def test_block_diagonal_dim_not_divisible_at_construction(backend, blocks, given, count):
    mod = ssmc.loads(BLOCKS.replace("BLOCKS", blocks), backend=backend, strict=True)
    n = given.get("N", 4)
    with pytest.raises(ValueError) as e:
        mod.Blocks(**given)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"dim N = {n} is not divisible" in msg and f"blocks = {count}" in msg, msg


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("blocks, given", [("4", {"N": 8}), ("K", {"K": 4}), ("K", {"N": 6, "K": 3})])
def test_block_diagonal_dims_that_divide_still_run(backend, blocks, given):
    mod = ssmc.loads(BLOCKS.replace("BLOCKS", blocks), backend=backend, strict=True)
    layer = mod.Blocks(seed=0, dtype=torch.float64, **given)
    y = layer(torch.randn(2, 3, 2, dtype=torch.float64))
    assert y.shape == (2, 3, 2) and torch.isfinite(y).all()


CONV_BIAS = """ssm ConvBias {
  dims E = 64, K = 2
  input u[CH]
  param a[] = uniform(0.1, 0.9)
  state x[E]
  f = conv(u, K, bias = true)
  Ad = a : scalar
  recurrence x = Ad x + f
  scan causal
  output y = sum(x, E)
}
"""


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("channels", ["", "E"])
def test_conv_bias_fan_in_is_the_width(backend, channels):
    # The bias of conv(e, K) is U(-1/sqrt(K), 1/sqrt(K)) (torch.nn.Conv1d, one group per
    # channel): its fan-in was read as the last channel dim (64 here: bound 1/8), and
    # with no channel dims (a scalar input) construction failed with an IndexError.
    mod = ssmc.loads(CONV_BIAS.replace("CH", channels), backend=backend, strict=True)
    layer = mod.ConvBias(seed=0)
    b = layer.f_conv_bias.detach()
    assert b.shape == ((64,) if channels else ())
    bound = 1 / 2 ** 0.5
    assert b.abs().max() <= bound
    if channels:
        assert b.abs().max() > 0.5, "drawn with the channels' count as fan-in"
