"""The PyTorch backend against the NumPy reference, and its gradients.

Every example x dtype agrees with the float64 reference (float64 1e-10, float32 1e-4,
bfloat16 3e-2, relative to the output's size); gradcheck passes in float64 for every
example on small shapes, through the parameters, the input and `initial_state`;
`step()` and chaining agree with `forward()`.
"""
from __future__ import annotations

import re

import warnings

import pytest
import torch

import ssmc

from ..conftest import EXAMPLES

TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def rel(a, b) -> float:
    a, b = a.detach().to(torch.complex128 if a.is_complex() else torch.float64), b.detach().to(a.dtype if a.is_complex() else torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def small_dims(cls) -> dict:
    """Every dim small (and cross2d's rows x cols small), so gradcheck stays cheap."""
    dims = {d: 2 for d, _ in cls.DIMS}
    for name, kind, info in cls.PARAMS:
        if kind == "conv_weight" and isinstance(info["K"], str):
            dims[info["K"]] = 3
    return dims


def inputs(cls, layer, batch: int, length: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = layer.dims
    if cls.SCAN["order"] == "cross2d":
        length = d[cls.SCAN["rows"]] * d[cls.SCAN["cols"]]
    out = {}
    for i, (name, dims) in enumerate(cls.INPUTS):
        shape = (batch, length) + tuple(d[x] for x in dims)
        t = torch.randn(shape, generator=g, dtype=torch.float64)
        # Extra per-token scalars are time steps: positive.
        out[name] = (t.abs() + 0.5 if i and not dims else t).to(dtype)
    return out


def pair(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ssmc.load(path, backend="numpy")
        tm = ssmc.load(path, backend="torch")
    return ref, tm


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_matches_reference(path, dtype):
    ref, tm = pair(path)
    for name in ref.__all__:
        R = getattr(ref, name)
        T = getattr(tm, name)
        dims = small_dims(R) | {d: 3 for d, _ in R.DIMS if d not in ("K",)}
        r = R(seed=1, **dims)
        t = T(seed=1, chunk_size=4, **dims)
        ins = inputs(R, r, batch=2, length=11, dtype=dtype)
        first, *rest = R.INPUTS
        y_t = t(ins[first[0]], **{n: ins[n] for n, _ in rest})
        assert y_t.dtype == dtype
        y_r = r(ins[first[0]].double(), **{n: ins[n].double() for n, _ in rest})
        assert rel(y_t, y_r) <= TOL[dtype], (name, rel(y_t, y_r))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_gradcheck(path):
    _, tm = pair(path)
    for name in tm.__all__:
        T = getattr(tm, name)
        layer = T(seed=0, dtype=torch.float64, chunk_size=2, **small_dims(T))
        ins = inputs(T, layer, batch=2, length=5, dtype=torch.float64)
        first, *rest = T.INPUTS
        names = [n for n, p in layer.named_parameters()]
        params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
        u = ins[first[0]].clone().requires_grad_()
        causal = T.SCAN["order"] in ("causal", "reverse", "global")
        x0 = None
        if causal:
            st = layer.init_state(2, dtype=torch.float64)
            st = st if isinstance(st, tuple) else (st,)
            x0 = tuple((torch.randn_like(s) * 0.5).requires_grad_() for s in st)

        def f(u, *args):
            ps = dict(zip(names, args[: len(names)]))
            state = None
            if causal:
                st = args[len(names):]
                state = st if len(st) > 1 else st[0]
            out = torch.func.functional_call(layer, ps, (u,), {**{n: ins[n] for n, _ in rest},
                                                               "initial_state": state})
            return out.real if out.is_complex() else out

        assert torch.autograd.gradcheck(f, (u, *params, *(x0 or ())), eps=1e-6, atol=1e-5, rtol=1e-4), name


def _causal(path) -> bool:
    """Whether an example scans causally (step() and chaining exist only then)."""
    return re.search(r"^\s*scan\s+causal\b", path.read_text(), re.M) is not None


@pytest.mark.parametrize("path", [p for p in EXAMPLES if _causal(p)], ids=lambda p: p.stem)
def test_step_and_chaining_match_forward(path):
    _, tm = pair(path)
    for name in tm.__all__:
        T = getattr(tm, name)
        layer = T(seed=2, dtype=torch.float64, chunk_size=3, **small_dims(T))
        ins = inputs(T, layer, batch=3, length=7, dtype=torch.float64)
        first, *rest = T.INPUTS
        u = ins[first[0]]
        kw = {n: ins[n] for n, _ in rest}
        y, last = layer(u, return_state=True, **kw)
        y1, s1 = layer(u[:, :4], return_state=True, **{k: v[:, :4] for k, v in kw.items()})
        y2, s2 = layer(u[:, 4:], initial_state=s1, return_state=True, **{k: v[:, 4:] for k, v in kw.items()})
        assert rel(torch.cat([y1, y2], 1), y) < 1e-12
        st = layer.init_state(3, dtype=torch.float64)
        ys = []
        for i in range(u.shape[1]):
            yt, st = layer.step(u[:, i], st, **{k: v[:, i] for k, v in kw.items()})
            ys.append(yt)
        assert rel(torch.stack(ys, 1), y) < 1e-12
        # Several new tokens at once: step() on a block of 3, then one by one.
        st2 = layer.init_state(3, dtype=torch.float64)
        y_block, st2 = layer.step(u[:, :3], st2, **{k: v[:, :3] for k, v in kw.items()})
        y_next, st2 = layer.step(u[:, 3], st2, **{k: v[:, 3] for k, v in kw.items()})
        assert rel(torch.cat([y_block, y_next[:, None]], 1), y[:, :4]) < 1e-12
        last = last if isinstance(last, tuple) else (last,)
        st = st if isinstance(st, tuple) else (st,)
        for a, b in zip(st, last):
            assert rel(a, b) < 1e-12


def test_auto_says_which_backend_once():
    with pytest.warns(ssmc.BackendNotice, match="picked 'torch'"):
        ssmc.api._NOTICED.clear()
        ssmc.load(EXAMPLES[0], backend="auto")


def test_unknown_backend_is_an_error():
    with pytest.raises(ssmc.BackendUnavailable, match="unknown backend"):
        ssmc.load(EXAMPLES[0], backend="cuda_magic")


def test_wrong_input_shape_names_expected_shape():
    _, tm = pair(EXAMPLES[0])
    layer = getattr(tm, tm.__all__[0])(seed=0)
    with pytest.raises(ssmc.ShapeError, match=r"must have shape \(batch, length"):
        layer(torch.randn(2, 5, 999))
    with pytest.raises(ssmc.ShapeError, match="float16, bfloat16, float32 or float64"):
        layer(torch.zeros(2, 5, 3, dtype=torch.int64))


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("stem", ["mamba_block", "s4d", "vim_bidirectional", "mamba"])
def test_cu_seqlens_equals_each_sequence_alone(stem, backend):
    path = next(p for p in EXAMPLES if p.stem == stem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.load(path, backend=backend)
    cls = getattr(mod, mod.__all__[0])
    layer = cls(seed=3, dtype=torch.float64, **small_dims(cls))
    lengths = [3, 5, 3, 1]
    seqs = [inputs(cls, layer, 1, n, torch.float64, seed=i) for i, n in enumerate(lengths)]
    first = cls.INPUTS[0][0]
    packed = torch.cat([s[first] for s in seqs], dim=1)
    cu = torch.tensor([0, 3, 8, 11, 12])
    causal = cls.SCAN["order"] == "causal"
    if causal:
        st = layer.init_state(len(lengths), dtype=torch.float64)
        st = tuple(torch.randn_like(s) for s in (st if isinstance(st, tuple) else (st,)))
        x0 = st if len(st) > 1 else st[0]
        y, last = layer(packed, cu_seqlens=cu, initial_state=x0, return_state=True)
    else:
        y = layer(packed, cu_seqlens=cu)
    for i, s in enumerate(seqs):
        if causal:
            row = tuple(p[i: i + 1] for p in st)
            yi, li = layer(s[first], initial_state=row if len(row) > 1 else row[0], return_state=True)
            for a, b in zip(last if isinstance(last, tuple) else (last,), li if isinstance(li, tuple) else (li,)):
                assert rel(a[i: i + 1], b) < 1e-13
        else:
            yi = layer(s[first])
        assert rel(y[:, int(cu[i]): int(cu[i + 1])], yi) < 1e-13


def test_cu_seqlens_rejects_bad_bounds():
    _, tm = pair(EXAMPLES[0])
    layer = getattr(tm, tm.__all__[0])(seed=0, **small_dims(getattr(tm, tm.__all__[0])))
    u = torch.randn(1, 6, 2)
    with pytest.raises(ssmc.ShapeError, match="cu_seqlens must rise"):
        layer(u, cu_seqlens=torch.tensor([0, 4, 3, 6]))
    with pytest.raises(ssmc.ShapeError, match="packed batch"):
        layer(torch.randn(2, 6, 2), cu_seqlens=torch.tensor([0, 6]))


LTI = [p for p in EXAMPLES if p.stem in ("s4d", "s4d_inv", "s4d_real", "dss", "s5", "lru", "lssl", "s4")]


@pytest.mark.parametrize("path", LTI, ids=lambda p: p.stem)
def test_lti_convolution_form(path):
    """The FFT path: agrees with the reference, is differentiable, and its cached kernel
    follows parameter updates."""
    ref, tm = pair(path)
    name = ref.__all__[0]
    R, T = getattr(ref, name), getattr(tm, name)
    assert T.ALGORITHM == "fft_conv"
    dims = {d: 3 for d, _ in R.DIMS}
    r, t = R(seed=4, **dims), T(seed=4, **dims)
    u = inputs(R, r, batch=2, length=67, dtype=torch.float64)[R.INPUTS[0][0]]
    with torch.no_grad():
        assert rel(t(u), r(u)) < 1e-10
        assert rel(t(u.float()), r(u)) < 1e-4
        # The kernel is cached: a parameter update must invalidate it.
        for (_, pt), (_, pr) in zip(t.named_parameters(), r.named_parameters()):
            pt.mul_(0.9)
            pr.mul_(0.9)
        assert rel(t(u), r(u)) < 1e-10
    small = T(seed=5, dtype=torch.float64, **small_dims(T))
    small.fft_min_length = 1
    names = [n for n, _ in small.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in small.parameters()]
    x = inputs(T, small, batch=2, length=6, dtype=torch.float64)[T.INPUTS[0][0]].requires_grad_()

    def f(x, *ps):
        return torch.func.functional_call(small, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)
    # The expert override forces the scan and gives the same answer.
    forced = T(seed=4, algorithm="scan", **dims)
    with torch.no_grad():
        assert rel(forced(u), R(seed=4, **dims)(u)) < 1e-10
