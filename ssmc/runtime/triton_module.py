"""What generated Triton-backend classes extend, and their kernel launcher.

The fused kernel runs the forward when no gradient is needed; when one is, the same
module runs its PyTorch path (the torch backend's chunked scan), whose backward is a
reverse scan: a Triton backward kernel is not generated yet.
"""
from __future__ import annotations

import torch

from .torch_module import TorchModule


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class TritonModule(TorchModule):
    BACKEND = "triton"

    def forward(self, u, *args, **kw):
        tensors = [u] + [v for v in kw.values() if isinstance(v, torch.Tensor)]
        state = kw.get("initial_state")
        tensors += list(state) if isinstance(state, (tuple, list)) else ([state] if state is not None else [])
        self._grad_wanted = torch.is_grad_enabled() and (
            any(t.requires_grad for t in tensors) or any(p.requires_grad for p in self.parameters()))
        return super().forward(u, *args, **kw)

    def step(self, u_t, state, **kw):
        self._grad_wanted = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        return super().step(u_t, state, **kw)

    def _fused_ready(self) -> bool:
        return not getattr(self, "_grad_wanted", True)

    @staticmethod
    def _launch(kernel, batch: int, rows: int, cols: int, tensors, sizes, square: bool = False):
        """Grid (batch, row blocks): each program holds a [BLOCK_P, BLOCK_N] tile of the state
        (and, for matrix structures, a [BLOCK_P, BLOCK_N, BLOCK_N] tile of the transition)."""
        block_n = _pow2(cols)
        budget = 4096 // block_n if square else 2048
        block_p = min(_pow2(rows), max(1, budget // block_n))
        args = [t.contiguous() if isinstance(t, torch.Tensor) else t for t in tensors]
        grid = (batch, -(-rows // block_p))
        kernel[grid](*args, *sizes, BLOCK_P=block_p, BLOCK_N=block_n)
        return args
