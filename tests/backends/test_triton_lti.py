"""The LTI kernel family of the Triton backend (`triton_lti.vandermonde`), through the interpreter.

K[k, p, y, u] = Re(sum_s W[p, y, s] a[p, s]^k c[p, s, u]) against a reference written
here from the formula (powers by repeated complex128 multiplication, so 0^0 = 1 without
any polar form), and against `torch_ops.lti_kernel` (the bmm path of the PyTorch
backend): real a with negative and zero entries, complex a with zeros and |a| near 1,
real and complex W and c, sizes that are not multiples of the blocks, several blocks of
k, of (y, u) pairs and of states.
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from ssmc.runtime import torch_ops as ops  # noqa: E402
from ssmc.runtime import triton_lti  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def reference(a, W, c, length):
    """The formula, one k at a time, in complex128."""
    a, W, c = (t.to(torch.complex128) for t in (a, W, c))
    ak = torch.ones_like(a)
    out = []
    for _ in range(length):
        out.append(torch.einsum("pys,ps,psu->pyu", W, ak, c).real)
        ak = ak * a
    return torch.stack(out) if out else torch.zeros((0, *W.shape[:2], c.shape[2]), dtype=torch.float64)


def make_a(kind, P, S, g):
    """a [P, S]: 'real' (mixed signs, zeros, |a| near 1), 'complex' (zeros, |a| near 1, a few
    exactly real negative), 'decay' (real in (0, 1))."""
    if kind == "decay":
        return torch.rand(P, S, generator=g, dtype=torch.float64) * 0.98 + 0.01
    mag = torch.rand(P, S, generator=g, dtype=torch.float64) * 0.9 + 0.05
    flat = mag.view(-1)
    n = flat.numel()
    flat[0::4] = 0.0                                   # |a| = 0
    flat[1::4] = 1.0 - 1e-3 * flat[1::4]               # |a| near 1
    if kind == "real":
        sign = torch.where(torch.rand(P, S, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
        a = mag * sign
        if n > 2:
            a.view(-1)[2] = -0.999                      # a negative entry near -1 for sure
        return a
    theta = (torch.rand(P, S, generator=g, dtype=torch.float64) * 2 - 1) * torch.pi
    if n > 2:
        theta.view(-1)[2] = torch.pi                     # negative real, as complex
    return torch.polar(mag, theta)


def make_wc(P, Y, S, U, w_complex, c_complex, g):
    def rand(*shape, cplx):
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        if cplx:
            t = torch.complex(t, torch.randn(*shape, generator=g, dtype=torch.float64))
        return t
    return rand(P, Y, S, cplx=w_complex), rand(P, S, U, cplx=c_complex)


def check(K, R):
    assert K.dtype == torch.float64
    assert K.shape == R.shape
    scale = R.abs().max().clamp_min(1e-300)
    err = (K - R).abs().max() / scale
    assert err < 1e-10, f"relative error {err:.3e}"


SHAPES = [(3, 2, 5, 1), (1, 1, 37, 3), (2, 3, 4, 2), (2, 1, 7, 1)]             # the last: one (y, u) pair
LENGTHS = [1, 13, 100]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["real", "complex", "decay"])
def test_against_formula(kind, shape, length):
    P, Y, S, U = shape
    seed = 1000 * SHAPES.index(shape) + length + 10**5 * ["real", "complex", "decay"].index(kind)
    g = torch.Generator().manual_seed(seed)
    a = make_a(kind, P, S, g)
    # W and c: complex with complex a (as from complex states), mixed otherwise
    cplx = kind == "complex"
    W, c = make_wc(P, Y, S, U, cplx, cplx or S % 2 == 1, g)
    K = triton_lti.vandermonde(a, W, c, length)
    check(K, reference(a, W, c, length))


@pytest.mark.parametrize("dot", [False, True], ids=["sum", "dot"])
@pytest.mark.parametrize("w_complex,c_complex", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_small_blocks(kind, w_complex, c_complex, dot):
    """Several blocks along every axis, each with a ragged last block, for both contractions."""
    if dot:
        (P, Y, S, U, length), blocks = (2, 3, 37, 6, 37), dict(block_k=16, block_j=16, block_s=16)
    else:
        (P, Y, S, U, length), blocks = (2, 3, 11, 2, 37), dict(block_k=16, block_j=4, block_s=4)
    g = torch.Generator().manual_seed(7)
    a = make_a(kind, P, S, g)
    W, c = make_wc(P, Y, S, U, w_complex, c_complex, g)
    K = triton_lti.vandermonde(a, W, c, length, dot=dot, **blocks)
    check(K, reference(a, W, c, length))


def test_block_sizes():
    assert triton_lti.block_sizes(8192, 64, 1) == (64, 1, 16, False)
    assert triton_lti.block_sizes(8192, 64, 4) == (64, 16, 16, True)
    assert triton_lti.block_sizes(5, 3, 1) == (8, 1, 4, False)
    assert triton_lti.block_sizes(5, 3, 2) == (16, 16, 16, True)
    with pytest.raises(ValueError):
        triton_lti.vandermonde(torch.ones(1, 2), torch.ones(1, 1, 2), torch.ones(1, 2, 1), 4, block_j=4, dot=True)


def test_zero_powers():
    """0^0 = 1 and 0^k = 0 for real and complex zeros; (-1)^k exactly."""
    W = torch.ones(1, 1, 3, dtype=torch.float64)
    c = torch.tensor([[[1.0], [10.0], [100.0]]], dtype=torch.float64)
    a = torch.tensor([[0.0, -1.0, 0.5]], dtype=torch.float64)
    K = triton_lti.vandermonde(a, W, c, 5)[:, 0, 0, 0]
    expect = torch.tensor([111.0, -10.0 + 50.0, 10.0 + 25.0, -10.0 + 12.5, 10.0 + 6.25], dtype=torch.float64)
    assert (K - expect).abs().max() < 1e-12                            # 0.5^k as exp(k log 0.5)
    K = triton_lti.vandermonde(a[:, :2], W[:, :, :2], c[:, :2], 5)[:, 0, 0, 0]
    assert torch.equal(K, torch.tensor([11.0, -10.0, 10.0, -10.0, 10.0], dtype=torch.float64))
    K = triton_lti.vandermonde(a.to(torch.complex128), W, c, 5)[:, 0, 0, 0]
    assert (K - expect).abs().max() < 1e-12


def test_strided_and_broadcast_operands():
    """Non-contiguous, expanded and conjugated operands are read through their strides."""
    g = torch.Generator().manual_seed(3)
    P, Y, S, U, length = 3, 2, 6, 2, 20
    a = make_a("complex", S, P, g).t()                                  # [P, S], transposed
    W = torch.randn(1, Y, S, generator=g, dtype=torch.complex128).expand(P, Y, S)
    c = torch.randn(P, U, S, generator=g, dtype=torch.complex128).transpose(1, 2).conj()
    K = triton_lti.vandermonde(a, W, c, length)
    check(K, reference(a, W, c.resolve_conj(), length))


def test_long_phase():
    """k up to 3000 with |a| = 1: the phase k arg(a) in float64."""
    g = torch.Generator().manual_seed(5)
    theta = torch.rand(1, 4, generator=g, dtype=torch.float64) * 3
    a = torch.polar(torch.ones_like(theta), theta)
    W, c = make_wc(1, 1, 4, 1, True, True, g)
    K = triton_lti.vandermonde(a, W, c, 3000)
    k = torch.arange(3000, dtype=torch.float64)
    R = torch.einsum("ys,ks,su->kyu", W[0], torch.polar(torch.ones(3000, 4, dtype=torch.float64),
                                                       k[:, None] * theta), c[0]).real[:, None]
    check(K, R)


@pytest.mark.parametrize("complex_state", [False, True])
def test_against_lti_kernel(complex_state):
    """The same kernel as the PyTorch backend's `lti_kernel` builds (its bmm path)."""
    g = torch.Generator().manual_seed(11)
    sizes = {"p": 2, "y": 2, "s": 5, "u": 3}
    P, Y, S, U = sizes["p"], sizes["y"], sizes["s"], sizes["u"]
    a = make_a("complex" if complex_state else "real", P, S, g)
    W, c = make_wc(P, Y, S, U, complex_state, complex_state, g)

    def ebar_fn(u):                                                     # [n, 1, p, u] -> [n, 1, p, s]
        return torch.einsum("ntpu,psu->ntps", u.to(c.dtype), c)

    def readout_fn(x, u):                                               # [n, 1, p, s] -> [n, 1, p, y]
        y = torch.einsum("ntps,pys->ntpy", x.to(W.dtype if complex_state else x.dtype), W)
        return y.real if complex_state else y

    length = 29
    Kt = ops.lti_kernel(a, ebar_fn, readout_fn, sizes, ("p", "s"), ("p", "u"), ("p", "y"), ("p",), length,
                        complex_state, torch.float64, torch.device("cpu"))
    K = triton_lti.vandermonde(a, W, c, length)
    check(Kt, reference(a, W, c, length))                              # the harness itself is right
    check(K, Kt)


def test_empty():
    a = torch.rand(2, 3, dtype=torch.float64)
    W = torch.rand(2, 1, 3, dtype=torch.float64)
    c = torch.rand(2, 3, 1, dtype=torch.float64)
    assert triton_lti.vandermonde(a, W, c, 0).shape == (0, 2, 1, 1)
