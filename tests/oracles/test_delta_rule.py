"""The delta rule (DeltaNet, Gated DeltaNet, Longhorn): `dplr(Lambda, P, Q)` on a real state
with a scalar Lambda and rank-one P, Q, and its chunked algorithm.

* the NumPy reference against the oracles of ``papers.py`` (plain loops from the papers'
  equations), 1e-10 in float64;
* the PyTorch backend (the chunked delta-rule form, several chunks, a partial last one)
  and the Triton backend (interpreter) against the NumPy reference: outputs, final
  states, initial states, step(), chaining, cu_seqlens; gradients by gradcheck and
  between backends;
* fla-core's naive references (``fla.ops.delta_rule.naive``,
  ``fla.ops.gated_delta_rule.naive``), called, at float32 tolerance (they compute in
  float32);
* where the chunked form is not chosen, ``explain`` says why; `1 - beta * k * k` stays
  an error with a hint toward ``dplr``.
"""

import os
from pathlib import Path

# Triton reads TRITON_INTERPRET when it is imported: set it first (tests run on the CPU).
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import ssmc  # noqa: E402
from ssmc.compiler import analyse  # noqa: E402
from ssmc.errors import Source  # noqa: E402
from ssmc.explain import explain as explain_graph  # noqa: E402

from . import papers  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-10

CASES = {
    # example file, class, oracle, small dims, state dims
    "deltanet": ("deltanet.ssm", "DeltaNet", papers.deltanet, dict(D=5, H=2, Dk=4, Dv=3),
                 lambda d: (d["H"], d["Dv"], d["Dk"])),
    "gated_deltanet": ("gated_deltanet.ssm", "GatedDeltaNet", papers.gated_deltanet,
                       dict(D=5, H=2, Dk=4, Dv=3), lambda d: (d["H"], d["Dv"], d["Dk"])),
    "longhorn": ("longhorn.ssm", "Longhorn", papers.longhorn, dict(D=3, N=5), lambda d: (d["D"], d["N"])),
}


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.all(np.isfinite(a))
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _np(t):
    return t.detach().double().numpy()


_layers = {}


def layer(name, backend="numpy", block=4):
    """The example's layer (float64, seed 0); the torch and triton ones with the numpy
    one's parameters and `block` tokens per block of the chunked form."""
    key = (name, backend)
    if key not in _layers:
        file, cls, _, dims, _ = CASES[name]
        mod = ssmc.load(ROOT / "examples" / file, backend=backend, strict=True)
        lay = getattr(mod, cls)(**dims, seed=0, dtype=torch.float64)
        if backend != "numpy":
            lay.load_state_dict(layer(name).state_dict())
        _layers[key] = lay
    lay = _layers[key]
    if backend != "numpy":
        lay.delta_block = block
    return lay


def params(name):
    return {k: _np(v) for k, v in layer(name).state_dict().items()}


def inputs(name, B, L, seed=0):
    d = CASES[name][3]
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((B, L, d["D"]))
    x0 = rng.standard_normal((B,) + CASES[name][4](d))
    return u, x0


@pytest.mark.parametrize("B,L", [(1, 1), (2, 7), (3, 13)])
@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_paper_oracle(name, B, L):
    u, x0 = inputs(name, B, L)
    oracle = CASES[name][2]
    y_ref, x_ref = oracle(params(name), u)
    y = layer(name)(torch.from_numpy(u))
    assert rel(_np(y), y_ref) <= RTOL
    y_ref, x_ref = oracle(params(name), u, x0)
    y, x = layer(name)(torch.from_numpy(u), initial_state=torch.from_numpy(x0), return_state=True)
    assert rel(_np(y), y_ref) <= RTOL
    assert rel(_np(x), x_ref) <= RTOL


@pytest.mark.parametrize("name", list(CASES))
def test_examples_choose_the_chunked_delta_rule(name):
    assert layer(name, "torch").ALGORITHM == "delta_chunked"
    g = analyse(Source((ROOT / "examples" / CASES[name][0]).read_text(), CASES[name][0])).graphs[0]
    assert "delta_chunked" in explain_graph(g)


@pytest.mark.parametrize("block", [4, 64])
@pytest.mark.parametrize("name", list(CASES))
def test_torch_chunked_matches_reference(name, block):
    """Several blocks with a partial last one (block 4, L 13), and one block (64)."""
    ref, lay = layer(name), layer(name, "torch", block)
    u, x0 = (torch.from_numpy(a) for a in inputs(name, 3, 13, seed=1))
    y_ref, x_ref = ref(u, initial_state=x0, return_state=True)
    y, x = lay(u, initial_state=x0, return_state=True)
    assert rel(_np(y), _np(y_ref)) <= RTOL
    assert rel(_np(x), _np(x_ref)) <= RTOL
    # no initial state; chaining two calls
    assert rel(_np(lay(u)), _np(ref(u))) <= RTOL
    y1, s1 = lay(u[:, :6], return_state=True)
    y2, s2 = lay(u[:, 6:], initial_state=s1, return_state=True)
    assert rel(_np(torch.cat([y1, y2], 1)), _np(ref(u))) <= RTOL
    assert rel(_np(s2), _np(ref(u, return_state=True)[1])) <= RTOL


@pytest.mark.parametrize("name", list(CASES))
def test_torch_step_and_packed(name):
    ref, lay = layer(name), layer(name, "torch", 4)
    u, x0 = (torch.from_numpy(a) for a in inputs(name, 2, 9, seed=2))
    y_ref, x_ref = ref(u, initial_state=x0, return_state=True)
    st = x0
    for t in range(u.shape[1]):
        y_t, st = lay.step(u[:, t], st)
        assert rel(_np(y_t), _np(y_ref[:, t])) <= RTOL
    assert rel(_np(st), _np(x_ref)) <= RTOL
    packed = torch.cat([u[0, :5], u[1, :9]])[None]
    y_p = lay(packed, cu_seqlens=[0, 5, 14])
    want = torch.cat([ref(u[:1, :5]), ref(u[1:, :9])], 1)
    assert rel(_np(y_p), _np(want)) <= RTOL


@pytest.mark.parametrize("name", list(CASES))
def test_torch_gradcheck(name):
    """The chunked form's backward (autograd through it) against finite differences, over
    the input and the initial state; the parameters' gradients against the recurrence's."""
    lay = layer(name, "torch", 2)
    u, x0 = (torch.from_numpy(a).requires_grad_() for a in inputs(name, 1, 5, seed=3))
    torch.autograd.gradcheck(lambda u, x0: lay(u, initial_state=x0, return_state=True), (u, x0))
    # the parameter's gradient through the chunked form against the plain recurrence's
    # (the same layer, one token per call: step() runs the recurrence itself)
    lay.zero_grad()
    y, x = lay(u, initial_state=x0, return_state=True)
    (y.square().sum() + x.sum()).backward()
    g_chunk = [p.grad.clone() for p in lay.parameters()]
    lay.zero_grad()
    st, ys = x0, []
    for t in range(u.shape[1]):
        y_t, st = lay.step(u[:, t], st)
        ys.append(y_t)
    (torch.stack(ys, 1).square().sum() + st.sum()).backward()
    for a, b in zip(g_chunk, (p.grad for p in lay.parameters())):
        assert rel(_np(a), _np(b)) <= 1e-9


@pytest.mark.parametrize("name", ["deltanet", "longhorn"])
def test_triton_interpreter_matches_reference(name):
    """The Triton backend runs these specs (its module calls the chunked form; the scan
    kernel's real-dplr path is in test_real_dplr_scan_kernel): forward, state and
    gradients against the NumPy reference and the PyTorch backend."""
    pytest.importorskip("triton")
    ref, tor, tri = layer(name), layer(name, "torch", 4), layer(name, "triton", 4)
    u, x0 = (torch.from_numpy(a) for a in inputs(name, 2, 6, seed=4))
    y_ref, x_ref = ref(u, initial_state=x0, return_state=True)
    ut = u.clone().requires_grad_()
    y, x = tri(ut, initial_state=x0, return_state=True)
    assert rel(_np(y), _np(y_ref)) <= RTOL and rel(_np(x), _np(x_ref)) <= RTOL
    (y.square().sum()).backward()
    ut2 = u.clone().requires_grad_()
    tor(ut2, initial_state=x0).square().sum().backward()
    assert rel(_np(ut.grad), _np(ut2.grad)) <= 1e-9


REAL_DPLR_SCAN = """
ssm RealDplr {
  dims H = 2, Dk = 3, Dv = 2
  input u[H, Dv], k[H, Dk]
  state S[H, Dv, Dk]
  param a[H] = uniform(0.5, 1)
  A = dplr(-a, 0.3 * k, k) : dplr
  dynamics S' = A S + u * k
  discretize zoh, step = 0.1
  scan causal
  output y = sum(k * S, Dk)
}
"""


def _real_dplr_oracle(a, u, k, x0):
    """S' = (-a I - 0.3 k k^T) S + u k^T per row, ZOH with a constant input over the step:
    the exact solution over dt = 0.1 by the matrix exponential of the augmented system."""
    from scipy.linalg import expm
    B, L, H, Dv = u.shape
    Dk = k.shape[-1]
    S = x0.copy()
    y = np.zeros((B, L, H, Dv))
    for t in range(L):
        for b in range(B):
            for h in range(H):
                A = -a[h] * np.eye(Dk) - 0.3 * np.outer(k[b, t, h], k[b, t, h])
                big = np.zeros((2 * Dk, 2 * Dk))
                big[:Dk, :Dk] = A * 0.1
                big[:Dk, Dk:] = np.eye(Dk) * 0.1
                E = expm(big)
                for v in range(Dv):
                    S[b, h, v] = E[:Dk, :Dk] @ S[b, h, v] + E[:Dk, Dk:] @ (u[b, t, h, v] * k[b, t, h])
                y[b, t, h] = S[b, h] @ k[b, t, h]
    return y, S


@pytest.mark.parametrize("backend", ["numpy", "torch", "triton"])
def test_real_dplr_scan_kernel(backend, monkeypatch):
    """A real dplr that the chunked form does not take (it is discretized): the matrix scan
    of every backend, the Triton scan kernel included (the PyTorch path's scan may not run), on a
    real state."""
    pytest.importorskip("scipy")
    if backend == "triton":
        pytest.importorskip("triton")
        # the kernel runs, not the PyTorch path's matrix scan
        from ssmc.runtime import torch_ops

        def no_torch_scan(*a, **k):
            raise AssertionError("the PyTorch matrix scan ran instead of the Triton kernel")
        monkeypatch.setattr(torch_ops, "matrix_scan", no_torch_scan)
    mod = ssmc.loads(REAL_DPLR_SCAN, backend=backend, strict=True)
    lay = mod.RealDplr(seed=0, dtype=torch.float64)
    assert lay.ALGORITHM == "chunked_matrix_scan"
    rng = np.random.default_rng(5)
    u, k, x0 = rng.standard_normal((2, 5, 2, 2)), rng.standard_normal((2, 5, 2, 3)), rng.standard_normal((2, 2, 2, 3))
    with torch.no_grad():   # (matrix structures take the PyTorch path for gradients)
        y, x = lay(torch.from_numpy(u), k=torch.from_numpy(k), initial_state=torch.from_numpy(x0), return_state=True)
    y_ref, x_ref = _real_dplr_oracle(_np(lay.state_dict()["a"]), u, k, x0)
    assert rel(_np(y), y_ref) <= RTOL and rel(_np(x), x_ref) <= RTOL


# ----------------------------------------------------------------------------
# other spellings: rank two, the state's dims in another order, a static gate
# ----------------------------------------------------------------------------

VARIANTS = {
    "rank2": """
ssm V {
  dims D = 4, H = 2, Dk = 3, Dv = 2, R = 2
  input u[D]
  state S[H, Dv, Dk]
  k = linear(u, H, Dk, R) * 0.3
  v = linear(u, H, Dv)
  q = linear(u, H, Dk)
  A = dplr(1, k, k) : dplr
  recurrence S = A S + v * sum(k, R)
  scan causal
  output o = sum(q * S, Dk)
}""",
    "dims_order_static_gate": """
ssm V {
  dims D = 4, H = 2, Dk = 3, Dv = 2
  input u[D]
  state S[Dv, H, Dk]
  param g[H] = uniform(0.5, 0.9)
  kr = linear(u, H, Dk)
  k = kr / sqrt(sum(kr * kr, Dk))
  v = linear(u, Dv, H)
  q = linear(u, Dk)
  beta = sigmoid(linear(u, H))
  A = dplr(sigmoid(g), sigmoid(g) * beta * k, k) : dplr
  recurrence S = A S - beta * v * k
  scan causal
  output o = sum(q * S, Dk) + 1
}""",
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_chunked_matches_reference(name):
    ref = ssmc.loads(VARIANTS[name], backend="numpy").V(seed=0, dtype=torch.float64)
    tor = ssmc.loads(VARIANTS[name], backend="torch").V(seed=0, dtype=torch.float64)
    tor.load_state_dict(ref.state_dict())
    assert tor.ALGORITHM == "delta_chunked"
    tor.delta_block = 3
    rng = np.random.default_rng(6)
    u = torch.from_numpy(rng.standard_normal((2, 8, 4)))
    x0 = torch.from_numpy(rng.standard_normal(tuple(ref.init_state(2, torch.float64).shape)))
    y_ref, x_ref = ref(u, initial_state=x0, return_state=True)
    y, x = tor(u, initial_state=x0, return_state=True)
    assert rel(_np(y), _np(y_ref)) <= RTOL and rel(_np(x), _np(x_ref)) <= RTOL


DELTA_BASE = """
ssm V {
  dims D = 4, H = 2, Dk = 3, Dv = 2
  input u[D]
  state S[H, Dv, Dk]__COMPLEX__
  param g[H] = uniform(0.5, 0.9)
  param lam[H, Dk] = uniform(0.5, 0.9)
  k = linear(u, H, Dk)
  v = linear(u, H, Dv)
  q = linear(u, H, Dk)
  A = __A__ : __S__
  recurrence S = A S + v * k
  scan causal
  output o = __OUT__
}"""


def _variant(A="dplr(1, k, k)", S="dplr", out="sum(q * S, Dk)", cplx=""):
    return (DELTA_BASE.replace("__A__", A).replace("__S__", S).replace("__OUT__", out)
            .replace("__COMPLEX__", cplx))


@pytest.mark.parametrize("text,why", [
    (_variant(A="dplr(lam, k, k)"), "Lambda varies along Dk"),
    (_variant(A="dplr(g, k, k)"), "Lambda is not known to be positive"),
    (_variant(out="sum(q * S, Dk) * sum(q * S, Dk)"), "the readout does not read the state"),
    (_variant(out="re(sum(q * S, Dk))", cplx=" complex"), "the state is complex"),
])
def test_fallback_says_why(text, why):
    g = analyse(Source(text, "<t>")).graphs[0]
    algo = g.meta["algorithm"]
    assert algo["name"] == "chunked_matrix_scan"
    assert "delta-rule form not chosen" in algo["reason"] and why in algo["reason"], algo["reason"]
    # and the scan still agrees with the reference
    ref = ssmc.loads(text, backend="numpy").V(seed=0, dtype=torch.float64)
    tor = ssmc.loads(text, backend="torch").V(seed=0, dtype=torch.float64)
    tor.load_state_dict(ref.state_dict())
    u = torch.from_numpy(np.random.default_rng(7).standard_normal((2, 5, 4)))
    assert rel(_np(tor(u)), _np(ref(u))) <= RTOL


@pytest.mark.parametrize("A,S", [("1 - k * k", "dense"), ("1 - k * k", "dplr")])
def test_elementwise_rank_one_is_an_error_with_a_hint(A, S):
    with pytest.raises(ssmc.SpecError) as e:
        ssmc.loads(_variant(A=A, S=S), backend="numpy")
    assert "dplr(1, beta * k, k)" in str(e.value)


def test_elementwise_rank_one_as_diagonal_is_the_diagonal():
    """`1 - k * k : diagonal` is the elementwise 1 - k^2 (Longhorn's diagonal approximation)."""
    text = _variant(A="1 - k * k", S="diagonal")
    ref = ssmc.loads(text, backend="numpy").V(seed=0, dtype=torch.float64)
    P = {n: _np(p) for n, p in ref.state_dict().items()}
    u = np.random.default_rng(8).standard_normal((1, 3, 4))
    S = np.zeros((1, 2, 2, 3))
    for t in range(3):
        k = (u[:, t] @ P["k_proj"].T).reshape(1, 2, 3)
        v = (u[:, t] @ P["v_proj"].T).reshape(1, 2, 2)
        S = (1 - k * k)[:, :, None, :] * S + v[..., None] * k[:, :, None, :]
    assert rel(_np(ref(torch.from_numpy(u), return_state=True)[1]), S) <= RTOL


# ----------------------------------------------------------------------------
# fla-core's naive references, called (float32 inside, so a float32 tolerance)
# ----------------------------------------------------------------------------

DELTA_CORE = """
ssm DeltaCore {
  dims H = 2, Dk = 8, Dv = 5
  input v[H, Dv], k[H, Dk], q[H, Dk], beta[H]
  state S[H, Dv, Dk]
  A = dplr(1, beta * k, k) : dplr
  recurrence S = A S + beta * v * k
  scan       causal
  output     o = sum(q * S, Dk) * Dk ** -0.5
}
"""

GATED_CORE = """
ssm GatedCore {
  dims H = 2, Dk = 8, Dv = 5
  input v[H, Dv], k[H, Dk], q[H, Dk], beta[H], g[H]
  state S[H, Dv, Dk]
  A = dplr(exp(g), exp(g) * beta * k, k) : dplr
  recurrence S = A S + beta * v * k
  scan       causal
  output     o = sum(q * S, Dk) * Dk ** -0.5
}
"""


def _qkvb(B=2, L=32, H=2, Dk=8, Dv=5, seed=9):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, L, H, Dk, generator=gen, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(B, L, H, Dk, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, L, H, Dv, generator=gen, dtype=torch.float64)
    beta = torch.rand(B, L, H, generator=gen, dtype=torch.float64)
    g = -torch.rand(B, L, H, generator=gen, dtype=torch.float64) * 0.5
    S0 = torch.randn(B, H, Dv, Dk, generator=gen, dtype=torch.float64)
    return q, k, v, beta, g, S0


def _head_first(t):
    return t.transpose(1, 2).contiguous()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_matches_fla_delta_rule_naive(backend):
    pytest.importorskip("fla")
    naive = pytest.importorskip("fla.ops.delta_rule.naive")
    q, k, v, beta, _, S0 = _qkvb()
    lay = ssmc.loads(DELTA_CORE, backend=backend).DeltaCore(dtype=torch.float64)
    if backend == "torch":
        lay.delta_block = 8
    y, S = lay(v, k=k, q=q, beta=beta, initial_state=S0, return_state=True)
    # fla: [B, H, L, D] inputs, q scaled by Dk ** -0.5 inside, state [B, H, Dk, Dv]
    o, S_fla = naive.delta_rule_recurrence(*(_head_first(t) for t in (q, k, v, beta)),
                                           initial_state=S0.transpose(-1, -2).float())
    assert rel(_np(y), _np(o.transpose(1, 2))) <= 1e-5
    assert rel(_np(S), _np(S_fla.transpose(-1, -2))) <= 1e-5
    o_chunk, _ = naive.delta_rule_chunkwise(*(_head_first(t).float() for t in (q, k, v, beta)), chunk_size=8)
    y0 = lay(v, k=k, q=q, beta=beta)
    assert rel(_np(y0), _np(o_chunk.transpose(1, 2))) <= 1e-5


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_matches_fla_gated_delta_rule_naive(backend):
    pytest.importorskip("fla")
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    q, k, v, beta, g, S0 = _qkvb(seed=10)
    lay = ssmc.loads(GATED_CORE, backend=backend).GatedCore(dtype=torch.float64)
    if backend == "torch":
        lay.delta_block = 8
    y, S = lay(v, k=k, q=q, beta=beta, g=g, initial_state=S0, return_state=True)
    # fla: [B, T, H, D] inputs, g the log-decay, scale Dk ** -0.5 by default, state [B, H, Dk, Dv]
    o, S_fla = naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=S0.transpose(-1, -2),
                                                      output_final_state=True)
    assert rel(_np(y), _np(o)) <= 1e-5
    assert rel(_np(S), _np(S_fla.transpose(-1, -2))) <= 1e-5


def test_keys_not_last_is_an_error_with_a_hint():
    """fla's layout S[H, Dk, Dv] puts the keys first; a square matrix acts on the state's
    last dim, so dplr(1, beta * k, k) over Dk needs Dk last: the hint says so."""
    text = (ROOT / "examples" / "deltanet.ssm").read_text().replace("state   S[H, Dv, Dk]", "state   S[H, Dk, Dv]")
    with pytest.raises(ssmc.SpecError) as e:
        ssmc.loads(text, backend="numpy")
    assert "put Dk last: state S[H, Dv, Dk]" in str(e.value)
