"""Regressions (issue 8): findings of the differential tester that are not reproducers
under tests/testing/regressions (those need a spec that runs).

A block_diagonal state dim given at construction so that the blocks no longer divide it
(the compiler checks only the defaults) is a one-line ValueError at construction naming
the dim, its value and the block count, for every backend: before, forward failed deep
inside a matmul (torch) or block_diagonal (numpy).
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
