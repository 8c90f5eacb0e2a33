"""Several states in one layer (issue 9): linear attention with its normaliser, gated slot
attention, a stack whose second state reads the first (a DAG of states) and two
dynamics discretized by different rules, against oracles written from the papers'
equations (tests/oracles/papers.py and below: plain loops, never ssmc), at 1e-10 in
float64; then torch and the Triton interpreter against the NumPy reference (forward,
final state, chaining, step(), cu_seqlens, gradients), and fla-core's naive references
where they exist.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch

import ssmc

from ..conftest import ROOT
from . import papers

os.environ.setdefault("TRITON_INTERPRET", "1")
RTOL = 1e-10

STACK = """\
ssm Stack "a DAG of states: w's input term reads x after its update" {
  dims    H = 3, N = 4
  input   u[H]
  state   w[H]
  state   x[H, N]
  param   A_log[H, N] = log(uniform(1, 4))
  param   C[H, N] = normal(0, 0.5)
  param   g[H] = normal(0, 1)
  param   log_dt[H] = log_uniform(0.01, 0.1)
  A  = -exp(A_log) : diagonal
  a2 = sigmoid(g) : diagonal
  r  = sum(C * x, N)
  dynamics   x' = A x + u
  discretize zoh, step = exp(log_dt), state = x
  dynamics   w' = a2 w + tanh(r) * u
  discretize bilinear, step = 0.5, state = w
  scan       causal
  output     y = w + r
}
"""


def stack_oracle(P, u, x0=None):
    """x: ZOH of x' = A x + u (diagonal A, step dt per channel); w: bilinear (Tustin) of
    w' = a w + tanh(r) u with step 0.5, r = sum_n C x after x's update; y = w + r."""
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    A = -np.exp(P["A_log"])                                   # (H, N)
    dt = np.exp(P["log_dt"])[:, None]                         # (H, 1)
    a = 1.0 / (1.0 + np.exp(-P["g"]))                         # (H,)
    w0, xx0 = (None, None) if x0 is None else x0
    x = np.zeros((Bsz,) + A.shape) if xx0 is None else xx0.copy()
    w = np.zeros((Bsz, H)) if w0 is None else w0.copy()
    Ax = np.exp(dt * A)
    Bx = (Ax - 1.0) / A
    h = 0.5
    Aw = (1 + h / 2 * a) / (1 - h / 2 * a)
    Bw = h / (1 - h / 2 * a)
    y = np.zeros((Bsz, L, H))
    for t in range(L):
        x = Ax * x + Bx * u[:, t, :, None]
        r = np.sum(P["C"] * x, axis=-1)
        w = Aw * w + Bw * np.tanh(r) * u[:, t]
        y[:, t] = w + r
    return y, (w, x)


CASES = {
    "linear_attention": dict(path=ROOT / "examples" / "linear_attention.ssm", cls="LinearAttention",
                             dims=dict(H=2, D=5, Dk=3, Dv=4), oracle=papers.linear_attention,
                             order=("H", "Dk", "Dv")),
    "gsa": dict(path=ROOT / "examples" / "gsa.ssm", cls="GSA", dims=dict(H=2, D=5, Dk=3, Dv=4, M=3),
                oracle=papers.gsa, order=("H", "Dk", "Dv", "M")),
    "stack": dict(text=STACK, cls="Stack", dims=dict(H=3, N=4), oracle=stack_oracle, order=()),
}


def _load(name, backend):
    case = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.loads(case["text"], backend=backend) if "text" in case else \
            ssmc.load(str(case["path"]), backend=backend)
    return getattr(mod, case["cls"])


def _pair(name, backend, seed=0):
    ref = _load(name, "numpy")(**CASES[name]["dims"], seed=seed)
    other = _load(name, backend)(**CASES[name]["dims"], seed=seed).double()
    other.load_state_dict(ref.state_dict())
    return ref, other


def _params(layer, name):
    P = {k: v.detach().double().numpy() for k, v in layer.state_dict().items()}
    P["_dims"] = tuple(layer.dims[d] for d in CASES[name]["order"])
    return P


def _input(layer, B, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, L) + tuple(layer.dims[d] for d in layer.INPUTS[0][1]), generator=g,
                       dtype=torch.float64)


def _state(layer, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn((B,) + tuple(layer.dims[d] for d in dims), generator=g, dtype=torch.float64).abs()
                 for _, dims, _ in layer.STATES)


def rel(a, b):
    a, b = (np.asarray(x.detach() if isinstance(x, torch.Tensor) else x, dtype=np.float64) for x in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b), initial=0.0) / max(float(np.max(np.abs(b), initial=0.0)), 1e-300))


def _oracle(name, layer, u, x0=None):
    return CASES[name]["oracle"](_params(layer, name), u.numpy(),
                                 None if x0 is None else tuple(t.numpy() for t in x0))


# --- the NumPy reference against the papers' equations ------------------------------

@pytest.mark.parametrize("B,L", [(1, 1), (3, 7), (2, 31)])
@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_oracle(name, B, L):
    layer = _load(name, "numpy")(**CASES[name]["dims"], seed=0)
    u = _input(layer, B, L)
    x0 = _state(layer, B)
    y, final = layer(u, initial_state=x0, return_state=True)
    y_ref, final_ref = _oracle(name, layer, u, x0)
    assert rel(y, y_ref) < RTOL
    assert isinstance(final, tuple) and len(final) == len(final_ref)
    for a, b in zip(final, final_ref):
        assert rel(a, b) < RTOL
    y0, _ = _oracle(name, layer, u)
    assert rel(layer(u), y0) < RTOL


def test_state_tuple_api():
    layer = _load("linear_attention", "numpy")(**CASES["linear_attention"]["dims"])
    st = layer.init_state(2)
    assert isinstance(st, tuple) and [tuple(t.shape) for t in st] == [(2, 2, 3, 4), (2, 2, 3)]
    u = _input(layer, 2, 5)
    with pytest.raises(ssmc.ShapeError, match=r"tuple \(S, z\) of 2 tensors of shapes \(batch, H=2, Dk=3, Dv=4\)"):
        layer(u, initial_state=st[0])
    with pytest.raises(ssmc.ShapeError, match=r"the state z must have shape \(batch, H=2, Dk=3\)"):
        layer(u, initial_state=(st[0], st[0]))


# --- torch and the Triton interpreter against the reference --------------------------

@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", list(CASES))
def test_backend_forward_state_and_chaining(name, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    ref, layer = _pair(name, backend)
    u = _input(ref, 2, 11)
    x0 = _state(ref, 2)
    y_ref, f_ref = ref(u, initial_state=x0, return_state=True)
    y, f = layer(u, initial_state=x0, return_state=True)
    assert rel(y, y_ref) < RTOL
    for a, b in zip(f, f_ref):
        assert rel(a, b) < RTOL
    # Chaining: 5 tokens, then 6 from the state they leave.
    y1, s1 = layer(u[:, :5], initial_state=x0, return_state=True)
    y2, s2 = layer(u[:, 5:], initial_state=s1, return_state=True)
    assert rel(torch.cat([y1, y2], 1), y_ref) < RTOL
    for a, b in zip(s2, f_ref):
        assert rel(a, b) < RTOL


@pytest.mark.parametrize("name", list(CASES))
def test_torch_step_and_packed(name):
    ref, layer = _pair(name, "torch")
    u = _input(ref, 2, 6)
    y_ref = ref(u)
    st = layer.init_state(2, dtype=torch.float64)
    ys = []
    for t in range(6):
        yt, st = layer.step(u[:, t], st)
        ys.append(yt)
    assert rel(torch.stack(ys, 1), y_ref) < RTOL
    # Several tokens at once through step().
    ya, sa = layer.step(u[:, :4], layer.init_state(2, dtype=torch.float64))
    yb, _ = layer.step(u[:, 4:], sa)
    assert rel(torch.cat([ya, yb], 1), y_ref) < RTOL
    # cu_seqlens: a packed batch of lengths 2, 5 and 3, each from its own initial state.
    lengths = [2, 5, 3]
    parts = [_input(ref, 1, n, seed=10 + i) for i, n in enumerate(lengths)]
    x0 = _state(ref, 3)
    cu = torch.tensor([0, 2, 7, 10])
    y, final = layer(torch.cat(parts, 1), cu_seqlens=cu, initial_state=x0, return_state=True)
    for i, p in enumerate(parts):
        yi, fi = ref(p, initial_state=tuple(t[i:i + 1] for t in x0), return_state=True)
        assert rel(y[:, cu[i]:cu[i + 1]], yi) < RTOL
        for a, b in zip(final, fi):
            assert rel(a[i:i + 1], b) < RTOL


@pytest.mark.parametrize("name", list(CASES))
def test_torch_gradcheck(name):
    _, layer = _pair(name, "torch")
    u = _input(layer, 1, 3).requires_grad_()
    x0 = tuple(t.requires_grad_() for t in _state(layer, 1))

    def f(u, *x0):
        y, final = layer(u, initial_state=x0, return_state=True)
        return (y, *final)
    # fast mode (random directions) keeps the larger state of GSA quick
    assert torch.autograd.gradcheck(f, (u, *x0), fast_mode=True)


@pytest.mark.parametrize("name", list(CASES))
def test_triton_gradients_match_torch(name):
    pytest.importorskip("triton")
    _, tl = _pair(name, "torch")
    _, tr = _pair(name, "triton")
    u = _input(tl, 2, 7)
    x0 = _state(tl, 2)
    grads = []
    for layer in (tl, tr):
        uu = u.clone().requires_grad_()
        xx = tuple(t.clone().requires_grad_() for t in x0)
        y, final = layer(uu, initial_state=xx, return_state=True)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum() \
            + sum((f ** 2).sum() for f in final)
        loss.backward()
        grads.append([uu.grad, *(t.grad for t in xx)] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        assert rel(b, a) < RTOL


def test_algorithms_per_state():
    """Each state gets its own algorithm: S of linear attention and GSA's key slots run the
    SSD form, z and the value slots (decay along the summed dim) a chunked scan."""
    from ssmc.compiler import analyse_path
    from ssmc.explain import explain, summary
    for name, want in (("linear_attention", ["ssd", "chunked_scan"]), ("gsa", ["ssd", "chunked_scan"])):
        g = analyse_path(CASES[name]["path"]).graphs[0]
        assert [s["algorithm"]["name"] for s in g.meta["systems"]] == want
        names = [g.op(s["state"]).get("name") for s in g.meta["systems"]]
        text, short = explain(g), summary(g)
        for n, a in zip(names, want):
            # one line per state in each
            assert sum(line.startswith(f"algorithm ({n}): {a}:") for line in text.splitlines()) == 1
            assert sum(line == f"  algorithm ({n}): {a}" for line in short.splitlines()) == 1


# --- fla-core's naive references (float32 inside: a float32 tolerance) --------------

def _projections(layer, u, names):
    sd = {k: v.detach().double() for k, v in layer.state_dict().items()}
    return [u @ sd[n].T for n in names]


def test_linear_attention_against_fla():
    pytest.importorskip("fla")
    naive = pytest.importorskip("fla.ops.linear_attn.naive")
    layer = _load("linear_attention", "numpy")(**CASES["linear_attention"]["dims"], seed=0)
    H, Dk, Dv = (layer.dims[d] for d in ("H", "Dk", "Dv"))
    u = _input(layer, 2, 9)
    q, k, v = _projections(layer, u, ("q_proj", "k_proj", "v_proj"))
    B, L = u.shape[:2]
    phi = lambda x: torch.nn.functional.elu(x) + 1  # noqa: E731
    q, k, v = phi(q.reshape(B, L, H, Dk)), phi(k.reshape(B, L, H, Dk)), v.reshape(B, L, H, Dv)
    # fla: o = (q scale)^T S / ((q scale) . cumsum(k) + 1e-10); scale = 1 here.
    o, _ = naive.naive_recurrent_linear_attn(q.float(), k.float(), v.float(), scale=1.0, normalize=True)
    assert rel(layer(u), o.double()) < 1e-4


def test_gsa_against_fla():
    pytest.importorskip("fla")
    naive = pytest.importorskip("fla.ops.gsa.naive")
    layer = _load("gsa", "numpy")(**CASES["gsa"]["dims"], seed=0)
    H, Dk, Dv, M = (layer.dims[d] for d in ("H", "Dk", "Dv", "M"))
    u = _input(layer, 2, 9)
    q, k, v, a = _projections(layer, u, ("q_proj", "k_proj", "v_proj", "alpha_proj"))
    B, L = u.shape[:2]
    alpha = torch.sigmoid(a.reshape(B, L, H, M))
    # fla: slots written with s = 1 - alpha, decayed by g = log(alpha); scale 1 / sqrt(Dk).
    o, _ = naive.naive_recurrent_gsa(q.reshape(B, L, H, Dk).float(), k.reshape(B, L, H, Dk).float(),
                                     v.reshape(B, L, H, Dv).float(), (1 - alpha).float(), torch.log(alpha).float(),
                                     scale=Dk ** -0.5)
    assert rel(layer(u), o.double()) < 1e-4


def test_stack_runs_in_dependency_order():
    """w is declared first but reads x: x runs first; the tuple stays in declaration order."""
    from ssmc.compiler import analyse
    from ssmc.errors import Source
    g = analyse(Source(STACK, "<stack>")).graphs[0]
    assert g.meta["order"] == [1, 0]
    # x is LTI, but in a block with several states it scans (no convolution form)
    assert g.meta["systems"][1]["classification"]["lti"]
    assert [s["algorithm"]["name"] for s in g.meta["systems"]] == ["chunked_scan", "chunked_scan"]
    layer = _load("stack", "numpy")(**CASES["stack"]["dims"])
    assert [s[0] for s in layer.STATES] == ["w", "x"]
    assert math.isclose(float(layer.init_state(1)[0].sum()), 0.0)


def test_several_states_in_one_statement():
    """`state x[H, N] complex, w[H]` declares both, each with its own flags, exactly as two
    statements do."""
    from ssmc.frontend.ast import StateDecl
    from ssmc.frontend.parser import parse
    from ssmc.errors import Source
    one = STACK.replace("  state   w[H]\n  state   x[H, N]\n", "  state   w[H], x[H, N]\n")
    assert one != STACK
    decls = [s for s in parse(Source(one, "<one>")).blocks[0].body if isinstance(s, StateDecl)]
    assert [(d.name, d.complex) for d in decls] == [("w", False), ("x", False)]
    a = ssmc.loads(STACK, backend="numpy").Stack(seed=0)
    b = ssmc.loads(one, backend="numpy").Stack(seed=0)
    u = _input(a, 2, 5)
    assert rel(b(u), a(u)) == 0
    c = parse(Source("ssm T {\n  state x[H] complex, w[H]\n}\n", "<c>")).blocks[0].body
    assert [(d.name, d.complex) for d in c] == [("x", True), ("w", False)]


@pytest.mark.parametrize("name", ["linear_attention", "gsa"])
def test_torch_runs_the_ssd_form_for_its_ssd_state(monkeypatch, name):
    """The state whose algorithm is ssd really runs ops.ssd_chunk (and still matches)."""
    from ssmc.runtime import torch_ops
    calls = []
    real = torch_ops.ssd_chunk

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch_ops, "ssd_chunk", counting)
    ref, layer = _pair(name, "torch")
    u = _input(ref, 2, 9)
    assert rel(layer(u), ref(u)) < RTOL
    assert calls
