"""Per-tensor direction sharing and `scan global`, against independent oracles.

The oracles (``papers.vssd``, ``papers.s5_bidirectional``) are plain loops written
from the papers' equations, never through ssmc. The NumPy reference must agree with
them at 1e-10 (float64); the torch backend with the reference at 1e-10, its
gradients by gradcheck. (Triton's interpreter: tests/backends/test_triton_directions.py.)
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

import ssmc

from ..conftest import ROOT
from . import papers

RTOL = 1e-10
VSSD_DIMS = dict(Hd=2, P=3, N=4)
S5B_DIMS = dict(H=3, P=4)


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def to_numpy(v):
    v = v.detach()
    return v.cdouble().numpy() if v.is_complex() else v.double().numpy()


@functools.lru_cache(maxsize=None)
def _module(stem, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssmc.load(ROOT / "examples" / f"{stem}.ssm", backend=backend)


def _layer(stem, cls, backend, dims, seed=0):
    return getattr(_module(stem, backend), cls)(seed=seed, dtype=torch.float64, **dims)


def _params(layer):
    return {k: to_numpy(v) for k, v in layer.state_dict().items()}


def _u(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------
# VSSD: scan global
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("Bsz,L", [(1, 1), (3, 7), (2, 13)])
def test_vssd_reference_matches_the_oracle(Bsz, L):
    layer = _layer("vssd", "VSSD", "numpy", VSSD_DIMS)
    P = _params(layer)
    u = _u((Bsz, L, 2, 3), seed=L)
    y, xL = layer(t(u), return_state=True)
    y_ref, x_ref = papers.vssd(P, u)
    assert rel(to_numpy(y), y_ref) <= RTOL
    assert rel(to_numpy(xL), x_ref) <= RTOL
    # The readout reads x_L at every token: without the skip term, y_t = C_t . x_L.
    P0 = dict(P, D=np.zeros_like(P["D"]))
    y0, _ = papers.vssd(P0, u)
    assert np.max(np.abs(to_numpy(y) - y_ref)) <= RTOL * np.max(np.abs(y0))


def test_vssd_first_token_reads_the_last():
    """A change at the last token changes the first token's output (non-causal)."""
    layer = _layer("vssd", "VSSD", "numpy", VSSD_DIMS)
    u = _u((1, 5, 2, 3), seed=3)
    u2 = u.copy()
    u2[0, -1] += 1.0
    y1, y2 = to_numpy(layer(t(u))), to_numpy(layer(t(u2)))
    assert np.max(np.abs(y1[0, 0] - y2[0, 0])) > 1e-6


def test_vssd_initial_state_enters_before_the_first_token():
    layer = _layer("vssd", "VSSD", "numpy", VSSD_DIMS)
    P = _params(layer)
    u = _u((2, 6, 2, 3), seed=5)
    x0 = _u((2, 2, 3, 4), seed=6)
    y, xL = layer(t(u), initial_state=t(x0), return_state=True)
    y_ref, x_ref = papers.vssd(P, u, x0=x0)
    assert rel(to_numpy(y), y_ref) <= RTOL
    assert rel(to_numpy(xL), x_ref) <= RTOL
    # Chaining through the returned state gives the whole sequence's final state.
    _, s1 = layer(t(u[:, :2]), return_state=True)
    _, s2 = layer(t(u[:, 2:]), initial_state=s1, return_state=True)
    assert rel(to_numpy(s2), papers.vssd(P, u)[1]) <= RTOL


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_vssd_packed_sequences_have_their_own_final_state(backend):
    layer = _layer("vssd", "VSSD", backend, VSSD_DIMS)
    P = _params(layer)
    lengths = [5, 2, 5]
    seqs = [_u((1, n, 2, 3), seed=10 + i) for i, n in enumerate(lengths)]
    cu = torch.tensor(np.cumsum([0] + lengths))
    y, xs = layer(t(np.concatenate(seqs, axis=1)), cu_seqlens=cu, return_state=True)
    refs = [papers.vssd(P, s) for s in seqs]
    assert rel(to_numpy(y), np.concatenate([r[0] for r in refs], axis=1)) <= RTOL
    assert rel(to_numpy(xs), np.concatenate([r[1] for r in refs], axis=0)) <= RTOL


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_vssd_step_is_an_error(backend):
    layer = _layer("vssd", "VSSD", backend, VSSD_DIMS)
    st = layer.init_state(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="global"):
        layer.step(torch.zeros(1, 2, 3, dtype=torch.float64), st)


@pytest.mark.parametrize("L,chunk", [(1, None), (13, 4), (40, 7)])
def test_vssd_torch_matches_the_reference(L, chunk):
    ref = _layer("vssd", "VSSD", "numpy", VSSD_DIMS)
    tl = _layer("vssd", "VSSD", "torch", VSSD_DIMS)
    tl.chunk_size = chunk
    u = t(_u((2, L, 2, 3), seed=L))
    x0 = t(_u((2, 2, 3, 4), seed=L + 1))
    y, xL = tl(u, initial_state=x0, return_state=True)
    yr, xr = ref(u, initial_state=x0, return_state=True)
    assert rel(to_numpy(y), to_numpy(yr)) <= RTOL
    assert rel(to_numpy(xL), to_numpy(xr)) <= RTOL


def test_vssd_torch_gradients():
    layer = _layer("vssd", "VSSD", "torch", dict(Hd=2, P=2, N=3))
    layer.chunk_size = 2
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    u = torch.randn(2, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    x0 = (0.5 * torch.randn(2, 2, 2, 3, dtype=torch.float64)).requires_grad_()

    def f(u, x0, *ps):
        y, xL = torch.func.functional_call(layer, dict(zip(names, ps)), (u,),
                                           {"initial_state": x0, "return_state": True})
        return y, xL
    assert torch.autograd.gradcheck(f, (u, x0, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------
# S5, bidirectional: shared Lambda, B, steps and D; one C per direction
# ----------------------------------------------------------------------------

def test_s5_bidirectional_state_dict_shapes():
    layer = _layer("s5_bidirectional", "S5Bidirectional", "numpy", S5B_DIMS)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"Lambda": (4,), "B": (4, 3), "C": (2, 3, 4), "D": (3,), "log_dt": (4,)}


@pytest.mark.parametrize("Bsz,L", [(1, 1), (3, 7), (2, 13)])
def test_s5_bidirectional_reference_matches_the_oracle(Bsz, L):
    layer = _layer("s5_bidirectional", "S5Bidirectional", "numpy", S5B_DIMS)
    P = _params(layer)
    u = _u((Bsz, L, 3), seed=L)
    assert rel(to_numpy(layer(t(u))), papers.s5_bidirectional(P, u)) <= RTOL


@pytest.mark.parametrize("L", [7, 40])        # 40: the torch backend's FFT form per direction
def test_s5_bidirectional_torch_matches_the_reference(L):
    ref = _layer("s5_bidirectional", "S5Bidirectional", "numpy", S5B_DIMS)
    tl = _layer("s5_bidirectional", "S5Bidirectional", "torch", S5B_DIMS)
    u = t(_u((2, L, 3), seed=L))
    assert rel(to_numpy(tl(u)), to_numpy(ref(u))) <= RTOL


def test_s5_bidirectional_torch_gradients():
    layer = _layer("s5_bidirectional", "S5Bidirectional", "torch", dict(H=2, P=3))
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    u = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)

    def f(u, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (u,))
    assert torch.autograd.gradcheck(f, (u, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_a_shared_parameter_gradient_sums_the_directions():
    """The shared Lambda's gradient equals the sum of the two copies' gradients in the
    same layer with every parameter separate and both copies equal."""
    text = (ROOT / "examples" / "s5_bidirectional.ssm").read_text()
    sep_text = text.replace(" separate =", " =").replace("params = shared", "params = separate")
    assert sep_text != text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shared = _layer("s5_bidirectional", "S5Bidirectional", "torch", S5B_DIMS)
        sep = ssmc.loads(sep_text, backend="torch").S5Bidirectional(dtype=torch.float64, **S5B_DIMS)
    sd = shared.state_dict()
    sep.load_state_dict({k: (v if k == "C" else torch.stack([v, v])) for k, v in sd.items()})
    u = t(_u((2, 9, 3), seed=1))
    w = t(_u((2, 9, 3), seed=2))
    for layer in (shared, sep):
        layer.zero_grad()
        (layer(u) * w).sum().backward()
    assert rel(to_numpy(shared(u)), to_numpy(sep(u))) <= RTOL
    for name in ("Lambda", "B", "D", "log_dt"):
        g_shared = to_numpy(shared.get_parameter(name).grad)
        g_sep = to_numpy(sep.get_parameter(name).grad)
        assert rel(g_shared, g_sep[0] + g_sep[1]) <= 1e-9, name
        if name != "D":   # (D's skip term is the same in both directions)
            assert rel(g_sep[0], g_sep[1]) > 1e-6, name     # the directions contribute differently
    assert rel(to_numpy(shared.get_parameter("C").grad), to_numpy(sep.get_parameter("C").grad)) <= 1e-9


# ----------------------------------------------------------------------------
# the syntax: flags after the dims, `params =` on linear and conv
# ----------------------------------------------------------------------------

MIXED = """
ssm Mixed {
  dims    H = 3, N = 2
  input   u[H]
  state   x[H, N]
  param   shared[H, N] shared = log(1 + arange(N))
  param   separate[H] frozen separate = ones
  param   dt_bias[H] = inv_softplus(0.05)
  A  = -exp(shared) : diagonal
  dt = softplus(linear(u, H, params = separate) + dt_bias)
  xc = silu(conv(u, 3, bias = true, params = shared))
  B  = linear(xc, N, bias = true)
  C  = linear(u, N, params = shared)
  dynamics   x' = A x + B * xc
  discretize zoh, step = dt
  scan       ORDER
  output     y = sum(C * x, N) + separate * u
}
"""


@pytest.mark.parametrize("order,copies", [("bidirectional(params = separate)", 2),
                                          ("cross2d(rows = R, cols = Cc)", 4),
                                          ("bidirectional(merge = mean)", 2)])
def test_shapes_follow_each_tensors_sharing(order, copies):
    text = MIXED.replace("ORDER", order).replace("dims    H = 3, N = 2", "dims    H = 3, N = 2, R = 2, Cc = 3")
    layer = ssmc.loads(text, backend="numpy").Mixed()
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    scan_separate = "separate" in order or "cross2d" in order
    lead = (copies,) if scan_separate else ()
    assert shapes == {
        "shared": (3, 2), "separate": (copies, 3), "dt_bias": lead + (3,),
        "dt_proj": (copies, 3, 3), "xc_conv": (3, 3), "xc_conv_bias": (3,),
        "B_proj": lead + (2, 3), "B_proj_bias": lead + (2,), "C_proj": (2, 3),
    }


def test_mixed_sharing_agrees_with_the_evaluator():
    from ssmc.testing.harness import ALL_CHECKS, check_spec
    for order, length, grad in (("bidirectional(params = separate)", 7, True),
                                ("cross2d(rows = R, cols = Cc)", 6, False), ("bidirectional", 5, False)):
        text = MIXED.replace("ORDER", order).replace("dims    H = 3, N = 2", "dims    H = 3, N = 2, R = 2, Cc = 3")
        # (gradients once: the sharing is the same code for every order)
        checks = ALL_CHECKS if grad else tuple(c for c in ALL_CHECKS if c != "grad")
        rep = check_spec(text, length=length, backends=("numpy", "torch"), checks=checks)
        assert not rep.findings, "\n".join(map(str, rep.findings))
        assert rep.checks_run >= 3


def test_flags_change_nothing_with_one_direction():
    layer = ssmc.loads(MIXED.replace("ORDER", "causal"), backend="numpy").Mixed()
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes["separate"] == (3,) and shapes["dt_proj"] == (3, 3)


def test_shared_and_separate_stay_names():
    text = """
ssm Names {
  dims  H = 2
  input u[H], shared[H]
  state x[H]
  param separate[H] shared = ones
  param frozen_[H] separate complex = ones
  A = -separate : diagonal
  dynamics x' = A x + u * shared
  discretize zoh, step = 1
  scan bidirectional(params = shared)
  output y = re(frozen_ * x)
}
"""
    layer = ssmc.loads(text, backend="numpy").Names()
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"separate": (2,), "frozen_": (2, 2)}
    y = layer(torch.ones(1, 3, 2), shared=torch.ones(1, 3, 2))
    assert y.shape == (1, 3, 2)


@pytest.mark.parametrize("line,where,message", [
    ("  param   dt_bias[H] tied = inv_softplus(0.05)", (8, 22), "unknown flag 'tied'"),
    ("  param   dt_bias[H] shared separate = inv_softplus(0.05)", (8, 11), "both shared and separate"),
    ("  param   dt_bias[H] shared shared = inv_softplus(0.05)", (8, 11), "shared twice"),
])
def test_bad_flags_are_located_errors(line, where, message):
    text = MIXED.replace("ORDER", "bidirectional").replace("  param   dt_bias[H] = inv_softplus(0.05)", line)
    with pytest.raises(ssmc.SpecError, match=message) as e:
        ssmc.loads(text, backend="numpy")
    assert (e.value.line, e.value.column) == where


@pytest.mark.parametrize("value", ["maybe", "true", "2"])
def test_bad_params_keyword_is_a_located_error(value):
    text = MIXED.replace("ORDER", "bidirectional").replace("linear(u, N, params = shared)",
                                                            f"linear(u, N, params = {value})")
    with pytest.raises(ssmc.SpecError, match="params must be shared or separate") as e:
        ssmc.loads(text, backend="numpy")
    assert e.value.line == 13


def test_global_takes_no_options():
    text = (ROOT / "examples" / "vssd.ssm").read_text().replace("scan       global", "scan global(merge = add)")
    with pytest.raises(ssmc.SpecError, match="takes no options"):
        ssmc.loads(text, backend="numpy")


# ----------------------------------------------------------------------------
# Hydra: a shifted readout (prev) in both directions, shared A, dt_bias and diagonal
# ----------------------------------------------------------------------------

HYDRA_DIMS = dict(Hd=2, P=3, N=4)


def test_hydra_state_dict_shapes():
    layer = _layer("hydra", "Hydra", "numpy", HYDRA_DIMS)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"A_log": (2,), "dt_bias": (2,), "D": (2,), "dt_proj": (2, 2, 6), "B_proj": (2, 4, 6),
                      "C_proj": (2, 4, 6), "y_proj": (2, 6)}


@pytest.mark.parametrize("Bsz,L", [(1, 1), (1, 2), (3, 7), (2, 13)])
def test_hydra_reference_matches_the_oracle(Bsz, L):
    layer = _layer("hydra", "Hydra", "numpy", HYDRA_DIMS)
    P = _params(layer)
    u = _u((Bsz, L, 2, 3), seed=L)
    assert rel(to_numpy(layer(t(u))), papers.hydra(P, u)) <= RTOL
    # The mixer part alone (no diagonal): the shifted, flipped SSD outputs.
    P0 = dict(P, D=np.zeros_like(P["D"]), y_proj=np.zeros_like(P["y_proj"]))
    layer0 = _layer("hydra", "Hydra", "numpy", HYDRA_DIMS)
    layer0.load_state_dict({k: t(v) for k, v in P0.items()})
    if L > 1:
        assert rel(to_numpy(layer0(t(u))), papers.hydra(P0, u)) <= RTOL


@pytest.mark.parametrize("L,chunk", [(7, None), (13, 4)])
def test_hydra_torch_matches_the_reference(L, chunk):
    ref = _layer("hydra", "Hydra", "numpy", HYDRA_DIMS)
    tl = _layer("hydra", "Hydra", "torch", HYDRA_DIMS)
    tl.chunk_size = chunk
    u = t(_u((2, L, 2, 3), seed=L))
    assert rel(to_numpy(tl(u)), to_numpy(ref(u))) <= RTOL


def test_hydra_torch_gradients():
    layer = _layer("hydra", "Hydra", "torch", dict(Hd=2, P=2, N=2))
    layer.chunk_size = 2
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    u = torch.randn(2, 5, 2, 2, dtype=torch.float64, requires_grad=True)

    def f(u, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (u,))
    assert torch.autograd.gradcheck(f, (u, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


GLOBAL_VARIANTS = {
    "identity": """
ssm G {
  dims H = 2, N = 3
  input u[H]
  state x[H, N]
  B = linear(u, N)
  g = 1 : scalar
  recurrence x = g x + B * u
  scan global
  output y = sum(linear(u, N) * x, N)
}""",
    "dense": """
ssm G {
  dims H = 2, N = 3
  input u[H]
  state x[H, N]
  param Am[N, N] = normal(0, 0.3)
  param Bp[H, N] = normal(0, 1)
  A = Am : dense
  dynamics x' = A x + Bp * u
  discretize bilinear, step = 0.1
  scan global
  output y = sum(x, N) + u
}""",
    "complex_conv": """
ssm G {
  dims H = 2, N = 3
  input u[H]
  state x[H, N] complex
  param lam[H, N] complex = -0.5 + 1j * arange(N)
  A = lam : diagonal
  xc = silu(conv(u, 3, bias = true))
  dynamics x' = A x + xc
  discretize zoh, step = softplus(linear(u, H))
  scan global
  output y = 2 * re(sum(x, N)) * xc
}""",
}


@pytest.mark.parametrize("name", list(GLOBAL_VARIANTS))
def test_global_variants_agree_with_the_evaluator(name):
    from ssmc.testing.harness import check_spec
    rep = check_spec(GLOBAL_VARIANTS[name], length=7, backends=("numpy", "torch"))
    assert not rep.findings, "\n".join(map(str, rep.findings))
    assert rep.checks_run >= 6


def test_global_with_several_states_is_refused():
    text = """
ssm G {
  dims H = 2
  input u[H]
  state x[H]
  state z[H]
  g = 0.5 : scalar
  recurrence x = g x + u
  recurrence z = g z + u
  scan global
  output y = x + z
}"""
    with pytest.raises(ssmc.SpecError, match="several states") as e:
        ssmc.loads(text, backend="numpy")
    assert e.value.line == 10
