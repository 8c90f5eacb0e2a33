"""The LTI kernel family of the Triton backend: the convolution kernel of a diagonal system.

For a linear time-invariant system with a diagonal state matrix the output is a causal
convolution y = K * u (done by FFT, `torch_ops.fft_conv`), with the kernel

    K[k, p, y, u] = Re( sum_s W[p, y, s] a[p, s]^k c[p, s, u] ),    k = 0 .. L-1

(a = Abar flattened to [P, S], W the readout of unit states, c the input term of unit
inputs; see `torch_ops.lti_kernel`). The PyTorch backend computes it with one torch.bmm
after splitting k = q T + r, T ~ sqrt(L), whose operands are [P, sqrt(L) Y, S] and
[P, S, sqrt(L) U] complex128 tensors. This kernel generates K directly on the GPU, in
float64 (the FFT path needs the kernel accurate to ~1e-10; float32 loses ~1e-3 in the
phase at k ~ 8192), holding only O(block) values per program:

    program (p, block of BLOCK_K exponents k, block of BLOCK_J (y, u) pairs):
        for each block of BLOCK_S states s:
            a^k   = exp(k log|a|) (cos(k arg a) + i sin(k arg a))     # [BLOCK_K, BLOCK_S]
            g     = W[p, y, s] c[p, s, u]                             # [BLOCK_J, BLOCK_S]
            acc  += Re(a^k) Re(g)^T - Im(a^k) Im(g)^T                 # [BLOCK_K, BLOCK_J]

(the last line an fp64 tl.dot when there are several (y, u) pairs, a broadcast product
and row sum when there is one).

Complex values travel as pairs of float64 (`torch.view_as_real` views, addressed by
strides, so broadcast/expanded W and c are never copied). log|a| and arg(a) are
computed once on the host ([P, S] values, exact torch functions); |a| = 0 gets a huge
negative finite log so that exp(0 * log) = 1 (0^0 = 1) and exp(k * log) = 0 for k >= 1,
as `torch_ops._powers` does. Real a: |a|^k times the exact sign (-1)^k where a < 0
(no trigonometry, no rounding of k pi).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["vandermonde", "block_sizes"]

#: log|a| used for a = 0: finite, so 0 * it = 0 (0^0 = 1) and exp(k * it) = 0 for k >= 1
_LOG_ZERO = -1.0e300


@triton.jit
def _vandermonde_kernel(
    logm, arg,  # log|a| [P, S], and arg(a) [P, S] (complex a) or 1.0 where a < 0 (real a); contiguous
    W, c,  # W [P, Y, S] and c [P, S, U], float64 (a view_as_real view when complex: imag at +1)
    K,  # out [L, P, Y, U] float64, contiguous
    P, Y, S, U, L, NKB,
    swp, swy, sws,
    scp, scs, scu,
    BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
    A_REAL: tl.constexpr, W_CPLX: tl.constexpr, C_CPLX: tl.constexpr,
    G_IMAG: tl.constexpr,  # Im(a^k) Im(W c) contributes: complex a and complex W or c
    DOT: tl.constexpr,  # contract over s with tl.dot (all blocks >= 16) instead of a broadcast sum
):
    pid = tl.program_id(0)
    p = (pid // NKB).to(tl.int64)
    kb = pid % NKB
    k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    mk = k < L
    kf = k.to(tl.float64)
    j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    mj = j < Y * U
    y = (j // U).to(tl.int64)
    u = (j % U).to(tl.int64)
    if A_REAL:
        odd = (k % 2) == 1
    acc = tl.zeros([BLOCK_K, BLOCK_J], dtype=tl.float64)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ms = s < S
        s64 = s.to(tl.int64)
        # a^k for this block of states: [BLOCK_K, BLOCK_S]
        lm = tl.load(logm + p * S + s64, mask=ms, other=0.0)
        th = tl.load(arg + p * S + s64, mask=ms, other=0.0)
        mag = tl.exp(kf[:, None] * lm[None, :])
        if A_REAL:
            pr = tl.where(odd[:, None] & (th[None, :] != 0.0), -mag, mag)
        else:
            phase = kf[:, None] * th[None, :]
            pr = mag * tl.cos(phase)
            pi = mag * tl.sin(phase)
        # g = W[p, y, s] c[p, s, u] for this block of (y, u) pairs: [BLOCK_J, BLOCK_S]
        m2 = mj[:, None] & ms[None, :]
        wo = W + p * swp + y[:, None] * swy + s64[None, :] * sws
        co = c + p * scp + s64[None, :] * scs + u[:, None] * scu
        wr = tl.load(wo, mask=m2, other=0.0)
        cr = tl.load(co, mask=m2, other=0.0)
        if W_CPLX:
            wi = tl.load(wo + 1, mask=m2, other=0.0)
            if C_CPLX:
                ci = tl.load(co + 1, mask=m2, other=0.0)
                gr = wr * cr - wi * ci
                gi = wr * ci + wi * cr
            else:
                gr = wr * cr
                gi = wi * cr
        else:
            if C_CPLX:
                ci = tl.load(co + 1, mask=m2, other=0.0)
                gr = wr * cr
                gi = wr * ci
            else:
                gr = wr * cr
        # Re(a^k g) = Re(a^k) Re(g) - Im(a^k) Im(g), summed over the states
        if DOT:
            acc = tl.dot(pr, tl.trans(gr), acc, input_precision="ieee")
            if G_IMAG:
                acc = tl.dot(pi, tl.trans(-gi), acc, input_precision="ieee")
        else:
            acc += tl.sum(pr[:, None, :] * gr[None, :, :], axis=2)
            if G_IMAG:
                acc -= tl.sum(pi[:, None, :] * gi[None, :, :], axis=2)
    k64 = k.to(tl.int64)
    # Sizes multiplied in int64 (L * P * Y * U may pass 2^31); through p, an int64, since
    # Triton passes a size of 1 as a constant, which has no .to().
    yu = (p * 0 + Y) * U
    out = K + k64[:, None] * (P * yu) + p * yu + j[None, :]
    tl.store(out, acc, mask=mk[:, None] & mj[None, :])


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def block_sizes(length: int, S: int, YU: int) -> tuple[int, int, int, bool]:
    """(BLOCK_K, BLOCK_J, BLOCK_S, DOT) for `length` exponents, S states and YU (y, u) pairs.

    One (y, u) pair (single-input single-output channels): BLOCK_J = 1 and the sum over s
    is a broadcast product and a row sum. More: BLOCK_J = 16 and the sum over s is an fp64
    tl.dot (DMMA on sm_80+; every block >= 16, the pairs padded). BLOCK_K = 64 exponents
    (fewer for short kernels), BLOCK_S = 16 states: [64, 16] powers per step, 8 per thread
    with 4 warps, which compiles for sm_90 without spills (the 3-d broadcast with 2 or more
    pairs does spill, hence the tl.dot).
    """
    dot = YU > 1
    lo = 16 if dot else 1
    bj = 16 if dot else 1
    bs = max(lo, min(16, _pow2(S)))
    bk = max(lo, min(64, _pow2(length)))
    return bk, bj, bs, dot


def _operand(t: torch.Tensor):
    """A float64 tensor (complex as a view_as_real view), its first three strides, and whether complex."""
    if t.is_complex():
        v = torch.view_as_real(t.to(torch.complex128).resolve_conj())
        return v, v.stride()[:3], True
    v = t.to(torch.float64)
    return v, v.stride(), False


def vandermonde(a: torch.Tensor, W: torch.Tensor, c: torch.Tensor, length: int, *,
                block_k: int | None = None, block_j: int | None = None, block_s: int | None = None,
                dot: bool | None = None, num_warps: int = 4) -> torch.Tensor:
    """K[k, p, y, u] = Re( sum_s W[p, y, s] a[p, s]^k c[p, s, u] ) for k = 0 .. length-1.

    a [P, S], W [P, Y, S], c [P, S, U], each real or complex (any strides; computed in
    float64 / complex128; 0^0 = 1). Returns K [length, P, Y, U] float64, contiguous.
    Grid: (P * cdiv(length, BLOCK_K), cdiv(Y * U, BLOCK_J)); each program loops over S
    in blocks of BLOCK_S. Block sizes and the contraction (`dot`: tl.dot or a broadcast
    sum) default to `block_sizes`; the keywords override them (powers of two).
    """
    if a.dim() != 2 or W.dim() != 3 or c.dim() != 3:
        raise ValueError(f"vandermonde: a [P, S], W [P, Y, S], c [P, S, U]; got {tuple(a.shape)}, "
                         f"{tuple(W.shape)}, {tuple(c.shape)}")
    P, S = a.shape
    Y, U = W.shape[1], c.shape[2]
    if W.shape[0] != P or W.shape[2] != S or c.shape[0] != P or c.shape[1] != S:
        raise ValueError(f"vandermonde: shapes do not agree: a {tuple(a.shape)}, W {tuple(W.shape)}, "
                         f"c {tuple(c.shape)}")
    length = int(length)
    out = torch.empty((length, P, Y, U), dtype=torch.float64, device=a.device)
    if out.numel() == 0:
        return out
    if S == 0:
        return out.zero_()
    if a.is_complex():
        a = a.to(torch.complex128)
        mag = a.abs()
        arg = a.angle()
    else:
        a = a.to(torch.float64)
        mag = a.abs()
        arg = (a < 0).to(torch.float64)
    logm = torch.where(mag > 0, mag.log(), torch.full_like(mag, _LOG_ZERO)).contiguous()
    arg = arg.contiguous()
    Wv, sw, w_cplx = _operand(W)
    cv, sc, c_cplx = _operand(c)
    bk, bj, bs, dflt = block_sizes(length, S, Y * U)
    bk, bj, bs = block_k or bk, block_j or bj, block_s or bs
    dot = dflt if dot is None else dot
    if dot and min(bk, bj, bs) < 16:
        raise ValueError(f"vandermonde: tl.dot needs blocks >= 16, got {(bk, bj, bs)}")
    nkb = triton.cdiv(length, bk)
    grid = (P * nkb, triton.cdiv(Y * U, bj))
    if grid[1] > 65535:
        raise ValueError(f"vandermonde: Y * U = {Y * U} needs more than 65535 blocks of {bj}")
    _vandermonde_kernel[grid](
        logm, arg, Wv, cv, out,
        P, Y, S, U, length, nkb,
        sw[0], sw[1], sw[2],
        sc[0], sc[1], sc[2],
        BLOCK_K=bk, BLOCK_J=bj, BLOCK_S=bs,
        A_REAL=not a.is_complex(), W_CPLX=w_cplx, C_CPLX=c_cplx,
        G_IMAG=a.is_complex() and (w_cplx or c_cplx), DOT=dot,
        num_warps=num_warps,
    )
    return out
