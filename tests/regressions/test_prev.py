"""prev(e, k) and prev(x): errors, linearity, the algorithm chosen, and a small
spec against an independent loop (every backend path: numpy, torch chunks, the
state's tails through chaining, step() and cu_seqlens, reverse and bidirectional
scans through the differential harness)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ssmc
from ssmc.testing.harness import check_spec

BASE = """\
ssm T {
  dims H = 3, N = 4
  input u[H]
  state x[H, N]
  param A_log[H, N] = log(1 + arange(N))
  param B[H, N] = normal(0, 1)
  param C[H, N] = normal(0, 1)
  param log_dt[H] = log_uniform(0.01, 0.1)
  A = -exp(A_log) : diagonal
  dynamics x' = A x + B * u
  discretize zoh, step = exp(log_dt)
  scan causal
  output y = sum(C * x, N)
}
"""


def _edit(old, new, text=BASE):
    assert old in text
    return text.replace(old, new)


def _error(text):
    with pytest.raises(ssmc.SpecError) as e:
        ssmc.loads(text, backend="numpy")
    return e.value


@pytest.mark.parametrize("old,new,line,msg,hint", [
    ("B * u", "B * prev(B)", 10, "argument must be per-token", "without prev()"),
    ("output y = sum(C * x, N)", "output y = sum(C * prev(x, 2), N)", 13, "one token back", "before the current"),
    ("output y = sum(C * x, N)", "output y = prev(sum(C * x, N))", 13, "reads the state", "sum(C * prev(x), N)"),
    ("B * u", "B * prev(x)", 10, "input term may not depend on the state", None),
    ("step = exp(log_dt)", "step = exp(log_dt) * prev(x)", 11, "step may not depend on the state", None),
    ("B * u", "B * u * prev(u)", 10, "not linear", None),
    ("output y = sum(C * x, N)", "output y = sum(C * x, N) + prev(u, 1.5)", 13, "positive integer", "prev(e, 2)"),
    ("output y = sum(C * x, N)", "output y = sum(C * x, N) + prev(u, 0)", 13, "positive integer", None),
    ("output y = sum(C * x, N)", "output y = sum(C * x, N) + prev(u, 1, 2)", 13, "takes 1 to 2 arguments", None),
    ("= normal(0, 1)\n  param C", "= prev(normal(0, 1))\n  param C", 6, "not allowed in an initializer", None),
])
def test_errors(old, new, line, msg, hint):
    e = _error(_edit(old, new))
    text = str(e)
    assert msg in text, text
    assert f":{line}:" in text, text
    if hint:
        assert hint in text, text


def test_prev_is_reserved():
    assert "prev" in str(_error(_edit("param C[H, N]", "param prev[H, N]").replace("C * x", "prev * x")))


def _algorithm(text):
    from ssmc.compiler import analyse
    from ssmc.errors import Source
    return analyse(Source(text, "<t>")).graphs[0].meta["algorithm"]


def test_algorithms():
    # LTI: the convolution form; a readout of prev(x) or a shifted input term: a scan
    assert _algorithm(BASE)["name"] == "fft_conv"
    alg = _algorithm(_edit("sum(C * x, N)", "sum(C * prev(x), N)"))
    assert alg["name"] == "chunked_scan" and "prev(x)" in alg["reason"]
    assert _algorithm(_edit("B * u", "B * prev(u)"))["name"] == "chunked_scan"
    # a Mamba-2-like spec that would take the SSD form, with a readout of prev(x)
    ssd = """ssm S {
  dims Hd = 2, P = 3, N = 4
  input u[Hd, P]
  state x[Hd, P, N]
  param A_log[Hd] = log(uniform(1, 16))
  A = -exp(A_log) : scalar
  dt = softplus(linear(u, Hd))
  B = linear(u, N)
  C = linear(u, N)
  dynamics x' = A x + B * u
  discretize zoh_euler, step = dt
  scan causal
  output y = sum(C * x, N)
}"""
    assert _algorithm(ssd)["name"] == "ssd"
    assert _algorithm(ssd.replace("sum(C * x, N)", "sum(C * prev(x), N)"))["name"] == "chunked_scan"


SPEC = """\
ssm T {
  dims H = 3, N = 4
  input u[H], tau[]
  state x[H, N]
  param A_log[H, N] = log(1 + arange(N))
  param W[H, N] = normal(0, 1)
  dt = softplus(linear(u, H)) * tau
  Ab = exp(-exp(A_log) * dt) : diagonal
  B = linear(u, N)
  v = prev(u)
  recurrence x = Ab x + dt * prev(B * u) + dt * B * prev(u, 2)
  scan causal
  output y = sum(W * prev(x), N) + sum(W * x, N) + v * prev(tau, 3)
}
"""


def _loop(P, u, tau, x0=None):
    """SPEC written out with explicit histories (independent of ssmc)."""
    Bsz, L, H = u.shape
    N = P["A_log"].shape[1]
    x = np.zeros((Bsz, H, N)) if x0 is None else x0.copy()
    y = np.zeros((Bsz, L, H))
    for t in range(L):
        def at(a, s):
            return a[:, t - s] if t - s >= 0 else np.zeros_like(a[:, 0])
        dt = np.logaddexp(0, u[:, t] @ P["dt_proj"].T) * tau[:, t, None]
        Bt = u[:, t] @ P["B_proj"].T
        Bp = at(u, 1) @ P["B_proj"].T
        xp = x
        x = (np.exp(-np.exp(P["A_log"]) * dt[:, :, None]) * x
             + dt[:, :, None] * Bp[:, None, :] * at(u, 1)[:, :, None]
             + dt[:, :, None] * Bt[:, None, :] * at(u, 2)[:, :, None])
        y[:, t] = ((P["W"] * xp).sum(-1) + (P["W"] * x).sum(-1)
                   + at(u, 1) * at(tau, 3)[:, None])
    return y, x


@pytest.mark.parametrize("L", [1, 2, 5, 11])
def test_against_a_loop(L):
    mod = ssmc.loads(SPEC, backend="numpy")
    layer = mod.T(seed=0, dtype=torch.float64)
    P = {k: v.double().numpy() for k, v in layer.state_dict().items()}
    rng = np.random.default_rng(L)
    u, tau = rng.standard_normal((2, L, 3)), rng.uniform(0.5, 1.5, (2, L))
    x0 = rng.standard_normal((2, 3, 4))
    tails = layer.init_state(2)[1:]
    y, s = layer(torch.from_numpy(u), tau=torch.from_numpy(tau), initial_state=(torch.from_numpy(x0), *tails),
                 return_state=True)
    y_ref, x_ref = _loop(P, u, tau, x0)
    assert np.abs(y.numpy() - y_ref).max() <= 1e-10 * np.abs(y_ref).max()
    assert np.abs(s[0].numpy() - x_ref).max() <= 1e-10 * np.abs(x_ref).max()
    # tails: v_prev (u, 1), x_prev (B * u, 1), x_prev2 (u, 2), y_prev (tau, 3)
    assert [t.shape[1] for t in s[1:]] == [1, 1, 2, 3]
    assert [name for name, *_ in mod.T.CONVS] == ["v_prev", "x_prev", "x_prev2", "y_prev"]


def test_state_checks_name_the_tail():
    layer = ssmc.loads(SPEC, backend="torch").T()
    st = list(layer.init_state(2))
    st[4] = torch.zeros(2, 2)
    with pytest.raises(ssmc.ShapeError, match="prev tail of y_prev"):
        layer(torch.zeros(2, 3, 3), tau=torch.ones(2, 3), initial_state=tuple(st))


@pytest.mark.parametrize("order", ["causal", "reverse", "bidirectional(merge = add, params = shared)"])
def test_harness(order):
    rep = check_spec(SPEC.replace("scan causal", f"scan {order}"), length=6)
    assert rep.ok, [str(f) for f in rep.findings]
    assert rep.checks_run >= 4


def test_torch_chunks():
    ref = ssmc.loads(SPEC, backend="numpy").T(seed=0, dtype=torch.float64)
    tor = ssmc.loads(SPEC, backend="torch").T(seed=0, dtype=torch.float64)
    tor.chunk_size = 2
    u, tau = torch.randn(2, 9, 3, dtype=torch.float64), torch.rand(2, 9, dtype=torch.float64) + 0.5
    y_ref = ref(u, tau=tau)
    assert (tor(u, tau=tau) - y_ref).abs().max() <= 1e-12 * y_ref.abs().max()


def test_evaluator_reads_prev_as_documented():
    """The differential tester's evaluator on its own: prev(u, 2) is zero for two tokens,
    prev(x) the entering state at the first token (x_t = 0.5 x_{t-1} + u_t)."""
    from ssmc.frontend.parser import parse
    from ssmc.testing.evaluator import evaluate
    text = """ssm E {
  dims H = 1
  input u[H]
  state x[H]
  a = 0.5 : diagonal
  recurrence x = a x + u
  scan causal
  output y = prev(x) + 10 * prev(u, 2)
}"""
    block = parse(text, "<e>").blocks[0]
    u = np.array([[[1.0], [2.0], [3.0], [4.0]]])
    y = evaluate(block, {"H": 1}, {}, {"u": u}, initial_state=np.array([[8.0]]))
    xs = [8.0]
    for v in (1, 2, 3, 4):
        xs.append(0.5 * xs[-1] + v)
    want = [xs[0], xs[1], xs[2] + 10 * 1, xs[3] + 10 * 2]
    assert np.allclose(y[0, :, 0], want, rtol=0, atol=1e-14)


COMPLEX = """\
ssm T {
  dims H = 3, N = 4
  input u[H]
  state x[H, N] complex
  param A_log[H, N] = log(1 + arange(N))
  param C[H, N] complex = normal(0, 1)
  A = -exp(A_log) + 1j * arange(N) : diagonal
  g = linear(u, H)
  Bc = linear(u, N) + 1j * linear(u, N)
  dynamics x' = A x + prev(Bc * u) - Bc * u
  discretize zoh, step = 0.1 * softplus(prev(g, 2)) + 0.01
  scan causal
  output y = re(sum(C * prev(x), N))
}
"""


def test_complex_tails_and_a_shifted_step():
    """prev of a complex value carries a complex tail (init_state, chaining, step());
    prev in the step; against the evaluator on numpy and torch."""
    layer = ssmc.loads(COMPLEX, backend="torch").T()
    assert layer.init_state(2)[1].is_complex() and not layer.init_state(2)[2].is_complex()
    rep = check_spec(COMPLEX, length=7)
    assert rep.ok, [str(f) for f in rep.findings]
    assert rep.checks_run >= 10
