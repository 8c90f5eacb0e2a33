"""What generated Triton-backend classes extend, and their kernel launcher.

The fused kernel runs the forward when no gradient is needed; when one is, the same
module runs its PyTorch path (the torch backend's chunked scan), whose backward is a
reverse scan: a Triton backward kernel is not generated yet.
"""
from __future__ import annotations

import torch

from . import triton_autotune as autotune
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
        largest = min(_pow2(rows), max(1, budget // block_n))
        args = [t.contiguous() if isinstance(t, torch.Tensor) else t for t in tensors]

        def run(block_p: int) -> None:
            kernel[(batch, -(-rows // block_p))](*args, *sizes, BLOCK_P=block_p, BLOCK_N=block_n)

        block_p = autotune.choose(kernel, (batch, rows, cols, tuple(sizes)), args, largest, run)
        run(block_p)
        return args


_KERNELS: dict[str, object] = {}


def register_kernel(kernel) -> str:
    """Make a generated kernel reachable from the custom op by a string key."""
    key = f"k{len(_KERNELS)}:{getattr(kernel, '__name__', 'kernel')}"
    _KERNELS[key] = kernel
    return key


def _outputs(x0, out_shapes, out_ranks):
    outs, pos = [], 0
    for r in out_ranks:
        outs.append(x0.new_empty(tuple(out_shapes[pos:pos + r])))
        pos += r
    return outs


@torch.library.custom_op("ssmc::fused_scan", mutates_args=())
def fused_scan(key: str, x0: torch.Tensor, inputs: list[torch.Tensor], sizes: list[int], batch: int, rows: int,
               cols: int, square: bool, out_shapes: list[int], out_ranks: list[int]) -> list[torch.Tensor]:
    """Run generated kernel `key`: returns [leaving state, *per-token results] (real dtypes;
    complex values as real views). A torch.library op, so torch.compile sees one node."""
    xf = torch.empty_like(x0)
    outs = _outputs(x0, out_shapes, out_ranks)
    TritonModule._launch(_KERNELS[key], batch, rows, cols, [x0, xf, *inputs, *outs], sizes, square)
    return [xf, *outs]


@fused_scan.register_fake
def _fused_scan_fake(key, x0, inputs, sizes, batch, rows, cols, square, out_shapes, out_ranks):
    return [torch.empty_like(x0), *_outputs(x0, out_shapes, out_ranks)]
