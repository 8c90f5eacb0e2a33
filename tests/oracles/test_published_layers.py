"""The examples of published layers (RG-LRU, GLA, RetNet, GSS, S7, Mamba-2 with dt_limit)
on every backend.

`test_oracles.py` holds the NumPy reference to the paper oracles at 1e-10. Here:

* the torch backend (float64) and Triton's interpreter (float32, tiny shapes) against the
  NumPy reference, forward, at odd and prime lengths, batch > 1, from a random initial
  state, and chained across a cut;
* their gradients against central differences of the **NumPy reference** (no autograd
  shared with either backend), through the input and every parameter;
* the peers' reference implementations where fla-core has one (its naive recurrent or
  parallel forms, called, never copied), fed with the gates computed here from the
  papers' equations. fla computes in float32, so those comparisons are at 1e-5.
"""
from __future__ import annotations

import functools
import math
import os
import warnings

import numpy as np
import pytest
import torch

import ssmc

from . import papers
from .test_oracles import CASES, example

os.environ.setdefault("TRITON_INTERPRET", "1")

LAYERS = {  # case name in test_oracles -> tiny dims for the backends
    "rglru": dict(H=3),
    "gla": dict(D=3, Hd=2, Dk=3, Dv=2, R=2),
    "retnet": dict(D=3, Hd=2, Dk=2, Dv=3),
    "gss": dict(E=3, H=2, F=3, N=2),
    "s7": dict(H=2, N=3),
    "mamba2_dt_limit": dict(Hd=2, P=2, N=3),
}


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def to_np(v):
    """A NumPy copy (a float64 tensor's .numpy() would share the parameter's memory)."""
    v = v.detach()
    return (v.cdouble() if v.is_complex() else v.double()).numpy().copy()


@functools.lru_cache(maxsize=None)
def _mod(name, backend):
    stem = name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"strict": True} if backend == "triton" else {}
        return ssmc.loads(example(stem), backend=backend, filename=f"{stem}.ssm", **kw)


def _layers(name, backend, dtype=torch.float64, **kw):
    """A NumPy reference layer and a `backend` layer with the same parameters."""
    c = CASES[name]
    ref = getattr(_mod(name, "numpy"), c.cls)(seed=3, dtype=torch.float64, **LAYERS[name])
    other = getattr(_mod(name, backend), c.cls)(seed=3, dtype=dtype, **LAYERS[name], **kw)
    other.load_state_dict(ref.state_dict())
    return ref, other


def _input(name, Bsz, L, seed):
    c = CASES[name]
    return np.random.default_rng(seed).standard_normal((Bsz, L, *c.input_dims(LAYERS[name])))


def _state(name, Bsz, seed):
    c = CASES[name]
    rng = np.random.default_rng(seed)
    shape = (Bsz, *c.state_dims(LAYERS[name]))
    x = rng.standard_normal(shape) * 0.5
    if c.complex_state:
        x = x + 0.5j * rng.standard_normal(shape)
    return x


def _t(a, dtype=torch.float64):
    a = torch.from_numpy(np.ascontiguousarray(a))
    return a.to(torch.complex128 if dtype == torch.float64 else torch.complex64) if a.is_complex() \
        else a.to(dtype)


# ----------------------------------------------------------------------------
# forward: torch and Triton against the NumPy reference
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("Bsz,L", [(3, 1), (3, 13), (2, 17)])
@pytest.mark.parametrize("name", list(LAYERS))
def test_torch_forward_chaining_and_step(name, Bsz, L):
    ref, tm = _layers(name, "torch", chunk_size=4)
    u = _input(name, Bsz, L, seed=L)
    x0 = _state(name, Bsz, seed=L + 1)
    with torch.no_grad():
        y_r, s_r = ref(_t(u), initial_state=_t(x0), return_state=True)
        y_t, s_t = tm(_t(u), initial_state=_t(x0), return_state=True)
        assert rel(to_np(y_t), to_np(y_r)) <= 1e-10
        assert rel(to_np(s_t), to_np(s_r)) <= 1e-10
        for cut in range(1, L, 5):
            y1, s1 = tm(_t(u[:, :cut]), initial_state=_t(x0), return_state=True)
            y2, s2 = tm(_t(u[:, cut:]), initial_state=s1, return_state=True)
            assert rel(np.concatenate([to_np(y1), to_np(y2)], 1), to_np(y_r)) <= 1e-10
            assert rel(to_np(s2), to_np(s_r)) <= 1e-10
        s, ys = _t(x0), []
        for k in range(L):
            y_k, s = tm.step(_t(u[:, k]), s)
            ys.append(to_np(y_k))
        assert rel(np.stack(ys, 1), to_np(y_r)) <= 1e-10
        assert rel(to_np(s), to_np(s_r)) <= 1e-10


@pytest.mark.parametrize("Bsz,L", [(2, 7)])
@pytest.mark.parametrize("name", list(LAYERS))
def test_triton_forward_chaining_and_step(name, Bsz, L):
    pytest.importorskip("triton")
    ref, tr = _layers(name, "triton", dtype=torch.float32)
    assert type(tr).BACKEND == "triton"
    u = _input(name, Bsz, L, seed=L)
    x0 = _state(name, Bsz, seed=L + 1)
    f32 = torch.float32
    with torch.no_grad():
        y_r, s_r = ref(_t(u), initial_state=_t(x0), return_state=True)
        y_t, s_t = tr(_t(u, f32), initial_state=_t(x0, f32), return_state=True)
        assert rel(to_np(y_t), to_np(y_r)) <= 1e-5
        assert rel(to_np(s_t), to_np(s_r)) <= 1e-5
        y1, s1 = tr(_t(u[:, :3], f32), initial_state=_t(x0, f32), return_state=True)
        y2, s2 = tr(_t(u[:, 3:], f32), initial_state=s1, return_state=True)
        assert rel(np.concatenate([to_np(y1), to_np(y2)], 1), to_np(y_r)) <= 1e-5
        y_k, s = tr.step(_t(u[:, 0], f32), _t(x0, f32))
        assert rel(to_np(y_k), to_np(y_r)[:, 0]) <= 1e-5


# ----------------------------------------------------------------------------
# gradients against central differences of the NumPy reference
# ----------------------------------------------------------------------------

def _numpy_gradients(ref, u, x0, w):
    """d sum(w * y) / d(u, every parameter), by central differences of the NumPy
    reference's forward (float64), one entry at a time."""
    sd = {k: to_np(v) for k, v in ref.state_dict().items()}

    def loss(u_, sd_):
        ref.load_state_dict({k: _t(v) for k, v in sd_.items()})
        with torch.no_grad():
            y = ref(_t(u_), initial_state=_t(x0))
        return float(np.sum(w * to_np(y)))

    def central(f, a):
        g = np.zeros(a.shape, dtype=a.dtype)
        parts = [(1.0, "real")] + ([(1j, "imag")] if np.iscomplexobj(a) else [])
        for idx in np.ndindex(a.shape):
            for unit, _ in parts:
                h = 1e-6
                ap, am = a.copy(), a.copy()
                ap[idx] += h * unit
                am[idx] -= h * unit
                d = (f(ap) - f(am)) / (2 * h)
                g[idx] += d * unit            # torch's convention: grad = dL/dRe + i dL/dIm
        return g

    grads = {"u": central(lambda a: loss(a, sd), u)}
    for k in sd:
        grads[k] = central(lambda a, k=k: loss(u, {**sd, k: a}), sd[k])
    ref.load_state_dict({k: _t(v) for k, v in sd.items()})
    return grads


@functools.lru_cache(maxsize=None)
def _reference_gradients(name, Bsz, L):
    ref, _ = _layers(name, "torch")
    u = _input(name, Bsz, L, seed=50 + L)
    x0 = _state(name, Bsz, seed=51 + L)
    w = np.random.default_rng(52).standard_normal((Bsz, L, *np.shape(to_np(ref(_t(u[:, :1]))))[2:]))
    return u, x0, w, _numpy_gradients(ref, u, x0, w)


def _backend_gradients(layer, u, x0, w, dtype):
    names = [k for k, _ in layer.named_parameters()]
    ut = _t(u, dtype).requires_grad_()
    y = layer(ut, initial_state=_t(x0, dtype))
    loss = (y * _t(w, dtype)).sum()
    gs = torch.autograd.grad(loss, [ut, *layer.parameters()])
    return dict(zip(["u", *names], [to_np(g) for g in gs]))


@pytest.mark.parametrize("name", list(LAYERS))
def test_torch_gradients_match_numpy_finite_differences(name):
    u, x0, w, g_ref = _reference_gradients(name, 2, 5)
    _, tm = _layers(name, "torch", chunk_size=2)
    g = _backend_gradients(tm, u, x0, w, torch.float64)
    assert set(g) == set(g_ref)
    for k in g:
        assert rel(g[k], g_ref[k]) <= 1e-6, (k, rel(g[k], g_ref[k]))


@pytest.mark.parametrize("name", list(LAYERS))
def test_triton_gradients_match_numpy_finite_differences(name):
    pytest.importorskip("triton")
    u, x0, w, g_ref = _reference_gradients(name, 2, 5)
    _, tr = _layers(name, "triton", dtype=torch.float32)
    g = _backend_gradients(tr, u, x0, w, torch.float32)
    for k in g:
        assert rel(g[k], g_ref[k]) <= 1e-4, (k, rel(g[k], g_ref[k]))


# ----------------------------------------------------------------------------
# the peers: fla-core's reference implementations
# ----------------------------------------------------------------------------

def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _fla_inputs(name, i, Bsz, L, seed):
    from .test_oracles import layer_and_params, make_input, make_state
    layer, P = layer_and_params(name, i)
    return layer, P, make_input(name, i, Bsz, L, seed), make_state(name, i, Bsz, seed + 1)


def _run(layer, u, x0):
    with torch.no_grad():
        y, s = layer(_t(u), initial_state=_t(x0), return_state=True)
    return to_np(y), to_np(s)


def test_rglru_against_fla_hgrn():
    """HGRN's recurrence h_t = exp(g_t) h_{t-1} + x_t is the RG-LRU's with
    g_t = log a_t and x_t = sqrt(1 - a_t^2) (i_t * u_t)."""
    pytest.importorskip("fla")
    from fla.ops.hgrn.naive import naive_recurrent_hgrn
    layer, P, u, x0 = _fla_inputs("rglru", 1, 3, 11, seed=7)
    r = _sig(u @ P["r_proj"].T + P["r_proj_bias"])
    i = _sig(u @ P["i_proj"].T + P["i_proj_bias"])
    log_a = 8.0 * r * np.log(_sig(P["Lambda"]))
    a = np.exp(log_a)
    o, h = naive_recurrent_hgrn(_t(np.sqrt(1 - a ** 2) * i * u), _t(log_a), initial_state=_t(x0),
                                output_final_state=True)
    y, s = _run(layer, u, x0)
    assert rel(y, to_np(o)) <= 1e-5
    assert rel(s, to_np(h)) <= 1e-5


def _qkv(P, u, Hd):
    Bsz, L, _ = u.shape
    heads = lambda z: z.reshape(Bsz, L, Hd, -1)                      # noqa: E731
    return (heads(u @ P["q_proj"].T), heads(u @ P["k_proj"].T), heads(u @ P["v_proj"].T))


@pytest.mark.parametrize("case,Hd", [("gla", 2), ("gla_3heads", 3)])
def test_gla_against_fla_naive_recurrent_gla(case, Hd):
    pytest.importorskip("fla")
    from fla.ops.gla.naive import naive_recurrent_gla
    layer, P, u, x0 = _fla_inputs(case, 0, 2, 13, seed=8)
    q, k, v = _qkv(P, u, Hd)
    g = (u @ P["alpha_proj2"].T) @ P["alpha_proj"].T + P["alpha_proj_bias"]
    gk = np.log(_sig(g)).reshape(q.shape) / 16.0                     # log alpha_t
    Dk = q.shape[-1]
    # fla scales q by Dk^-1/2; the paper's o_t = q_t S_t does not
    o, h = naive_recurrent_gla(_t(q * math.sqrt(Dk)), _t(k), _t(v), _t(gk),
                               initial_state=_t(x0), output_final_state=True)
    y, s = _run(layer, u, x0)
    assert rel(y, to_np(o)) <= 1e-5
    assert rel(s, to_np(h)) <= 1e-5


def test_retnet_against_fla_naive_retention_and_simple_gla():
    pytest.importorskip("fla")
    from fla.ops.retention.naive import naive_retention
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
    Hd = 3
    layer, P, u, x0 = _fla_inputs("retnet", 0, 2, 17, seed=9)
    q, k, v = _qkv(P, u, Hd)
    Dk = q.shape[-1]
    y0, _ = _run(layer, u, np.zeros_like(x0))
    # the parallel form, gamma_h = 1 - 2^(-5-h) built by fla itself (scale Dk^-1/2 on q)
    bhtd = lambda a: _t(a).transpose(1, 2)                           # noqa: E731
    o = naive_retention(bhtd(q * math.sqrt(Dk)), bhtd(k), bhtd(v)).transpose(1, 2)
    assert rel(y0, to_np(o)) <= 1e-5
    # the recurrent form with a per-head log-decay, from a nonzero state
    g = np.broadcast_to(np.log([1 - 2.0 ** (-5 - h) for h in range(Hd)]), q.shape[:3]).copy()
    o, h = naive_recurrent_simple_gla(_t(q), _t(k), _t(v), _t(g), scale=1.0, initial_state=_t(x0),
                                      output_final_state=True)
    y, s = _run(layer, u, x0)
    assert rel(y, to_np(o)) <= 1e-5
    assert rel(s, to_np(h)) <= 1e-5


# ----------------------------------------------------------------------------
# initializations the papers fix
# ----------------------------------------------------------------------------

def test_initializations():
    # Griffin, Appendix A: a^c uniform in [0.9, 0.999], a = sigmoid(Lambda), c = 8
    layer = getattr(_mod("rglru", "numpy"), "RGLRU")(seed=0, dtype=torch.float64, H=1000)
    ac = _sig(to_np(layer.get_parameter("Lambda"))) ** 8
    assert ac.min() >= 0.9 - 1e-12 and ac.max() <= 0.999 + 1e-12
    assert abs(ac.mean() - 0.9495) < 0.005 and ac.min() < 0.901 and ac.max() > 0.998   # uniform, not clustered
    # GSS: LayerNorm starts as the identity map of the normalized token
    P = {k: to_np(v) for k, v in getattr(_mod("gss", "numpy"), "GSS")(seed=0, N=4).state_dict().items()}
    assert np.all(P["ln_scale"] == 1) and np.all(P["ln_bias"] == 0)
    assert np.allclose(P["Lambda"].real, -0.5, atol=1e-6) and np.all(P["Lambda"].imag > 0)
    # S7: Lambda at the real part of the diagonalized HiPPO-LegS matrix
    P = {k: to_np(v) for k, v in getattr(_mod("s7", "numpy"), "S7")(seed=0).state_dict().items()}
    assert np.allclose(P["Lambda"], -0.5, atol=1e-6)


def test_mamba2_dt_limit_clamps_at_both_bounds():
    """The oracle test of the dt_limit example can fail: on its inputs the step is clamped at
    both bounds, and without the clamp the outputs differ far beyond 1e-10."""
    from .test_oracles import make_input
    layer = getattr(_mod("mamba2_dt_limit", "numpy"), "Mamba2DtLimit")(seed=0, dtype=torch.float64,
                                                                       **CASES["mamba2_dt_limit"].dims[0])
    # biases spread so that the heads' steps fall on both sides of the limits
    with torch.no_grad():
        layer.get_parameter("dt_bias").copy_(torch.linspace(-8.0, 0.0, layer.dims["Hd"]))
    P = {k: to_np(v) for k, v in layer.state_dict().items()}
    u = 2.0 * make_input("mamba2_dt_limit", 0, 3, 31, seed=161)
    uf = u.reshape(3, 31, -1)
    dt = papers.softplus(uf @ P["dt_proj"].T + P["dt_bias"])
    assert (dt < 0.001).mean() > 0.05 and (dt > 0.1).mean() > 0.05, ((dt < 0.001).mean(), (dt > 0.1).mean())
    y_clamped, _ = papers.mamba2(P, u, dt_limit=(0.001, 0.1))
    y_free, _ = papers.mamba2(P, u)
    assert rel(y_free, y_clamped) > 1e-3
    with torch.no_grad():
        y = to_np(layer(_t(u)))
    assert rel(y, y_clamped) <= 1e-10
