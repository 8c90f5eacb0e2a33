"""What generated Triton-backend classes extend, and their kernel launcher.

The fused kernel is the `ssmc::fused_scan` torch.library op. Its autograd is the
generated backward kernel where one exists (real states with a diagonal or scalar
A: `TRITON_BACKWARD`); otherwise a module that needs gradients runs its PyTorch path
(the torch backend's chunked scan, whose backward is a reverse scan).
"""
from __future__ import annotations

import numpy as np
import torch

from . import triton_autotune as autotune
from .torch_module import TorchModule


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class TritonModule(TorchModule):
    BACKEND = "triton"
    _maps_on = False

    def forward(self, u, *args, **kw):
        tensors = [u] + [v for v in kw.values() if isinstance(v, torch.Tensor)]
        state = kw.get("initial_state")
        tensors += list(state) if isinstance(state, (tuple, list)) else ([state] if state is not None else [])
        self._grad_wanted = torch.is_grad_enabled() and (
            any(t.requires_grad for t in tensors) or any(p.requires_grad for p in self.parameters()))
        length = u.shape[1] if isinstance(u, torch.Tensor) and u.dim() >= 2 else 0
        self._maps_on = kw.get("cu_seqlens") is None and self._maps_usable(length, state, kw.get("return_state", False))
        return super().forward(u, *args, **kw)

    def step(self, u_t, state, **kw):
        self._grad_wanted = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        self._maps_on = False
        return super().step(u_t, state, **kw)

    #: whether every kernel of this module has a generated backward kernel
    TRITON_BACKWARD = False

    def _maps_usable(self, length: int, initial_state, return_state: bool) -> bool:
        """Whether scan orders can run by index maps (the kernel reads and writes token
        tmap[t] at step t) instead of reordered copies: every value before the scan must
        be per token (no conv along time), and the scan must run in a kernel (not the
        PyTorch chunk loop, nor the LTI convolution)."""
        if self.SCAN["order"] == "causal" or self.CONVS:
            return False
        if self.ALGORITHM == "ssd":
            return True
        if self.ALGORITHM == "fft_conv" and self._use_fft(initial_state, return_state, length):
            return False
        return self._fused_ready()

    def _take(self, a, perm):
        return a if self._maps_on else super()._take(a, perm)

    def _put_back(self, a, perm):
        return a if self._maps_on else super()._put_back(a, perm)

    def _time_map(self, device):
        """The current direction's index map over time (int32 [L]), or None (in order)."""
        perm = getattr(self, "_perm", None)
        if not self._maps_on or perm is None:
            return None
        # np.array copies: a reversed view (negative stride) cannot become a tensor.
        perm = np.array(perm, dtype=np.int32)
        key = (str(device), perm.tobytes())
        cached = getattr(self, "_map_cache", {})
        if key not in cached:
            # One map per direction is kept (the last shapes seen).
            cached = {k: v for k, v in cached.items() if len(k[1]) == len(key[1])}
            cached[key] = torch.as_tensor(perm, device=device)
            self._map_cache = cached
        return cached[key]

    def _ssd(self, *args):
        """The SSD form on the Triton kernel family, in this direction's order."""
        from . import triton_ssd
        return triton_ssd.ssd(*args, tmap=self._time_map(args[8].device))

    def _ssd_chunk(self, length: int) -> int:
        # With an index map the kernel walks the whole sequence in the direction's order.
        return max(1, length) if self._maps_on and getattr(self, "_perm", None) is not None \
            else super()._ssd_chunk(length)

    def _fused_ready(self) -> bool:
        return not getattr(self, "_grad_wanted", True) or self.TRITON_BACKWARD

    @staticmethod
    def _launch(kernel, batch: int, rows: int, cols: int, tensors, sizes, square: bool = False, **flags):
        """Grid (batch, row blocks): each program holds a [BLOCK_P, BLOCK_N] tile of the state
        (and, for matrix structures, a [BLOCK_P, BLOCK_N, BLOCK_N] tile of the transition)."""
        block_n = _pow2(cols)
        budget = 4096 // block_n if square else 2048
        largest = min(_pow2(rows), max(1, budget // block_n))
        args = [t.contiguous() if isinstance(t, torch.Tensor) else t for t in tensors]

        def run(block_p: int) -> None:
            kernel[(batch, -(-rows // block_p))](*args, *sizes, BLOCK_P=block_p, BLOCK_N=block_n, **flags)

        block_p = autotune.choose(kernel, (batch, rows, cols, tuple(sizes)), args, largest, run)
        run(block_p)
        return args


_KERNELS: dict[str, object] = {}


_BACKWARD: dict[str, object] = {}


def register_kernel(kernel, backward=None) -> str:
    """Make a generated kernel (and its backward kernel) reachable from the op by a key."""
    key = f"k{len(_KERNELS)}:{getattr(kernel, '__name__', 'kernel')}"
    _KERNELS[key] = kernel
    if backward is not None:
        _BACKWARD[key] = backward
    return key


def has_backward(key: str) -> bool:
    return key in _BACKWARD


def _outputs(x0, out_shapes, out_ranks):
    outs, pos = [], 0
    for r in out_ranks:
        outs.append(x0.new_empty(tuple(out_shapes[pos:pos + r])))
        pos += r
    return outs


#: tokens between two checkpoints of the state (the backward kernel recomputes in between)
CHECKPOINT = 64


def _states(x0, sizes, save: bool):
    """The checkpoints: the state entering every chunk of CHECKPOINT tokens, and after the last."""
    if not save:
        # A deterministic placeholder (an op's outputs must not be garbage).
        return x0.new_zeros((1,))
    chunks = -(-sizes[0] // CHECKPOINT) + 1
    return x0.new_zeros((x0.shape[0], chunks) + tuple(x0.shape[1:]))


@torch.library.custom_op("ssmc::fused_scan", mutates_args=())
def fused_scan(key: str, x0: torch.Tensor, inputs: list[torch.Tensor], sizes: list[int], batch: int, rows: int,
               cols: int, square: bool, out_shapes: list[int], out_ranks: list[int],
               save: bool, tmap: torch.Tensor | None) -> list[torch.Tensor]:
    """Run generated kernel `key`: returns [leaving state, *per-token results, checkpoints]
    (real dtypes; complex values as real views; the state every CHECKPOINT tokens only with
    `save`, for the backward kernel). With `tmap` (int32 [L]), step t of the recurrence
    reads and writes token tmap[t]: a scan order without reordered copies of the inputs.
    A torch.library op, so torch.compile sees one node."""
    xf = torch.empty_like(x0)
    outs = _outputs(x0, out_shapes, out_ranks)
    states = _states(x0, sizes, save)
    mapped = tmap is not None
    TritonModule._launch(_KERNELS[key], batch, rows, cols, [x0, xf, states, tmap if mapped else x0, *inputs, *outs],
                         sizes, square, SAVE=save, CK=CHECKPOINT, MAP=mapped)
    return [xf, *outs, states]


@fused_scan.register_fake
def _fused_scan_fake(key, x0, inputs, sizes, batch, rows, cols, square, out_shapes, out_ranks, save, tmap):
    return [torch.empty_like(x0), *_outputs(x0, out_shapes, out_ranks), _states(x0, sizes, save)]


def _setup(ctx, inputs, output):
    key, x0, ins, sizes, batch, rows, cols, square, out_shapes, out_ranks, save, tmap = inputs
    ctx.meta = (key, sizes, batch, rows, cols, square, len(ins), out_shapes, out_ranks, tmap is not None)
    ctx.save_for_backward(x0, *ins, output[-1], *([tmap] if tmap is not None else []))


def _backward(ctx, grads):
    key, sizes, batch, rows, cols, square, n_in, out_shapes, out_ranks, mapped = ctx.meta
    x0, *ins = ctx.saved_tensors
    ins, states, tmap = ins[:n_in], ins[n_in], (ins[n_in + 1] if mapped else x0)
    if key not in _BACKWARD or states.dim() == 1:
        raise RuntimeError("ssmc: this kernel has no backward; the module runs its PyTorch path for gradients")
    gxf = grads[0] if grads[0] is not None else torch.zeros_like(x0)
    zeros = _outputs(x0, out_shapes, out_ranks)
    gouts = [gr if gr is not None else z.zero_() for gr, z in zip(grads[1:-1], zeros)]
    gx0 = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    # Contiguous buffers: the kernel writes through raw pointers (zeros_like would keep an
    # input's strides, and the launcher's contiguous copy would swallow the writes).
    gins = [torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in ins]
    scratch = x0.new_empty((x0.shape[0], CHECKPOINT) + tuple(x0.shape[1:]))
    TritonModule._launch(_BACKWARD[key], batch, rows, cols,
                         [x0, states, scratch, gxf, gx0, tmap, *ins, *[g.contiguous() for g in gouts], *gins],
                         sizes, square, CK=CHECKPOINT, MAP=mapped)
    return (None, gx0, gins) + (None,) * 9  # no gradient for the key, sizes, flags or the time map


fused_scan.register_autograd(_backward, setup_context=_setup)
