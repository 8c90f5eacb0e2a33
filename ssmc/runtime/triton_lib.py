"""Triton helpers that generated kernels import: the composition of affine maps, the
combine function of the scan family's associative scan over a chunk of tokens."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ssmc_compose(a1, e1, a2, e2):
    # x -> a2 (a1 x + e1) + e2: first step (a1, e1), then (a2, e2).
    return a1 * a2, a2 * e1 + e2


@triton.jit
def _ssmc_compose_complex(a1_r, a1_i, e1_r, e1_i, a2_r, a2_i, e2_r, e2_i):
    # The same for complex values as pairs of real registers.
    return (a1_r * a2_r - a1_i * a2_i, a1_r * a2_i + a1_i * a2_r,
            a2_r * e1_r - a2_i * e1_i + e2_r, a2_r * e1_i + a2_i * e1_r + e2_i)


__all__ = ["_ssmc_compose", "_ssmc_compose_complex"]
