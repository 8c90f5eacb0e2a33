"""Issue 8: the linearity check and the algorithm choice depend on meaning, not spelling.

Linearity: named values are coefficients (`B = sum(W_B * u, H)` then `B * u` is linear),
a per-token forcing term beside the u-linear one is accepted, a constant one is not.
Algorithm: the SSD form is found whatever the order of the state's dims, for a decay
not written as exp(...) but known to be positive, and for a diagonal A that does not
vary along the readout's N; `explain` says why SSD was not chosen.

Every accepted spec is run by the NumPy reference and the PyTorch backend in float64
and the outputs must agree to 1e-10; where the SSD form is expected, the PyTorch module
must actually call the SSD chunk function.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import ssmc
from ssmc.compiler import analyse
from ssmc.errors import Source
from ssmc.explain import explain
from ssmc.runtime import torch_ops


def _modules(text: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssmc.loads(text, backend="numpy"), ssmc.loads(text, backend="torch")


def _graph(text: str):
    return analyse(Source(text, "<test>")).graphs[0]


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def agree(text: str, monkeypatch=None, ssd: bool | None = None, length: int = 13, **dims) -> str:
    """Run the spec's block on numpy and torch (float64 inputs); return the torch ALGORITHM.
    ssd=True: the torch forward must call ops.ssd_chunk; ssd=False: it must not."""
    ref, tm = _modules(text)
    (name,) = ref.__all__
    R, T = getattr(ref, name), getattr(tm, name)
    r, t = R(seed=3, **dims), T(seed=3, chunk_size=4, **dims)
    # An LTI system runs its FFT form at every length here (the default waits for 32 tokens).
    t.fft_min_length = 1
    d = r.dims
    gen = torch.Generator().manual_seed(0)
    ins = {n: torch.randn((2, length) + tuple(d[x] for x in ds), generator=gen, dtype=torch.float64)
           for n, ds in R.INPUTS}
    (first, _), *rest = R.INPUTS
    kw = {n: ins[n] for n, _ in rest}
    y_ref = r(ins[first], **kw)
    calls = []
    if monkeypatch is not None:
        real = torch_ops.ssd_chunk

        def counting(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(torch_ops, "ssd_chunk", counting)
    with torch.no_grad():
        y = t(ins[first], **kw)
    assert y.dtype == torch.float64
    assert _rel(y, y_ref) <= 1e-10, _rel(y, y_ref)
    if ssd is not None:
        assert bool(calls) == ssd, (T.ALGORITHM, len(calls))
    return T.ALGORITHM


def spec_error(text: str) -> ssmc.SpecError:
    with pytest.raises(ssmc.SpecError) as info:
        _modules(text)
    return info.value


# --- 1. linearity: named values are coefficients ---------------------------------------

SELECTIVE = """\
ssm Sel {
  dims    H = 3, N = 4
  input   u[H]
  state   x[H, N]
  param   A_log[H, N] = log(uniform(1, 4))
  param   W_B[H, N] = normal(0, 0.5)
  param   W[H, N] = normal(0, 0.5)
  param   C[H, N] = normal(0, 0.5)
  A  = -exp(A_log) : diagonal
  B  = BVALUE
  dynamics   x' = A x + TERM
  discretize zoh, step = 0.1
  scan       causal
  output     y = sum(C * x, N)
}
"""


def selective(b: str = "linear(u, N)", term: str = "B * u") -> str:
    return SELECTIVE.replace("BVALUE", b).replace("TERM", term)


@pytest.mark.parametrize("b", [
    "sum(W_B * u, H)",                                   # explicit params (issue 8)
    "tanh(linear(u, N))",
    "sum(W * u, H) * sigmoid(linear(u, N))",
    "sum(W_B * u, H) + W",                               # a per-token coefficient plus a static one
], ids=["sum-params", "tanh-linear", "sum-times-sigmoid", "sum-plus-param"])
def test_named_selective_coefficient_is_linear(b):
    text = selective(b)
    cls = _graph(text).meta["classification"]
    assert cls["input_coef"] == "token" and not cls["lti"] and cls["driven_by"] == "input"
    assert agree(text) == "chunked_scan"


def test_named_coefficient_same_model_as_linear():
    """`B = sum(W_B * u, H)` is `linear(u, N)` without a bias: with W_B = the projection's
    weight (transposed), both specs compute the same output."""
    ref, _ = _modules(selective("sum(W_B * u, H)"))
    ref2, _ = _modules(selective("linear(u, N, bias = false)"))
    a, b = ref.Sel(seed=0), ref2.Sel(seed=0)
    with torch.no_grad():
        for name in ("A_log", "C"):
            getattr(b, name).copy_(getattr(a, name))
        b.B_proj.copy_(a.W_B.T)
    u = torch.randn(2, 9, 3, dtype=torch.float64)
    assert _rel(a(u), b(u)) <= 1e-12


@pytest.mark.parametrize("term", [
    "B * u + linear(u, N)",                              # S7: a per-token forcing term
    "linear(u, N) + B * u",
    "B * u - linear(u, N)",
    "B * (u + linear(u, N))",
], ids=["plus-forcing", "forcing-first", "minus-forcing", "distributed"])
def test_per_token_forcing_is_accepted(term):
    text = selective("linear(u, N)", term)
    g = _graph(text)
    assert g.meta["classification"]["forcing"] == "token"
    assert "forcing term" in explain(g)
    assert agree(text) == "chunked_scan"


def test_forcing_makes_an_otherwise_lti_system_selective():
    """With static A, B and C the input-linear part is LTI, but a forcing with a bias is not
    a convolution of u: the FFT kernel form would be wrong, so no fft_conv."""
    text = selective("W_B", "B * u + linear(u, N, bias = true)")
    cls = _graph(text).meta["classification"]
    assert cls["input_coef"] == "static" and cls["forcing"] == "token" and not cls["lti"]
    assert agree(text, length=40) != "fft_conv"


@pytest.mark.parametrize("term", [
    "linear(u, N)",
    "B * u + linear(u, N)",
    "sum(W_B * u, H)",                                   # the same model as linear(u, N)
    "linear(u, H, N)",                                   # mixes H: no per-channel kernel
    "B * u - linear(2 * u, N)",
], ids=["linear", "plus-linear", "sum", "linear-mixing", "minus-linear-of-2u"])
def test_linear_map_of_the_input_is_lti(term):
    """A linear(...) without bias is a static linear map: with static A, the system is LTI
    whether it is spelled linear(u, N) or sum(W * u, H), and runs in the FFT form."""
    text = selective("W_B", term)
    cls = _graph(text).meta["classification"]
    assert cls["lti"] and cls["input_coef"] == "static" and cls["forcing"] is None
    assert agree(text, length=40) == "fft_conv"


def test_named_alias_of_the_input_stays_lti():
    """Named values are inlined first: `w = 2 * u` keeps a static coefficient (FFT form)."""
    text = selective("W_B", "B * w").replace("  dynamics", "  w = 2 * u\n  dynamics")
    assert _graph(text).meta["classification"]["lti"]
    assert agree(text, length=40) == "fft_conv"


@pytest.mark.parametrize("term, col, message", [
    ("B * u * u", 25, "not linear in the input 'u'"),            # written in E, B named
    ("B * exp(u)", 29, "not linear in the input 'u'"),
    ("B * linear(u * u, N)", 36, "not linear in the input 'u'"),
    ("B * u + 1", 33, "nor on any per-token value"),
    ("B * u + W", 25, "nor on any per-token value"),          # W's node is its declaration: E itself
], ids=["u-times-u", "exp-u", "u-times-u-in-linear", "plus-one", "plus-param"])
def test_still_refused(term, col, message):
    e = spec_error(selective("sum(W_B * u, H)", term))
    assert message in e.message and (e.span.line, e.span.column) == (11, col), (e.message, e.span)


def test_static_forcing_beside_features_is_refused():
    """A term driven only by features is accepted; a constant beside it is still an error."""
    text = selective("linear(u, N)", "B * f + 1").replace("  dynamics", "  f = silu(linear(u, H))\n  dynamics")
    e = spec_error(text)
    assert "nor on any per-token value" in e.message
    assert agree(selective("linear(u, N)", "B * f").replace("  dynamics", "  f = silu(linear(u, H))\n  dynamics")) \
        == "chunked_scan"


# --- 2. the SSD form does not depend on spelling ---------------------------------------

MAMBA2 = """\
ssm M2 {
  dims    Hd = 2, P = 3, N = 4
  input   u[Hd, P]
  state   STATE
  param   A_log[Hd]   = log(uniform(1, 4))
  param   dt_bias[Hd] = inv_softplus(log_uniform(0.01, 0.1))
  A  = -exp(A_log) : STRUCTURE
  dt = softplus(linear(u, Hd) + dt_bias)
  B  = linear(u, N)
  C  = linear(u, N)
  dynamics   x' = A x + B * u
  discretize RULE, step = dt
  scan       causal
  output     y = sum(C * x, N)
}
"""


@pytest.mark.parametrize("state, structure", [
    (s, k) for s in ("x[Hd, P, N]", "x[N, Hd, P]", "x[Hd, N, P]") for k in ("scalar", "diagonal")
] + [("x[P, N, Hd]", "diagonal")])   # a scalar A may not have the state's last dim
@pytest.mark.parametrize("rule", ["zoh_euler", "zoh"])
def test_ssd_whatever_the_state_dim_order(monkeypatch, state, structure, rule):
    text = MAMBA2.replace("STATE", state).replace("STRUCTURE", structure).replace("RULE", rule)
    assert agree(text, monkeypatch, ssd=True, length=11) == "ssd"


def test_ssd_with_a_forcing_term(monkeypatch):
    """A per-token forcing beside B * u is one more factor over N: the SSD form still applies."""
    text = (MAMBA2.replace("STATE", "x[Hd, P, N]").replace("STRUCTURE", "scalar").replace("RULE", "zoh_euler")
            .replace("B * u\n", "B * u + linear(u, Hd, P, N)\n"))
    assert _graph(text).meta["classification"]["forcing"] == "token"
    assert agree(text, monkeypatch, ssd=True, length=11) == "ssd"


RETNET = """\
ssm RetNet {
  dims    Hd = 2, Dk = 3, Dv = 2, D = 4
  input   u[D]
  state   STATE
  param   g_raw[Hd] = normal(0, 1)
  g = DECAY : scalar
  q = linear(u, Hd, Dk)
  k = linear(u, Hd, Dk)
  v = linear(u, Hd, Dv)
  recurrence x = g x + k * v
  scan       causal
  output     y = sum(q * x, Dk)
}
"""


@pytest.mark.parametrize("decay", [
    "1 - 2 ** (-5 - arange(Hd))",                        # RetNet: a static scalar decay per head
    "exp(log(1 - 2 ** (-5 - arange(Hd))))",              # the same, spelled as an exponential
    "0.9",
    "exp(-0.1)",                                         # a number: the log-decay is a number too
    "sigmoid(g_raw)",
    "sigmoid(linear(u, Hd))",                            # a per-token gate (GLA-like)
    "exp(-softplus(g_raw)) * sigmoid(linear(u, Hd))",
    "0.5 / (1 + exp(g_raw))",
    "sigmoid(linear(u, Hd)) ** 2",
], ids=["retnet", "exp-log", "constant", "exp-constant", "sigmoid-param", "sigmoid-gate", "product", "quotient",
        "power"])
@pytest.mark.parametrize("state", ["x[Hd, Dk, Dv]", "x[Hd, Dv, Dk]"])
def test_ssd_for_a_positive_decay(monkeypatch, decay, state):
    text = RETNET.replace("DECAY", decay).replace("STATE", state)
    assert agree(text, monkeypatch, ssd=True, length=11) == "ssd"


@pytest.mark.parametrize("decay, why", [
    ("g_raw", "not known to be positive"),
    ("1 - 0.1 * arange(Hd)", "not known to be positive"),   # negative for Hd > 10
    ("tanh(g_raw)", "not known to be positive"),
], ids=["param", "arange-may-be-negative", "tanh"])
def test_no_ssd_for_a_decay_of_unknown_sign(monkeypatch, decay, why):
    text = RETNET.replace("DECAY", decay).replace("STATE", "x[Hd, Dk, Dv]")
    g = _graph(text)
    assert g.meta["algorithm"]["name"] == "chunked_scan"
    assert "SSD not chosen: " in g.meta["algorithm"]["reason"] and why in g.meta["algorithm"]["reason"]
    assert "SSD not chosen" in explain(g)
    assert agree(text, monkeypatch, ssd=False) == "chunked_scan"


def test_explain_says_why_a_diagonal_system_is_not_ssd():
    text = MAMBA2.replace("STATE", "x[Hd, P, N]").replace("RULE", "zoh_euler").replace(
        "param   A_log[Hd]", "param   A_log[Hd, N]").replace("STRUCTURE", "diagonal")
    g = _graph(text)
    reason = g.meta["algorithm"]["reason"]
    assert g.meta["algorithm"]["name"] == "chunked_scan"
    assert "SSD not chosen: the decay varies along N" in reason and "diagonal" in reason
    assert "SSD not chosen: the decay varies along N" in explain(g)


def test_explain_shows_the_formed_log_decay():
    g = _graph(RETNET.replace("DECAY", "sigmoid(g_raw)").replace("STATE", "x[Hd, Dk, Dv]"))
    text = explain(g)
    assert "log(Abar) = -softplus(-g_raw)" in text and "logarithm is formed" in text


# --- the LTI (FFT) choice does not depend on spelling either ----------------------------

S4D = """\
ssm S4D {
  dims    H = 3, N = 4
  input   u[H]
  state   STATE complex
  param   log_dt[H]        = log_uniform(0.01, 0.1)
  param   log_A_real[H, N] = log(0.5)
  param   A_imag[H, N]     = pi * arange(N)
  param   B[H, N] complex  = normal(0, 1)
  param   C[H, N] complex  = normal(0, 1)
  param   D[H]             = normal(0, 1)
  A = -exp(log_A_real) + 1j * A_imag : diagonal
  dt = exp(log_dt)
  dynamics   x' = A x + TERM
  discretize zoh, step = dt
  scan       causal
  output     y = OUTPUT
}
"""


@pytest.mark.parametrize("state, term, output", [
    ("x[H, N]", "B * u", "2 * re(sum(C * x, N)) + D * u"),
    ("x[N, H]", "B * u", "2 * re(sum(C * x, N)) + D * u"),
    ("x[H, N]", "u * B", "D * u + re(sum(x * C, N)) * 2"),
    ("x[N, H]", "-(-B * u)", "2 * re(sum(C * x, N)) + D * u"),
    ("x[H, N]", "B * w", "2 * re(sum(C * x, N)) + D * u"),
], ids=["as-written", "state-dims-swapped", "operands-swapped", "double-negation", "named-input"])
def test_fft_whatever_the_spelling(state, term, output):
    text = S4D.replace("STATE", state).replace("TERM", term).replace("OUTPUT", output)
    text = text.replace("  dt = exp", "  w = u\n  dt = exp")
    assert agree(text, length=70) == "fft_conv"


# --- the newly found SSD forms: gradients, chaining and step() --------------------------

NEW_SSD = {
    "retnet-state-swapped": RETNET.replace("DECAY", "1 - 2 ** (-5 - arange(Hd))").replace("STATE", "x[Hd, Dv, Dk]"),
    "gate": RETNET.replace("DECAY", "sigmoid(linear(u, Hd))").replace("STATE", "x[Hd, Dk, Dv]"),
    "mamba2-n-first-diagonal": MAMBA2.replace("STATE", "x[N, Hd, P]").replace("STRUCTURE", "diagonal")
    .replace("RULE", "zoh"),
}


@pytest.mark.parametrize("name", list(NEW_SSD))
def test_new_ssd_forms_gradients_and_state(monkeypatch, name):
    _, tm = _modules(NEW_SSD[name])
    (cls,) = [getattr(tm, n) for n in tm.__all__]
    assert cls.ALGORITHM == "ssd"
    small = {d: 2 for d, _ in cls.DIMS}
    layer = cls(seed=0, dtype=torch.float64, chunk_size=2, **small)
    layer.ssd_block = 2
    d = layer.dims
    (uname, udims), = cls.INPUTS
    gen = torch.Generator().manual_seed(1)
    u = torch.randn((1, 5) + tuple(d[x] for x in udims), generator=gen, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x0 = layer.init_state(1, dtype=torch.float64)
    x0 = (torch.randn_like(x0) * 0.5).requires_grad_()

    def f(u, x0, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (u,), {"initial_state": x0})

    calls = []
    real = torch_ops.ssd_chunk
    monkeypatch.setattr(torch_ops, "ssd_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.autograd.gradcheck(f, (u.clone().requires_grad_(), x0, *params), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert calls
    with torch.no_grad():
        y, last = layer(u, return_state=True)
        y1, s1 = layer(u[:, :3], return_state=True)
        y2, s2 = layer(u[:, 3:], initial_state=s1, return_state=True)
        assert _rel(torch.cat([y1, y2], 1), y) < 1e-12 and _rel(s2, last) < 1e-12
        st, ys = layer.init_state(1, dtype=torch.float64), []
        for i in range(u.shape[1]):
            yt, st = layer.step(u[:, i], st)
            ys.append(yt)
        assert _rel(torch.stack(ys, 1), y) < 1e-12 and _rel(st, last) < 1e-12


@pytest.mark.parametrize("output", [
    "sum(C * x, N)",
    "linear(x, H)",                                      # the readout as a linear map of the state
    "linear(x, H, bias = true) + linear(u, H)",
], ids=["sum", "linear-of-state", "linear-of-state-and-input"])
def test_fft_for_a_readout_written_with_linear(output):
    text = selective("W_B", "B * u").replace("y = sum(C * x, N)", f"y = {output}")
    assert _graph(text).meta["classification"]["lti"]
    assert agree(text, length=40) == "fft_conv"


@pytest.mark.parametrize("output", [
    "exp(r) / sum(exp(r), H)",                            # a softmax over H of the readout r
    "exp(r) / (1 + sum(exp(r), H))",
], ids=["softmax", "over-one-plus-sum"])
def test_a_sum_of_a_nonlinear_readout_is_not_cancelled(output):
    """Found with issue 9 (GSA's softmax readout): the linearity check wrote sum(e, H) as a
    marker times e, so exp(r) / sum(exp(r), H) cancelled to 1 / marker, a readout 'linear
    and static' in the state; an LTI system then ran its FFT form and was wrong (0.25 off)."""
    text = selective("W_B", "B * u").replace("y = sum(C * x, N)", f"y = {output}\n  r = sum(C * x, N)")
    cls = _graph(text).meta["classification"]
    assert not cls["readout_linear"] and not cls["lti"]
    assert agree(text, length=40) == "chunked_scan"
