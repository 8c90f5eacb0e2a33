"""The SSD kernel family (Mamba-2 class) of the Triton backend, through the interpreter.

The kernel (chunk-local tl.dot matmuls, the state carried across chunks in registers)
against the PyTorch SSD form and the NumPy reference: lengths across several chunks and
not a multiple of the chunk, N and P not powers of two, P wider than one block, state
dims in an unusual order, factors broadcast over heads, chaining, float64 gradients.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

import ssmc

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from ssmc.runtime import torch_ops as ops  # noqa: E402
from ssmc.runtime import triton_ssd  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _case(dtype, b, T, sizes, zd, xd, bd, cd, sd, yd, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(ds, token=True):
        shape = ((b, T) if token else ()) + tuple(sizes[d] for d in ds)
        return torch.randn(shape, generator=g, dtype=dtype)

    z = -rand(zd).abs() * 0.3
    return (z, zd, rand(xd), xd, rand(bd), bd, rand(cd), cd, torch.randn((b,) + tuple(sizes[d] for d in sd),
                                                                         generator=g, dtype=dtype), sd, yd)


CASES = {
    # Mamba-2: B and C shared by the heads, per-head decay.
    "mamba2": (dict(H=3, P=5, N=7), ("H",), ("H", "P"), ("N",), ("N",), ("H", "P", "N"), ("H", "P")),
    # per-head B and C, the state's dims in another order, y in another order.
    "per_head_bc": (dict(H=2, P=3, N=4), ("H",), ("P", "H"), ("H", "N"), ("N", "H"), ("P", "H", "N"), ("H", "P")),
    # no channel dim (X over the heads only), decay shared by all heads.
    "no_channels": (dict(H=3, N=5), (), ("H",), ("H", "N"), ("N",), ("H", "N"), ("H",)),
    # P wider than one 64-row block, N past 16.
    "wide": (dict(H=1, P=70, N=20), ("H",), ("H", "P"), ("N",), ("N",), ("H", "P", "N"), ("H", "P")),
    # two head dims (flattened by a copy).
    "two_heads": (dict(G=2, H=2, P=3, N=4), ("G", "H"), ("G", "H", "P"), ("G", "N"), ("N",),
                  ("G", "H", "P", "N"), ("G", "H", "P")),
}


@pytest.mark.parametrize("length", [1, 13, 64, 131])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_torch_ssd_form(case, length):
    sizes, *layout = CASES[case]
    args = _case(torch.float64, 2, length, sizes, *layout)
    y, xf = triton_ssd.ssd(*args)
    y2, xf2 = ops.ssd_chunk(*args)
    assert y.shape == y2.shape and xf.shape == xf2.shape
    assert torch.allclose(y, y2, atol=1e-11, rtol=1e-11)
    assert torch.allclose(xf, xf2, atol=1e-11, rtol=1e-11)


def test_kernel_float32_and_static_factor():
    sizes = dict(H=2, P=3, N=5)
    z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd = _case(torch.float32, 2, 67, sizes, ("H",), ("H", "P"), ("N",),
                                                      ("N",), ("H", "P", "N"), ("H", "P"))
    C_static = torch.randn(5)  # a param: no batch or time axes
    y, xf = triton_ssd.ssd(z, zd, X, xd, Bf, bd, C_static, cd, x0, sd, yd)
    y2, xf2 = ops.ssd_chunk(z.double(), zd, X.double(), xd, Bf.double(), bd, C_static.double(), cd, x0.double(),
                            sd, yd)
    assert y.dtype == torch.float32
    assert (y.double() - y2).abs().max() / y2.abs().max() < 1e-5
    assert (xf.double() - xf2).abs().max() / xf2.abs().max() < 1e-5


def test_chaining_two_calls_equals_one():
    sizes, *layout = CASES["mamba2"]
    z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd = _case(torch.float64, 2, 90, sizes, *layout)
    y, xf = triton_ssd.ssd(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd)
    ya, xa = triton_ssd.ssd(z[:, :37], zd, X[:, :37], xd, Bf[:, :37], bd, Cf[:, :37], cd, x0, sd, yd)
    yb, xb = triton_ssd.ssd(z[:, 37:], zd, X[:, 37:], xd, Bf[:, 37:], bd, Cf[:, 37:], cd, xa, sd, yd)
    assert torch.allclose(torch.cat([ya, yb], 1), y, atol=1e-12)
    assert torch.allclose(xb, xf, atol=1e-12)


def test_gradcheck_through_the_op():
    sizes, *layout = CASES["per_head_bc"]
    z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd = _case(torch.float64, 1, 5, sizes, *layout)
    leaves = [t.requires_grad_() for t in (z, X, Bf, Cf, x0)]

    def f(z, X, Bf, Cf, x0):
        return triton_ssd.ssd(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd)

    assert torch.autograd.gradcheck(f, tuple(leaves))


def test_op_registration():
    sizes, *layout = CASES["mamba2"]
    z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd = _case(torch.float32, 2, 9, sizes, *layout)
    Bc = Bf[:, :, None].expand(2, 9, 3, 7)  # broadcast over the heads: stride 0
    Cc = Cf[:, :, None].expand(2, 9, 3, 7)
    result = torch.library.opcheck(torch.ops.ssmc.ssd_scan.default,
                                   (z.requires_grad_(), X.requires_grad_(), None, Bc, Cc, x0.requires_grad_(), None, True))
    assert all(v == "SUCCESS" for v in result.values()), result


def _mamba2(backend, **kw):
    from ..conftest import EXAMPLES
    path = next(p for p in EXAMPLES if p.stem == "mamba2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssmc.load(path, backend=backend, **kw).Mamba2


def test_mamba2_module_runs_the_ssd_kernel(monkeypatch):
    calls = []
    original = triton_ssd.ssd_scan

    def spy(*args):
        calls.append((args[1].shape, args[2] is not None))
        return original(*args)

    monkeypatch.setattr(triton_ssd, "ssd_scan", spy)
    T, R = _mamba2("triton", strict=True), _mamba2("numpy")
    dims = dict(Hd=2, P=3, N=5)
    t, r = T(seed=1, **dims), R(seed=1, **dims)
    u = torch.randn(2, 70, 2, 3)
    x0 = torch.randn(2, 2, 3, 5)
    with torch.no_grad():
        y, xf = t(u, initial_state=x0, return_state=True)
    yr, xr = r(u.double(), initial_state=x0.double(), return_state=True)
    # X = dt * u is formed in the kernel from its two factors.
    assert calls and calls[0] == ((2, 70, 2, 3), True)
    assert (y.double() - yr).abs().max() / yr.abs().max() < 1e-4
    assert (xf.double() - xr).abs().max() / xr.abs().max() < 1e-4


def test_mamba2_module_gradients_match_torch_backend():
    T, M = _mamba2("triton", strict=True), _mamba2("torch")
    dims = dict(Hd=2, P=3, N=5)
    t, m = T(seed=4, **dims), M(seed=4, **dims)
    u = torch.randn(2, 66, 2, 3, requires_grad=True)
    gt = torch.autograd.grad(t(u).square().sum(), [u, *t.parameters()])
    gm = torch.autograd.grad(m(u).square().sum(), [u, *m.parameters()])
    for a, b in zip(gt, gm):
        assert (a - b).abs().max() <= 1e-3 * b.abs().max() + 1e-6


def _grads(fn, args, seed=1):
    """Gradients of a random linear functional of (y, leaving state) w.r.t. z, X, B, C, x0."""
    z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd = args
    leaves = [t.detach().clone().requires_grad_() for t in (z, X, Bf, Cf, x0)]
    y, xf = fn(leaves[0], zd, leaves[1], xd, leaves[2], bd, leaves[3], cd, leaves[4], sd, yd)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() \
        + (xf * torch.randn(xf.shape, generator=g, dtype=xf.dtype)).sum()
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("case", list(CASES))
def test_backward_kernel_matches_torch_ssd_form(case):
    """The backward kernel's gradients (several chunks, the last partial; P = 70 spans two
    channel blocks, whose B, C and z gradients add atomically) against autograd of the
    PyTorch SSD form, in float64."""
    sizes, *layout = CASES[case]
    args = _case(torch.float64, 2, 67, sizes, *layout)
    got = _grads(triton_ssd.ssd, args)
    want = _grads(ops.ssd_chunk, args)
    for name, a, b in zip("z X B C x0".split(), got, want):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9), name


def test_index_map_forward_and_backward():
    """With a time map the kernels read and write token tmap[t] at step t: the same as
    reordering the inputs, running in order and putting the outputs back."""
    sizes, *layout = CASES["mamba2"]
    args = _case(torch.float64, 2, 70, sizes, *layout)
    perm = torch.randperm(70, generator=torch.Generator().manual_seed(3))
    inverse = torch.argsort(perm)

    def mapped(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd):
        return triton_ssd.ssd(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd, tmap=perm.to(torch.int32))

    def copied(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd):
        y, xf = ops.ssd_chunk(z[:, perm], zd, X[:, perm], xd, Bf[:, perm], bd, Cf[:, perm], cd, x0, sd, yd)
        return y[:, inverse], xf

    for a, b in zip(mapped(*args), copied(*args)):
        assert torch.allclose(a, b, atol=1e-11)
    for name, a, b in zip("z X B C x0".split(), _grads(mapped, args), _grads(copied, args)):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9), name


def test_layouts_beyond_the_kernel_run_the_torch_form_with_the_same_time_map():
    """A readout coefficient over a dim outside the state (y over H, P and Q) does not fit
    the kernel: the PyTorch SSD form runs instead, in the direction's order all the same."""
    sizes = dict(H=2, P=3, N=4, Q=2)
    layout = (("H",), ("H", "P"), ("N",), ("Q", "N"), ("H", "P", "N"), ("H", "P", "Q"))
    assert not triton_ssd.fits(*layout)
    z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd = _case(torch.float64, 2, 11, sizes, *layout)
    perm = torch.arange(10, -1, -1)
    y, xf = triton_ssd.ssd(z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd, tmap=perm.to(torch.int32))
    y2, xf2 = ops.ssd_chunk(z[:, perm], zd, X[:, perm], xd, Bf[:, perm], bd, Cf[:, perm], cd, x0, sd, yd)
    assert torch.allclose(y, y2[:, perm], atol=1e-12) and torch.allclose(xf, xf2, atol=1e-12)


def test_half_precision_factors_stay_half():
    """B and C stored in bfloat16 reach the kernel as they are and are widened on load; the
    output is the state's dtype (float32); gradients come back in the factors' dtypes."""
    sizes, *layout = CASES["mamba2"]
    z, zd, X, xd, Bf, bd, Cf, cd, x0, sd, yd = _case(torch.float32, 2, 70, sizes, *layout)
    Bh, Ch = Bf.to(torch.bfloat16).requires_grad_(), Cf.to(torch.bfloat16).requires_grad_()
    y, xf = triton_ssd.ssd(z, zd, X, xd, Bh, bd, Ch, cd, x0, sd, yd)
    want, want_x = ops.ssd_chunk(z.double(), zd, X.double(), xd, Bh.double(), bd, Ch.double(), cd, x0.double(),
                                 sd, yd)
    assert y.dtype == torch.float32
    assert (y.double() - want).abs().max() / want.abs().max() < 1e-5
    gB, gC = torch.autograd.grad(y.square().sum() + xf.square().sum(), [Bh, Ch])
    assert gB.dtype == gC.dtype == torch.bfloat16 and torch.isfinite(gB.float()).all()


@pytest.mark.parametrize("chans", [3, 70])
def test_the_kernel_forms_dt_times_u(chans):
    """X given as its factors dt [H] and u [H, P]: the kernel forms the product itself (no X
    written by torch), forward and backward (dt's gradient sums over the channel blocks),
    the same as the product made first."""
    sizes = dict(H=2, P=chans, N=5)
    z, zd, u, ud, Bf, bd, Cf, cd, x0, sd, yd = _case(torch.float64, 2, 67, sizes, ("H",), ("H", "P"), ("N",),
                                                      ("N",), ("H", "P", "N"), ("H", "P"))
    dt = torch.rand(2, 67, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    leaves = [t.clone().requires_grad_() for t in (z, dt, u, Bf, Cf, x0)]
    calls = []
    original = triton_ssd.ssd_scan

    def spy(*args):
        calls.append(args[2] is not None)
        return original(*args)

    triton_ssd.ssd_scan, saved = spy, triton_ssd.ssd_scan
    try:
        X, xd = triton_ssd.factors([(leaves[1], ("H",)), (leaves[2], ("H", "P"))])
        y, xf = triton_ssd.ssd(leaves[0], zd, X, xd, leaves[3], bd, leaves[4], cd, leaves[5], sd, yd)
    finally:
        triton_ssd.ssd_scan = saved
    assert calls == [True]
    plain = [t.clone().requires_grad_() for t in (z, dt, u, Bf, Cf, x0)]
    y2, xf2 = ops.ssd_chunk(plain[0], zd, plain[1][..., None] * plain[2], ("H", "P"), plain[3], bd, plain[4], cd,
                            plain[5], sd, yd)
    assert torch.allclose(y, y2, atol=1e-11) and torch.allclose(xf, xf2, atol=1e-11)
    g = torch.Generator().manual_seed(9)
    wy, wx = torch.randn(y.shape, generator=g, dtype=y.dtype), torch.randn(xf.shape, generator=g, dtype=y.dtype)
    got = torch.autograd.grad((y * wy).sum() + (xf * wx).sum(), leaves)
    want = torch.autograd.grad((y2 * wy).sum() + (xf2 * wx).sum(), plain)
    for name, a, b in zip("z dt u B C x0".split(), got, want):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9), name
