"""The examples that look back one token (`prev`), against the papers' equations.

`examples/mamba3.ssm` (the exponential-trapezoidal rule reads B_{t-1} u_{t-1}) and
`examples/rwkv6.ssm` (the token shift reads x_{t-1}, the bonus reads S_{t-1}) on the
NumPy reference against the plain loops of ``papers.py`` at 1e-10 in float64:
odd lengths, batches, an initial state, reverse scans, chaining through the returned
state (which carries the shifted values' tails), step() and cu_seqlens. The torch
backend (chunks of 3 tokens) and Triton's interpreter against the reference, forward
and backward; RWKV-6 also against fla's reference implementation when it is installed.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ssmc

from . import papers

ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-10

CASES = {
    # name: (file, class, oracle, dims, input dims, state dims, complex state)
    "mamba3": ("mamba3.ssm", "Mamba3", papers.mamba3, dict(Hd=2, P=3, N=4),
               lambda d: (d["Hd"], d["P"]), lambda d: (d["Hd"], d["P"], d["N"]), True),
    "rwkv6": ("rwkv6.ssm", "RWKV6", papers.rwkv6, dict(H=2, K=3, R=2),
              lambda d: (d["H"] * d["K"],), lambda d: (d["H"], d["K"], d["K"]), False),
}


def _text(name, order="causal"):
    text = (ROOT / "examples" / CASES[name][0]).read_text()
    return text if order == "causal" else text.replace("scan       causal", f"scan       {order}")


def _layer(name, backend="numpy", order="causal", **kw):
    _, cls, _, dims, *_ = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.loads(_text(name, order), backend=backend, filename=CASES[name][0])
    return getattr(mod, cls)(seed=1, dtype=torch.float64, **dims, **kw)


def _params(layer):
    return {k: (v.detach().cdouble() if v.is_complex() else v.detach().double()).numpy()
            for k, v in layer.state_dict().items()}


def _input(name, batch, length, seed=0):
    dims = CASES[name][3]
    return np.random.default_rng(seed).standard_normal((batch, length) + CASES[name][4](
        {**dims, "K": dims.get("K", 0)}))


def _state(name, batch, seed=1):
    c = CASES[name]
    shape = (batch,) + c[5](c[3])
    rng = np.random.default_rng(seed)
    x = 0.5 * rng.standard_normal(shape)
    return x + 0.5j * rng.standard_normal(shape) if c[6] else x


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _np(t):
    return t.detach().resolve_conj().numpy()


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("batch,length", [(1, 1), (2, 7), (3, 13)])
def test_reference_matches_the_paper(name, batch, length):
    layer = _layer(name)
    P = _params(layer)
    u = _input(name, batch, length)
    y, state = layer(torch.from_numpy(u), return_state=True)
    y_ref, x_ref = CASES[name][2](P, u)
    assert rel(_np(y), y_ref) <= RTOL
    assert rel(_np(state[0]), x_ref) <= RTOL
    # the state is (x, tails of the shifted values): the last token of each
    assert all(t.shape[1] == 1 for t in state[1:])


@pytest.mark.parametrize("name", CASES)
def test_initial_state_and_reverse(name):
    u = _input(name, 2, 9, seed=3)
    x0 = _state(name, 2)
    for order in ("causal", "reverse"):
        layer = _layer(name, order=order)
        P = _params(layer)
        tails = layer.init_state(2)[1:]
        y, xf = layer(torch.from_numpy(u), initial_state=(torch.from_numpy(x0), *tails), return_state=True)
        y_ref, x_ref = CASES[name][2](P, u, x0, reverse=(order == "reverse"))
        assert rel(_np(y), y_ref) <= RTOL, order
        assert rel(_np(xf[0]), x_ref) <= RTOL, order


@pytest.mark.parametrize("name", CASES)
def test_chaining_step_and_packing(name):
    layer = _layer(name)
    P = _params(layer)
    u = torch.from_numpy(_input(name, 2, 11, seed=5))
    y_ref, _ = CASES[name][2](P, u.numpy())
    # two calls, the second from the first's returned state (x and the tails)
    y1, s1 = layer(u[:, :4], return_state=True)
    y2 = layer(u[:, 4:], initial_state=s1)
    assert rel(_np(torch.cat([y1, y2], 1)), y_ref) <= RTOL
    # token by token
    st = layer.init_state(2)
    ys = []
    for t in range(u.shape[1]):
        yt, st = layer.step(u[:, t], st)
        ys.append(yt)
    assert rel(_np(torch.stack(ys, 1)), y_ref) <= RTOL
    # packed sequences: the shift restarts at each sequence
    a, b = u[0:1, :11], u[1:2, :6]
    y = layer(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 11, 17]))
    want = np.concatenate([CASES[name][2](P, a.numpy())[0], CASES[name][2](P, b.numpy())[0]], axis=1)
    assert rel(_np(y), want) <= RTOL


@pytest.mark.parametrize("name", CASES)
def test_torch_chunks_match_the_reference(name):
    ref = _layer(name)
    tor = _layer(name, "torch")
    tor.chunk_size = 3
    tor.load_state_dict(ref.state_dict())
    u = torch.from_numpy(_input(name, 2, 11, seed=7))
    y_ref, s_ref = ref(u, return_state=True)
    y, s = tor(u, return_state=True)
    assert rel(_np(y), _np(y_ref)) <= 1e-12
    assert all(rel(_np(a), _np(b)) <= 1e-12 for a, b in zip(s, s_ref))
    y1, s1 = tor(u[:, :5], return_state=True)
    assert rel(_np(torch.cat([y1, tor(u[:, 5:], initial_state=s1)], 1)), _np(y_ref)) <= 1e-12


@pytest.mark.parametrize("name", CASES)
def test_torch_gradcheck(name):
    tor = _layer(name, "torch")
    tor.chunk_size = 2
    names = [n for n, _ in tor.named_parameters()]
    u = torch.from_numpy(_input(name, 1, 5, seed=9)).requires_grad_(True)
    ps = tuple(p.detach().clone().requires_grad_(True) for _, p in tor.named_parameters())

    def fn(u, *ps):
        return torch.func.functional_call(tor, dict(zip(names, ps)), (u,))

    assert torch.autograd.gradcheck(fn, (u,) + ps, fast_mode=True, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_triton_interpreter(name, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    ref = _layer(name, "torch")
    tri = _layer(name, "triton")
    tri.load_state_dict(ref.state_dict())
    u = torch.from_numpy(_input(name, 2, 5, seed=11))
    y_ref, s_ref = ref(u, return_state=True)
    with torch.no_grad():
        y, s = tri(u, return_state=True)
    assert rel(_np(y), _np(y_ref)) <= 1e-10
    assert all(rel(_np(a), _np(b)) <= 1e-10 for a, b in zip(s, s_ref))
    # gradients (the generated backward kernel) against torch's
    w = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = []
    for layer in (tri, ref):
        layer.zero_grad(set_to_none=True)
        x = u.clone().requires_grad_(True)
        (layer(x) * w).sum().backward()
        grads.append([x.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        assert rel(_np(a), _np(b)) <= 1e-9


def test_rwkv6_against_fla():
    """fla's reference recurrence (float32 inside) on the r, k, v, w the spec computes."""
    naive = pytest.importorskip("fla.ops.rwkv6.recurrent_naive").naive_recurrent_rwkv6
    layer = _layer("rwkv6")
    P = _params(layer)
    x = _input("rwkv6", 2, 9, seed=13)
    y = _np(layer(torch.from_numpy(x)))
    # r, k, v and the log-decay from the paper's token shift (papers.rwkv6's first half)
    H, K = P["w0"].shape
    Bsz, L, C = x.shape
    xx = np.concatenate([np.zeros((Bsz, 1, C)), x[:, :-1]], axis=1) - x

    def lin(name, z):
        return z @ P[name].T

    def lora(name, z):
        return lin(name + "_proj", np.tanh(lin(name + "_proj2", z)))

    xxx = x + xx * P["mu_x"]
    br = {c: x + xx * (P["mu_" + c] + lora("x" + c, xxx)) for c in "wkvr"}
    r, k, v = (lin(n + "_proj", br[n]).reshape(Bsz, L, H, K) for n in "rkv")
    logw = -np.exp(P["w0"] + lora("w", br["w"]).reshape(Bsz, L, H, K))

    def heads(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1, 3)))

    o, _ = naive(heads(r), heads(k), heads(v), heads(logw), torch.from_numpy(P["u"]), scale=1.0)
    assert rel(y, o.double().numpy().transpose(0, 2, 1, 3)) <= 1e-5
