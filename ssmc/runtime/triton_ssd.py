"""The SSD kernel family (Mamba-2 class) for the Triton backend.

For a scalar-times-identity system in the SSD form (the compiler's `choose_algorithm`
finds it: Abar = exp(z), Ebar = X * B with B the only factor over the state's last dim
N, readout sum(C * x, N)), the torch side computes the per-token factors z, X, B and C
from the spec's expressions, and this kernel does the rest in one pass:

    for each chunk of BLOCK_T tokens (sequentially, the state [BLOCK_P, N] in registers):
        Lc      = cumsum(z)                                        # [T]
        y       = ((C B^T) * exp(Lc_t - Lc_s) [s <= t]) X          # chunk-local, tl.dot
                  + exp(Lc) * (C x^T)                              # the state entering the chunk
        x       = exp(Lc_T) x + (X * exp(Lc_T - Lc))^T B           # the state leaving it

(each exponent Lc_t - Lc_s summed over its own tokens, `_ssd_decays`; the mask a `where`,
non-finite X read as 0 and added back to the outputs from their token on, so a NaN or
Inf at a token never reaches the outputs before it)

One program owns a batch element, a "head" (the state dims that z, B or C depend on,
flattened) and a block of "channels" (the state dims only X depends on); every input
is read once, no per-token state is written. Inputs are addressed through strides,
so factors broadcast over heads (Mamba-2's B and C, shared by all heads) are never
copied. Every exponent is <= 0 where the decays are <= 1.

Gradients: `ssmc::ssd_scan` is a torch.library op whose autograd is a second kernel,
`_ssd_bwd`: the forward saves the state entering every chunk; the backward walks the
chunks in reverse with the state's adjoint in registers and computes the gradients of
z, X, B, C and the entering state from the same chunk-local matmuls (formulas in its
docstring). Channel blocks of one head add their B, C and z gradients atomically.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import triton_autotune as autotune
from . import torch_ops as ops

#: tokens per chunk: the chunk-local matmuls are BLOCK_T x BLOCK_T. 16 (the least tl.dot
#: takes): with 64 the [T, T] tiles alone take 32 registers a thread each and both kernels
#: spill; with 32 the backward still spills on sm_90 at N = 32 (ptxas -v for sm_80 and
#: sm_90: `python -m ssmc.aot`).
BLOCK_T = 16


@triton.jit
def _ssd_program(H, P, N, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """The program's batch element, head, chunk steps, channels and state columns, their
    masks, and the offsets of its [BLOCK_P, BLOCK_N] tile of a [B, H, P, N] state."""
    # Indices in int64: every offset below is a product of them with sizes or strides,
    # which passes 2^31 on large tensors (32-bit offsets would wrap silently).
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    t = tl.arange(0, BLOCK_T)
    p = (tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    n = tl.arange(0, BLOCK_N).to(tl.int64)
    mp = p < P
    mn = n < N
    xoff = ((b * H + h) * P + p[:, None]) * N + n[None, :]
    xm = mp[:, None] & mn[None, :]
    return b, h, t, p, n, mp, mn, xoff, xm


@triton.jit
def _ssd_chunk_inputs(z, X, X2, Bm, Cm, tmap, b, h, c, p, n, mp, mn, L,
                      szb, szt, szh, sxb, sxt, sxh, sxp, s2b, s2t, s2h, sbb, sbt, sbh, sbn, scb, sct, sch, scn,
                      dt: tl.constexpr, BLOCK_T: tl.constexpr, MAP: tl.constexpr, HAS_X2: tl.constexpr):
    """Chunk c's tokens (tmap[t] with MAP; int64) and inputs: z [T], its cumsum Lc, X [T, BLOCK_P]
    (with HAS_X2 the product X1 * X2 of its two factors, e.g. dt * u, formed here), B and
    C [T, BLOCK_N]. Padding tokens: decay 1 (z = 0), no input, no output."""
    tt = c * BLOCK_T + tl.arange(0, BLOCK_T)
    mt = tt < L
    if MAP:  # a scan order by an index map over time: no reordered copies
        tt = tl.load(tmap + tt, mask=mt, other=0)
    tt = tt.to(tl.int64)  # times a stride: int64 (see _ssd_program)
    zc = tl.load(z + b * szb + tt * szt + h * szh, mask=mt, other=0.0).to(dt)
    Lc = tl.cumsum(zc, axis=0)
    X1c = tl.load(X + b * sxb + tt[:, None] * sxt + h * sxh + p[None, :] * sxp,
                  mask=mt[:, None] & mp[None, :], other=0.0).to(dt)
    if HAS_X2:
        X2c = tl.load(X2 + b * s2b + tt * s2t + h * s2h, mask=mt, other=0.0).to(dt)
    else:
        X2c = tl.full((BLOCK_T,), 1.0, dt)
    Xc = X1c * X2c[:, None]
    Bc = tl.load(Bm + b * sbb + tt[:, None] * sbt + h * sbh + n[None, :] * sbn,
                 mask=mt[:, None] & mn[None, :], other=0.0).to(dt)
    Cc = tl.load(Cm + b * scb + tt[:, None] * sct + h * sch + n[None, :] * scn,
                 mask=mt[:, None] & mn[None, :], other=0.0).to(dt)
    return tt, mt, zc, Lc, Xc, X1c, X2c, Bc, Cc


@triton.jit
def _ssd_decays(zc, t, BLOCK_T: tl.constexpr):
    """The chunk's decays: D[t, s] = exp(z_{s+1} + ... + z_t) for s <= t, 0 above the
    diagonal (by a `where`), and w[s] = exp(z_{s+1} + ... + z_{T-1}) (the last row).

    Each exponent is a cumulative sum of the masked, repeated z (Mamba-2's `segsum`),
    not the difference Lc_t - Lc_s of two cumsums, which with large steps loses the small
    exponents between them to cancellation. A NaN at token r stays in the rows t >= r."""
    below = t[:, None] > t[None, :]
    seg = tl.cumsum(tl.where(below, zc[:, None], 0.0), axis=0)  # [T, T]: 0 on and above the diagonal
    decay = tl.where(t[:, None] >= t[None, :], tl.exp(seg), 0.0)
    w = tl.exp(tl.sum(tl.where(t[:, None] == BLOCK_T - 1, seg, 0.0), axis=0))
    return decay, w


@triton.jit
def _ssd_fwd(
    z, X, X2, Bm, Cm,  # log-decays [B, L, H], X [B, L, H, P] (times X2 [B, L, H]), B and C [B, L, H, N] (any strides)
    x0, y, xf,  # entering state [B, H, P, N], output [B, L, H, P], leaving state [B, H, P, N]
    states,  # (SAVE) the state entering every chunk [B, NC, H, P, N], for the backward kernel
    tmap,  # (MAP) the direction's order: step t reads and writes token tmap[t]
    L, H, P, N,
    szb, szt, szh,
    sxb, sxt, sxh, sxp,
    s2b, s2t, s2h,
    sbb, sbt, sbh, sbn,
    scb, sct, sch, scn,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
    MAP: tl.constexpr, SAVE: tl.constexpr, HAS_X2: tl.constexpr,
):
    b, h, t, p, n, mp, mn, xoff, xm = _ssd_program(H, P, N, BLOCK_T, BLOCK_P, BLOCK_N)
    dt = x0.dtype.element_ty
    x = tl.load(x0 + xoff, mask=xm, other=0.0).to(dt)  # [BLOCK_P, BLOCK_N]
    causal = t[:, None] >= t[None, :]
    NC = tl.cdiv(L, BLOCK_T)
    for c in range(NC):
        if SAVE:
            tl.store(states + ((b * NC + c) * H + h) * P * N + p[:, None] * N + n[None, :], x, mask=xm)
        tt, mt, zc, Lc, Xc, X1c, X2c, Bc, Cc = _ssd_chunk_inputs(
            z, X, X2, Bm, Cm, tmap, b, h, c, p, n, mp, mn, L, szb, szt, szh, sxb, sxt, sxh, sxp, s2b, s2t, s2h,
            sbb, sbt, sbh, sbn, scb, sct, sch, scn, dt, BLOCK_T, MAP, HAS_X2)
        CB = tl.dot(Cc, tl.trans(Bc), input_precision=PREC)  # [T, T]
        decay, w = _ssd_decays(zc, t, BLOCK_T)
        # Masked by a `where`, not by the zero decay: a NaN or Inf in B_s times 0 would
        # reach the earlier tokens t < s.
        M = tl.where(causal, CB * decay, 0.0).to(dt)
        # So for X: the dot reads a non-finite X_s as 0, and the outputs of the chunk from
        # token s on get the NaN or Inf by a cumulative sum of X - X_read (exactly 0 while
        # X is finite; later chunks get it through the state, as with a scan).
        Xr = tl.where((Xc * 0.0) == 0.0, Xc, 0.0)
        yc = tl.dot(M, Xr.to(dt), input_precision=PREC) \
            + tl.exp(Lc)[:, None] * tl.dot(Cc, tl.trans(x), input_precision=PREC) \
            + tl.cumsum(Xc - Xr, axis=0)  # [T, BLOCK_P]
        tl.store(y + ((b * L + tt[:, None]) * H + h) * P + p[None, :], yc, mask=mt[:, None] & mp[None, :])
        last = tl.sum(zc, axis=0)
        Xw = (Xc * w[:, None]).to(dt)
        x = tl.exp(last) * x + tl.dot(tl.trans(Xw), Bc, input_precision=PREC)  # [BLOCK_P, BLOCK_N]
    tl.store(xf + xoff, x, mask=xm)


@triton.jit
def _ssd_bwd(
    z, X, X2, Bm, Cm, states, tmap,  # the forward's inputs (any strides) and its checkpoints
    gy, gxf,  # gradients of y [B, L, H, P] and of the leaving state [B, H, P, N] (contiguous)
    dz, dX, dX2, dB, dC, dx0,  # gradients of the inputs, contiguous (dz, dX2, dB, dC zeroed: added atomically)
    L, H, P, N,
    szb, szt, szh,
    sxb, sxt, sxh, sxp,
    s2b, s2t, s2h,
    sbb, sbt, sbh, sbn,
    scb, sct, sch, scn,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
    MAP: tl.constexpr, HAS_X2: tl.constexpr,
):
    """Chunks in reverse, the state's adjoint g [BLOCK_P, BLOCK_N] in registers. Per chunk,
    with D the causal decays, M = (C B^T) * D, Q = (gy X^T) * D, w = exp(Lc_T - Lc):
      dX = M^T gy + w (B g^T)       dB = Q^T C + w (X g)       dC = Q B + exp(Lc) (gy x_c)
      dLc from every exp(Lc ...) of the forward, dz = its reverse cumsum;
      g <- exp(Lc_T) g + (exp(Lc) gy)^T C."""
    b, h, t, p, n, mp, mn, xoff, xm = _ssd_program(H, P, N, BLOCK_T, BLOCK_P, BLOCK_N)
    dt = gxf.dtype.element_ty
    g = tl.load(gxf + xoff, mask=xm, other=0.0).to(dt)  # [BLOCK_P, BLOCK_N]
    NC = tl.cdiv(L, BLOCK_T)
    for cc in range(NC):
        c = NC - 1 - cc
        tt, mt, zc, Lc, Xc, X1c, X2c, Bc, Cc = _ssd_chunk_inputs(
            z, X, X2, Bm, Cm, tmap, b, h, c, p, n, mp, mn, L, szb, szt, szh, sxb, sxt, sxh, sxp, s2b, s2t, s2h,
            sbb, sbt, sbh, sbn, scb, sct, sch, scn, dt, BLOCK_T, MAP, HAS_X2)
        last = tl.sum(zc, axis=0)
        mtp = mt[:, None] & mp[None, :]
        mtn = mt[:, None] & mn[None, :]
        gyc = tl.load(gy + ((b * L + tt[:, None]) * H + h) * P + p[None, :], mask=mtp, other=0.0).to(dt)
        xc = tl.load(states + ((b * NC + c) * H + h) * P * N + p[:, None] * N + n[None, :], mask=xm,
                     other=0.0).to(dt)  # the state entering this chunk
        eL = tl.exp(Lc)
        decay, w = _ssd_decays(zc, t, BLOCK_T)  # [T, T], [T]
        CB = tl.dot(Cc, tl.trans(Bc), input_precision=PREC)
        GX = tl.dot(gyc, tl.trans(Xc), input_precision=PREC)  # [T, T]: gy_t . X_s
        M = (CB * decay).to(dt)
        Q = (GX * decay).to(dt)
        Xg = tl.dot(Xc, g.to(dt), input_precision=PREC)  # [T, BLOCK_N]
        dXc = tl.dot(tl.trans(M), gyc, input_precision=PREC) \
            + w[:, None] * tl.dot(Bc, tl.trans(g.to(dt)), input_precision=PREC)
        # X = X1 * X2: dX1 = dX * X2; dX2 = sum over the channels of dX * X1 (channel blocks add).
        tl.store(dX + ((b * L + tt[:, None]) * H + h) * P + p[None, :], dXc * X2c[:, None], mask=mtp)
        if HAS_X2:
            tl.atomic_add(dX2 + (b * L + tt) * H + h, tl.sum(tl.where(mtp, dXc * X1c, 0.0), axis=1), mask=mt)
        dBc = tl.dot(tl.trans(Q), Cc, input_precision=PREC) + w[:, None] * Xg
        dCc = tl.dot(Q, Bc, input_precision=PREC) + eL[:, None] * tl.dot(gyc, xc, input_precision=PREC)
        # Channel blocks of one head add into the same B, C and z gradients.
        tl.atomic_add(dB + ((b * L + tt[:, None]) * H + h) * N + n[None, :], dBc, mask=mtn)
        tl.atomic_add(dC + ((b * L + tt[:, None]) * H + h) * N + n[None, :], dCc, mask=mtn)
        # d/dLc: chunk-local outputs (+ at t, - at s), the entering state's readout, the state update.
        QC = Q * CB
        S = w * tl.sum(Xg * Bc, axis=1)  # [T]
        Cx = tl.dot(Cc, tl.trans(xc), input_precision=PREC)  # [T, BLOCK_P]
        dL = tl.sum(QC, axis=1) - tl.sum(QC, axis=0) + eL * tl.sum(gyc * Cx, axis=1) - S
        dlast = tl.exp(last) * tl.sum(tl.sum(g * xc, axis=1), axis=0) + tl.sum(S, axis=0)
        dL = dL + tl.where(t == BLOCK_T - 1, dlast, 0.0)
        # Lc_t = z_0 + ... + z_t: dz is the reverse cumulative sum of dLc.
        dzc = tl.sum(dL, axis=0) - tl.cumsum(dL, axis=0) + dL
        tl.atomic_add(dz + (b * L + tt) * H + h, dzc, mask=mt)
        gyL = (gyc * eL[:, None]).to(dt)
        g = tl.exp(last) * g + tl.dot(tl.trans(gyL), Cc, input_precision=PREC)
    tl.store(dx0 + xoff, g, mask=xm)


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << max(0, (int(n) - 1).bit_length()))


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: exact float32 products, unless the user allowed TF32 for
    matmuls in torch (torch.backends.cuda.matmul.allow_tf32), which this follows."""
    if dtype == torch.float32 and torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _block_p(chans: int, n: int, backward: bool = False) -> int:
    """Channels per program by default: 16, the least tl.dot takes. What stays in registers
    per program is the state tile [BLOCK_P, BLOCK_N] and the chunk's [T, T], [T, BLOCK_N]
    and [T, BLOCK_P] tiles; the ahead-of-time check (`python -m ssmc.aot`, ptxas -v for
    sm_80 and sm_90) found that wider channel blocks spill from N = 32 on, the backward
    kernel first. The forward's autotuner also tries 32 and 64 (`_candidates`), pruned on
    a GPU where they spill."""
    return 16


def _candidates(chans: int) -> list[int]:
    """The forward's channel blocks, the default (16) first."""
    return [bp for bp in (16, 32, 64) if bp == 16 or bp <= _pow2(chans)]


def _warps(block_p: int, block_n: int) -> int:
    """Warps per program: 8 from BLOCK_N = 32 on (the chunk's [T, BLOCK_N] tiles and the
    state spread over 256 threads: with 4 warps both kernels spill at N = 32), else 4."""
    return 8 if block_n >= 32 else 4


def _stages(backward: bool) -> int:
    """Software pipelining of the chunk loop: none. Prefetching the next chunk's tiles
    (3 stages, Triton's default) holds a second set of them in registers and shared
    memory; the AOT check measured more spills and up to 230 KB of shared memory with it."""
    return 1


def _strides(*ts):
    return [s for t in ts for s in t.stride()]


@torch.library.custom_op("ssmc::ssd_scan", mutates_args=())
def ssd_scan(z: torch.Tensor, X: torch.Tensor, X2: torch.Tensor | None, Bm: torch.Tensor, Cm: torch.Tensor,
             x0: torch.Tensor, tmap: torch.Tensor | None, save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SSD kernel on canonical layouts: z [B, L, H], X [B, L, H, P] (times X2 [B, L, H]
    where given: the product is formed in the kernel), Bm and Cm [B, L, H, N] (broadcast
    axes may have stride 0), x0 [B, H, P, N]; inputs may be stored in half precision, the
    kernel computes in x0's dtype. Returns y [B, L, H, P], the leaving state [B, H, P, N]
    and, with `save`, the state entering every chunk of BLOCK_T tokens (for the backward
    kernel). With `tmap` (int32 [L]), step t of the recurrence reads and writes token tmap[t]."""
    b, length, heads, chans = X.shape
    n = Bm.shape[-1]
    x0 = x0.contiguous()
    y = X.new_empty((b, length, heads, chans), dtype=x0.dtype)
    xf = torch.empty_like(x0)
    states = _states(x0, length, save)
    if length == 0:
        xf.copy_(x0)
        return y, xf, states
    block_n = _pow2(n)
    mapped, gated = tmap is not None, X2 is not None
    x2 = X2 if gated else z
    args = [z, X, x2, Bm, Cm, x0, y, xf]

    def run(block_p: int) -> None:
        block_p = max(16, block_p)
        _ssd_fwd[(b, heads, -(-chans // block_p))](
            z, X, x2, Bm, Cm, x0, y, xf, states, tmap if mapped else x0, length, heads, chans, n,
            *_strides(z, X, x2, Bm, Cm),
            BLOCK_T=BLOCK_T, BLOCK_P=block_p, BLOCK_N=block_n, PREC=_precision(x0.dtype), MAP=mapped, SAVE=save,
            HAS_X2=gated, num_warps=_warps(block_p, block_n), num_stages=_stages(False))

    block_p = autotune.choose(_ssd_fwd, (b, heads, chans, n, length), args, _block_p(chans, n), run,
                              _candidates(chans))
    run(block_p)
    return y, xf, states


def _states(x0, length: int, save: bool):
    if not save:
        # A deterministic placeholder (an op's outputs must not be garbage).
        return x0.new_zeros((1,))
    return x0.new_zeros((x0.shape[0], max(1, -(-length // BLOCK_T))) + tuple(x0.shape[1:]))


@ssd_scan.register_fake
def _ssd_scan_fake(z, X, X2, Bm, Cm, x0, tmap, save):
    b, length, heads, chans = X.shape
    return X.new_empty((b, length, heads, chans), dtype=x0.dtype), torch.empty_like(x0), _states(x0, length, save)


def _setup(ctx, inputs, output):
    z, X, X2, Bm, Cm, x0, tmap, save = inputs
    ctx.mapped, ctx.gated, ctx.saved = tmap is not None, X2 is not None, save
    ctx.save_for_backward(z, X, Bm, Cm, x0, output[2], *([X2] if ctx.gated else []),
                          *([tmap] if ctx.mapped else []))


@torch.library.custom_op("ssmc::ssd_scan_backward", mutates_args=())
def ssd_scan_backward(z: torch.Tensor, X: torch.Tensor, X2: torch.Tensor | None, Bm: torch.Tensor,
                      Cm: torch.Tensor, x0: torch.Tensor, states: torch.Tensor, tmap: torch.Tensor | None,
                      gy: torch.Tensor, gxf: torch.Tensor) -> list[torch.Tensor]:
    """The gradients of ssd_scan's z, X, X2 (an empty tensor without X2), Bm, Cm and x0
    from those of y and the leaving state (an op of its own, so that torch.compile can
    trace a backward through it)."""
    b, length, heads, chans = X.shape
    n = Bm.shape[-1]
    gy, gxf = gy.contiguous(), gxf.contiguous()
    gated = X2 is not None
    x2 = X2 if gated else z
    # Gradients accumulate in the state's dtype (atomic adds), handed back in the inputs'.
    dz, dX, dX2, dB, dC = [torch.zeros(t.shape, dtype=x0.dtype, device=t.device) for t in (z, X, x2, Bm, Cm)]
    dx0 = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    if length == 0:
        dx0.copy_(gxf)
    else:
        block_p = _block_p(chans, n, backward=True)
        mapped = tmap is not None
        _ssd_bwd[(b, heads, -(-chans // block_p))](
            z, X, x2, Bm, Cm, states, tmap if mapped else x0, gy, gxf, dz, dX, dX2, dB, dC, dx0,
            length, heads, chans, n, *_strides(z, X, x2, Bm, Cm),
            BLOCK_T=BLOCK_T, BLOCK_P=block_p, BLOCK_N=_pow2(n), PREC=_precision(x0.dtype), MAP=mapped,
            HAS_X2=gated, num_warps=_warps(block_p, _pow2(n)), num_stages=_stages(True))
    return [dz.to(z.dtype), dX.to(X.dtype), dX2.to(x2.dtype) if gated else dX2.new_empty((0,)),
            dB.to(Bm.dtype), dC.to(Cm.dtype), dx0]


@ssd_scan_backward.register_fake
def _ssd_scan_backward_fake(z, X, X2, Bm, Cm, x0, states, tmap, gy, gxf):
    return [t.new_empty(t.shape) for t in (z, X)] + [X2.new_empty(X2.shape) if X2 is not None
                                                     else z.new_empty((0,))] \
        + [t.new_empty(t.shape) for t in (Bm, Cm, x0)]


def _backward(ctx, gy, gxf, _gstates):
    z, X, Bm, Cm, x0, states, *rest = ctx.saved_tensors
    X2 = rest.pop(0) if ctx.gated else None
    tmap = rest.pop(0) if ctx.mapped else None
    if not ctx.saved:
        raise RuntimeError("ssmc: ssd_scan was run without save=True; its backward needs the chunk states")
    gy = torch.zeros(X.shape, dtype=x0.dtype, device=X.device) if gy is None else gy
    gxf = torch.zeros_like(x0) if gxf is None else gxf
    dz, dX, dX2, dB, dC, dx0 = ssd_scan_backward(z, X, X2, Bm, Cm, x0, states, tmap, gy, gxf)
    return dz, dX, (dX2 if ctx.gated else None), dB, dC, dx0, None, None


ssd_scan.register_autograd(_backward, setup_context=_setup)


class Factors:
    """The factors of a product, not multiplied yet: [(tensor or number, dims)]. The SSD
    kernel forms X = X1 * X2 itself (Mamba-2's dt * u) instead of reading a product that
    torch wrote."""

    def __init__(self, factors):
        self.factors = list(factors)

    def product(self):
        return ops.product(self.factors)[0]

    def __neg__(self):
        # A negated input term (`recurrence x = A x - dt * u`): the smallest factor (dt rather
        # than u) is negated, so the kernel still forms the product itself from two factors.
        if not self.factors:
            return Factors([(-1, ())])
        fs = list(self.factors)
        i = min(range(len(fs)), key=lambda k: fs[k][0].numel() if torch.is_tensor(fs[k][0]) else 1)
        fs[i] = (-fs[i][0], fs[i][1])
        return Factors(fs)


def factors(items):
    """(Factors, dims over their union): what `torch_ops.product` returns, unmultiplied."""
    return Factors(items), tuple(dict.fromkeys(d for _, ds in items for d in ds))


def fits(zd, xd, bd, cd, sd, yd) -> bool:
    """Whether the named layouts fit the kernel: y over the state's dims but N, every
    factor over state dims, X without N."""
    n = [d for d in sd if d not in yd]
    return (len(n) == 1 and set(yd) == set(sd) - set(n) and set(zd) | set(bd) | set(cd) <= set(sd)
            and set(xd) <= set(yd) and n[0] not in zd)


def _for_kernel(t, x0):
    """A factor as the kernel reads it: half precision as stored (widened on load) under a
    float32 state, otherwise promoted to the state's dtype."""
    if t.dtype in (torch.float16, torch.bfloat16) and x0.dtype == torch.float32:
        return t
    return t.to(torch.promote_types(t.dtype, x0.dtype))


def _split(X: Factors, xd, zd, bd, cd, sd, yd):
    """(X1, X2, X2's dims): two tensor factors of which X2 has only head dims (it is formed
    in the kernel); otherwise the product, made in torch, and no X2."""
    fs = X.factors
    n = [d for d in sd if d not in yd]
    heads = {d for d in sd if d not in n and (d in zd or d in bd or d in cd)}
    if len(fs) == 2 and all(torch.is_tensor(v) for v, _ in fs):
        for (v1, d1), (v2, d2) in (fs, fs[::-1]):
            if set(d2) <= heads and tuple(d1) == tuple(xd) and v2.dim() > len(d2):
                return v1, v2, tuple(d2)
    return X.product(), None, ()


def ssd(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd, block: int = BLOCK_T, tmap=None):
    """`torch_ops.ssd_chunk`'s contract (named dims in, named dims out) on the Triton kernel.

    N, the state's reduced dim, is the one not in `yd`; the heads are the other state dims
    that z, B or C depend on; the channels the rest. Factors reach the kernel's layouts
    as views (a broadcast axis gets stride 0); only several head or channel dims are
    flattened by a copy. Layouts the kernel does not fit, and complex values, run
    `torch_ops.ssd_chunk`. With `tmap`, step t reads and writes token tmap[t]."""
    if isinstance(Bf, Factors):
        Bf = Bf.product()
    X2, x2d = None, ()
    if isinstance(X, Factors):
        X, X2, x2d = _split(X, xd, zd, bd, cd, sd, yd)
    tensors = [t if torch.is_tensor(t) else torch.as_tensor(t, device=x0.device) for t in (z, X, Bf, Cf, x0)]
    if not fits(zd, xd, bd, cd, sd, yd) or any([t.is_complex() for t in tensors]) or (
            X2 is not None and X2.is_complex()):
        if X2 is not None:
            X = ops.product([(X, xd), (X2, x2d)])[0]
        if tmap is None:
            return ops.ssd_chunk(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd, block)
        perm = tmap.long()
        z, X, Bf, Cf = (t.index_select(1, perm) if torch.is_tensor(t) and t.dim() > len(ds) else t
                        for t, ds in ((z, zd), (X, xd), (Bf, bd), (Cf, cd)))
        y, xf = ops.ssd_chunk(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd, block)
        return y.index_select(1, torch.argsort(perm)), xf
    b = x0.shape[0]
    (n_dim,) = [d for d in sd if d not in yd]
    rows = tuple(d for d in sd if d != n_dim)
    heads = tuple(d for d in rows if d in zd or d in bd or d in cd)
    chans = tuple(d for d in rows if d not in heads)
    sizes = dict(zip(sd, x0.shape[1:]))
    T = max([t.shape[1] for t, ds in zip(tensors[:4], (zd, xd, bd, cd)) if t.dim() > len(ds)])
    # The kernel computes in the state's dtype; factors stored in half precision stay so
    # (it widens them on load).
    z, X, Bf, Cf = [_for_kernel(t, x0) for t in tensors[:4]]
    X2 = None if X2 is None else _for_kernel(X2, x0)
    nh = math.prod([sizes[d] for d in heads])

    def canon(t, ds, rest, keep_rest: bool = True):
        """t [b, T, *ds] (or [*ds], static) as [b, T, heads flat (, rest flat)]."""
        if t.dim() == len(ds):
            t = t.reshape((1, 1) + t.shape)
        axes = heads + rest
        t = ops.align(t, tuple(ds), axes).expand((b, T) + tuple(sizes[d] for d in axes))
        return t.reshape((b, T, nh) + ((math.prod([sizes[d] for d in rest]),) if keep_rest else ()))

    zc = canon(z, zd, (), keep_rest=False)                # [b, T, H]
    Xc = canon(X, xd, chans)                              # [b, T, H, P]
    X2c = None if X2 is None else canon(X2, x2d, (), keep_rest=False)  # [b, T, H]
    Bc = canon(Bf, bd, (n_dim,))                          # [b, T, H, N]
    Cc = canon(Cf, cd, (n_dim,))                          # [b, T, H, N]
    order = heads + chans + (n_dim,)
    xs = ops.align(x0, tuple(sd), order).reshape(b, nh, Xc.shape[-1], sizes[n_dim])
    save = torch.is_grad_enabled() and any([t.requires_grad for t in (zc, Xc, Bc, Cc, xs)]
                                            + ([X2c.requires_grad] if X2c is not None else []))
    y, xf, _ = ssd_scan(zc, Xc, X2c, Bc, Cc, xs, tmap, save)
    y = ops.align(y.reshape((b, T) + tuple(sizes[d] for d in heads + chans)), heads + chans, tuple(yd))
    xf = ops.align(xf.reshape((b,) + tuple(sizes[d] for d in order)), order, tuple(sd))
    return y, xf
