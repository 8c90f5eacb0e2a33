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

One program owns a batch element, a "head" (the state dims that z, B or C depend on,
flattened) and a block of "channels" (the state dims only X depends on); every input
is read once, no per-token state is written. Inputs are addressed through strides,
so factors broadcast over heads (Mamba-2's B and C, shared by all heads) are never
copied. Every exponent is <= 0 where the decays are <= 1.

Gradients: `ssmc::ssd_scan` is a torch.library op whose backward recomputes through
the PyTorch SSD form (`torch_ops.ssd_chunk`, the same algorithm in torch) and
differentiates that: correct, with the PyTorch form's memory, not a Triton kernel.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import triton_autotune as autotune
from . import torch_ops as ops

#: tokens per chunk: the chunk-local matmuls are BLOCK_T x BLOCK_T
BLOCK_T = 64


@triton.jit
def _ssd_fwd(
    z, X, Bm, Cm,  # log-decays [B, L, H], X [B, L, H, P], B [B, L, H, N], C [B, L, H, N] (any strides)
    x0, y, xf,  # entering state [B, H, P, N], output [B, L, H, P], leaving state [B, H, P, N]
    tmap,  # (MAP) the direction's order: step t reads and writes token tmap[t]
    L, H, P, N,
    szb, szt, szh,
    sxb, sxt, sxh, sxp,
    sbb, sbt, sbh, sbn,
    scb, sct, sch, scn,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    MAP: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    t = tl.arange(0, BLOCK_T)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    mp = p < P
    mn = n < N
    dt = x0.dtype.element_ty
    xoff = ((b * H + h) * P + p[:, None]) * N + n[None, :]
    xm = mp[:, None] & mn[None, :]
    x = tl.load(x0 + xoff, mask=xm, other=0.0).to(dt)  # [BLOCK_P, BLOCK_N]
    causal = t[:, None] >= t[None, :]
    for c in range(tl.cdiv(L, BLOCK_T)):
        tt = c * BLOCK_T + t
        mt = tt < L
        if MAP:  # a scan order by an index map over time: no reordered copies
            tt = tl.load(tmap + tt, mask=mt, other=0)
        # Padding tokens: decay 1 (z = 0), no input, no output.
        zc = tl.load(z + b * szb + tt * szt + h * szh, mask=mt, other=0.0).to(dt)  # [T]
        Lc = tl.cumsum(zc, axis=0)
        Xc = tl.load(X + b * sxb + tt[:, None] * sxt + h * sxh + p[None, :] * sxp,
                     mask=mt[:, None] & mp[None, :], other=0.0).to(dt)  # [T, BLOCK_P]
        Bc = tl.load(Bm + b * sbb + tt[:, None] * sbt + h * sbh + n[None, :] * sbn,
                     mask=mt[:, None] & mn[None, :], other=0.0).to(dt)  # [T, BLOCK_N]
        Cc = tl.load(Cm + b * scb + tt[:, None] * sct + h * sch + n[None, :] * scn,
                     mask=mt[:, None] & mn[None, :], other=0.0).to(dt)  # [T, BLOCK_N]
        if IEEE:
            CB = tl.dot(Cc, tl.trans(Bc), input_precision="ieee")  # [T, T]
        else:
            CB = tl.dot(Cc, tl.trans(Bc))
        # exp(Lc_t - Lc_s) on and below the diagonal; exp of a large negative number above.
        decay = tl.exp(tl.where(causal, Lc[:, None] - Lc[None, :], -1e30))
        M = (CB * decay).to(dt)
        if IEEE:
            yc = tl.dot(M, Xc, input_precision="ieee") \
                + tl.exp(Lc)[:, None] * tl.dot(Cc, tl.trans(x), input_precision="ieee")
        else:
            yc = tl.dot(M, Xc) + tl.exp(Lc)[:, None] * tl.dot(Cc, tl.trans(x))  # [T, BLOCK_P]
        tl.store(y + ((b * L + tt[:, None]) * H + h) * P + p[None, :], yc, mask=mt[:, None] & mp[None, :])
        last = tl.sum(zc, axis=0)
        w = tl.exp(last - Lc)  # [T]
        Xw = (Xc * w[:, None]).to(dt)
        if IEEE:
            x = tl.exp(last) * x + tl.dot(tl.trans(Xw), Bc, input_precision="ieee")
        else:
            x = tl.exp(last) * x + tl.dot(tl.trans(Xw), Bc)  # [BLOCK_P, BLOCK_N]
    tl.store(xf + xoff, x, mask=xm)


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << max(0, (int(n) - 1).bit_length()))


@torch.library.custom_op("ssmc::ssd_scan", mutates_args=())
def ssd_scan(z: torch.Tensor, X: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
             x0: torch.Tensor, tmap: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD kernel on canonical layouts: z [B, L, H], X [B, L, H, P], Bm and Cm
    [B, L, H, N] (broadcast axes may have stride 0), x0 [B, H, P, N], all one real dtype.
    Returns y [B, L, H, P] and the leaving state [B, H, P, N]. With `tmap` (int32 [L]),
    step t of the recurrence reads and writes token tmap[t]."""
    b, length, heads, chans = X.shape
    n = Bm.shape[-1]
    x0 = x0.contiguous()
    y = X.new_empty((b, length, heads, chans))
    xf = torch.empty_like(x0)
    if length == 0:
        xf.copy_(x0)
        return y, xf
    block_n = _pow2(n)
    # Registers: the state tile [BLOCK_P, BLOCK_N] and the chunk's [T, T] and [T, BLOCK_P] tiles.
    largest = max(16, min(_pow2(chans), 8192 // block_n, 64))
    # Exact products for float32 / float64 (TF32 would cost ~1e-3); bf16 / fp16 inputs compute in f32 anyway.
    ieee = x0.dtype in (torch.float32, torch.float64)
    args = [z, X, Bm, Cm, x0, y, xf]
    mapped = tmap is not None

    def run(block_p: int) -> None:
        block_p = max(16, block_p)
        _ssd_fwd[(b, heads, -(-chans // block_p))](
            z, X, Bm, Cm, x0, y, xf, tmap if mapped else x0, length, heads, chans, n,
            *z.stride(), *X.stride(), *Bm.stride(), *Cm.stride(),
            BLOCK_T=BLOCK_T, BLOCK_P=block_p, BLOCK_N=block_n, IEEE=ieee, MAP=mapped)

    block_p = autotune.choose(_ssd_fwd, (b, heads, chans, n, length), args, largest, run)
    run(block_p)
    return y, xf


@ssd_scan.register_fake
def _ssd_scan_fake(z, X, Bm, Cm, x0, tmap):
    b, length, heads, chans = X.shape
    return X.new_empty((b, length, heads, chans)), torch.empty_like(x0)


def _setup(ctx, inputs, output):
    ctx.mapped = inputs[-1] is not None
    ctx.save_for_backward(*inputs[:5], *inputs[5:] if ctx.mapped else ())


def _backward(ctx, gy, gxf):
    z, X, Bm, Cm, x0, *tmap = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (z, X, Bm, Cm, x0)]
        zl, Xl, Bl, Cl, xl = leaves
        if tmap:
            # The direction's order, by copies here (gradients are rarer than forwards).
            perm = tmap[0].long()
            zl, Xl, Bl, Cl = (t.index_select(1, perm) for t in (zl, Xl, Bl, Cl))
        y, xf = ops.ssd_chunk(zl, ("H",), Xl, ("H", "P"), Bl, ("H", "N"), Cl, ("H", "N"), xl,
                              ("H", "P", "N"), ("H", "P"), BLOCK_T)
        if tmap:
            y = y.index_select(1, torch.argsort(perm))
        outs, grads = [], []
        for o, g in ((y, gy), (xf, gxf)):
            if g is not None:
                outs.append(o)
                grads.append(g)
        got = torch.autograd.grad(outs, leaves, grads, allow_unused=True)
    return (*(torch.zeros_like(t) if g is None else g for t, g in zip((z, X, Bm, Cm, x0), got)), None)


ssd_scan.register_autograd(_backward, setup_context=_setup)


def fits(zd, xd, bd, cd, sd, yd) -> bool:
    """Whether the named layouts fit the kernel: y over the state's dims but N, every
    factor over state dims, X without N."""
    n = [d for d in sd if d not in yd]
    return (len(n) == 1 and set(yd) == set(sd) - set(n) and set(zd) | set(bd) | set(cd) <= set(sd)
            and set(xd) <= set(yd) and n[0] not in zd)


def ssd(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd, block: int = BLOCK_T, tmap=None):
    """`torch_ops.ssd_chunk`'s contract (named dims in, named dims out) on the Triton kernel.

    N, the state's reduced dim, is the one not in `yd`; the heads are the other state dims
    that z, B or C depend on; the channels the rest. Factors reach the kernel's layouts
    as views (a broadcast axis gets stride 0); only several head or channel dims are
    flattened by a copy. Layouts the kernel does not fit, and complex values, run
    `torch_ops.ssd_chunk`. With `tmap`, step t reads and writes token tmap[t]."""
    tensors = [t if torch.is_tensor(t) else torch.as_tensor(t, device=x0.device) for t in (z, X, Bf, Cf, x0)]
    if not fits(zd, xd, bd, cd, sd, yd) or any(t.is_complex() for t in tensors):
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
    T = max(t.shape[1] for t, ds in zip(tensors[:4], (zd, xd, bd, cd)) if t.dim() > len(ds))
    z, X, Bf, Cf, x0 = ops._common(*tensors)
    nh = math.prod(sizes[d] for d in heads)

    def canon(t, ds, rest, keep_rest: bool = True):
        """t [b, T, *ds] (or [*ds], static) as [b, T, heads flat (, rest flat)]."""
        if t.dim() == len(ds):
            t = t.reshape((1, 1) + t.shape)
        axes = heads + rest
        t = ops.align(t, tuple(ds), axes).expand((b, T) + tuple(sizes[d] for d in axes))
        return t.reshape((b, T, nh) + ((math.prod(sizes[d] for d in rest),) if keep_rest else ()))

    zc = canon(z, zd, (), keep_rest=False)                # [b, T, H]
    Xc = canon(X, xd, chans)                              # [b, T, H, P]
    Bc = canon(Bf, bd, (n_dim,))                          # [b, T, H, N]
    Cc = canon(Cf, cd, (n_dim,))                          # [b, T, H, N]
    order = heads + chans + (n_dim,)
    xs = ops.align(x0, tuple(sd), order).reshape(b, nh, Xc.shape[-1], sizes[n_dim])
    y, xf = ssd_scan(zc, Xc, Bc, Cc, xs, tmap)
    y = ops.align(y.reshape((b, T) + tuple(sizes[d] for d in heads + chans)), heads + chans, tuple(yd))
    xf = ops.align(xf.reshape((b,) + tuple(sizes[d] for d in order)), order, tuple(sd))
    return y, xf
