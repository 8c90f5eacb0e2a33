"""The torch.nn.Module that generated torch-backend classes extend.

It shares dims, parameters, validation and scan orders with the reference module and
overrides the array policy: values stay torch tensors (in autograd) on the module's
device; float16 / bfloat16 / float32 inputs compute in float32 (complex64 for complex
values), float64 inputs in float64; the output has the input's dtype.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .module import ReferenceModule
from .torch_ops import traced

# Target number of elements of one chunk's state-sized tensors ([B, T, *state]).
_CHUNK_ELEMENTS = 1 << 20


def complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _unchanged(saved: list, tensors: list) -> bool:
    """Whether every tensor still holds the values saved (same shapes), in one device sync."""
    if not tensors:
        return True
    diffs = [(a != b.detach()).any() for a, b in zip(saved, tensors)]
    return not bool(torch.stack([d.to(diffs[0].device) for d in diffs]).any())


class TorchModule(ReferenceModule):
    """Base of generated PyTorch modules: differentiable, CPU or GPU."""

    BACKEND = "torch"

    #: the LTI convolution form is used from this many tokens on (below, the scan is cheaper).
    fft_min_length = 32

    def __init__(self, *args, chunk_size: int | None = None, algorithm: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        #: tokens per chunk of the scan; None chooses from the shapes at each call.
        self.chunk_size = chunk_size
        #: "auto" follows the compiler's choice; "scan" forces the chunked scan (for experts).
        if algorithm not in ("auto", "scan"):
            raise ValueError(f"{type(self).__name__}(): algorithm must be 'auto' or 'scan', got {algorithm!r}")
        self.algorithm = algorithm
        self._kernels: dict = {}

    def _use_fft(self, state, need_final: bool, length: int) -> bool:
        """The convolution form when the compiler chose it, for a stateless call that is long enough."""
        return (self.ALGORITHM == "fft_conv" and self.algorithm == "auto" and state is None and not need_final
                and length >= self.fft_min_length)

    def _kernel(self, length: int, dtype, make):
        """The LTI kernel, cached while no parameter changed and no gradient is being taken."""
        if traced():
            # Inside a compiled graph (or a vmap) the kernel is part of what is traced,
            # computed at each call: a cache kept across calls would be a side effect on the
            # module, its check a data-dependent branch that fullgraph=True cannot trace, and
            # batched parameters have no data pointer to key it on.
            return make()
        tensors = list(self.parameters()) + list(self.buffers())
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return make()
        key = (getattr(self, "_dir_index", 0), length, dtype,
               tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors))
        # The values the kernel was made from are compared, not the tensors' versions:
        # `p.data.mul_(2)` edits a parameter in place without bumping its version. One
        # pass over the parameters and one device sync, far cheaper than the kernel.
        hit = self._kernels.get(key)
        if hit is not None and _unchanged(hit[0], tensors):
            return hit[1]
        self._kernels.clear()
        kernel = make()
        self._kernels[key] = ([t.detach().clone() for t in tensors], kernel)
        return kernel

    def _chunk(self, batch: int, length: int, state_numel: int) -> int:
        """Tokens per chunk: bounded memory for the chunk's state-sized tensors."""
        if self.chunk_size:
            return int(self.chunk_size)
        t = _CHUNK_ELEMENTS // max(1, batch * state_numel)
        return int(min(max(t, 16), max(length, 1), 2048))

    #: the LTI kernel's sum over the state (None: a batched matmul in torch; the Triton
    #: backend supplies a kernel)
    _vandermonde = None

    #: tokens per block of the SSD form: its masked matmuls are block x block.
    ssd_block = 64

    #: tokens per block of the chunked delta rule: its triangular solve is block x block.
    delta_block = 64

    def _ssd_chunk(self, length: int) -> int:
        """Tokens per pass of the SSD form: many blocks at once, bounded memory."""
        return int(self.chunk_size) if self.chunk_size else 4096

    @property
    def _ref_device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return self._device

    def _params(self, direction: int, compute) -> dict:
        out = {}
        for name, _, _ in self.PARAMS:
            t = self._tensor(name)
            t = t.to(complex_of(compute) if t.is_complex() else compute)
            out[name] = t[direction] if self._separate[name] else t
        return out

    def _work_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of states and static values, given the (converted) first input's (a
        complex input's real counterpart)."""
        return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)

    def _compute_dtype(self, dtype: torch.dtype):
        return torch.float64 if dtype == torch.float64 else torch.float32

    def _to_array(self, t, compute, complex_: bool = False):
        if complex_ or t.is_complex():
            return t.to(complex_of(compute))
        return t.to(compute)

    def _from_array(self, a) -> torch.Tensor:
        return a

    def _take(self, a, perm):
        return a.index_select(1, torch.as_tensor(np.array(perm), device=a.device))

    def _put_back(self, a, perm):
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        return a.index_select(1, torch.as_tensor(inverse, device=a.device))

    def _stack(self, arrays):
        return torch.stack(arrays, dim=-1)

    @staticmethod
    def _is_complex(a) -> bool:
        return a.is_complex()

    def _sync_device(self) -> None:
        # Follow the module: its parameters' device is where inputs must be.
        self._device = self._ref_device

    def _check(self, what, t, want, dims_text, cplx: bool = False):
        self._sync_device()
        return super()._check(what, t, want, dims_text, cplx)

    def init_state(self, batch: int, dtype: torch.dtype = torch.float32):
        """The zero state (float32 / complex64 by default) for `batch` sequences."""
        self._check_init_state(batch, dtype)
        d = self.dims
        device = self._ref_device
        xs = [torch.zeros((batch,) + tuple(d[n] for n in sdims),
                          dtype=complex_of(dtype) if scplx else dtype, device=device)
              for _, sdims, scplx in self._states()]
        if not self._tupled():
            return xs[0]
        tails = [torch.zeros((batch, (k if isinstance(k, int) else d[k]) - 1) + tuple(d[n] for n in ch),
                             dtype=complex_of(dtype) if cplx and cplx[0] else dtype, device=device)
                 for _, ch, k, *cplx in self.CONVS]
        return (*xs, *tails)

    def state_numel(self) -> int:
        # A list, not a generator: torch.compile (dynamo) cannot trace math.prod over a generator.
        return math.prod([self.dims[n] for n in self.STATE[1]])
