"""`input s[H] complex` (docs/language.md, section 6, Decision (24)).

The NumPy reference against the recurrence written here (complex diagonal ZOH, S4D-like)
at 1e-10; every backend through the differential harness (forward, initial state,
step(), chaining, cu_seqlens, float32, gradcheck in float64 with the complex input);
the dtype rules and their ShapeErrors; the spec errors.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import ssmc
from ssmc.frontend.ast import dump
from ssmc.frontend.parser import parse
from ssmc.testing.harness import check_spec

SPEC = """\
ssm Cx {
  dims H = 2, N = 3
  input s[H] complex, z[H]
  state x[H, N] complex
  param A_log[H, N] = log(1 + arange(N))
  param A_im[H, N] = normal(0, 1)
  param B[H, N] complex = normal(0, 0.5)
  param C[H, N] complex = normal(0, 0.5)
  param D[H] = normal(0, 1)
  A = -exp(A_log) + 1j * A_im : diagonal
  dt = softplus(z)
  dynamics x' = A x + B * s
  discretize zoh, step = dt
  scan causal
  output y = sum(C * x, N) + D * s
}
"""
# A complex input that is not the primary one, and a real output.
SECOND = SPEC.replace("input s[H] complex, z[H]", "input z[H]\n  input s[H] complex").replace(
    "output y = sum(C * x, N) + D * s", "output y = re(sum(C * x, N)) + D * abs(s) * z")


def _load(text, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssmc.loads(text, backend=backend, filename="cx.ssm")


def _draw(seed=0, L=9, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    s = torch.complex(torch.randn(2, L, 2, generator=g), torch.randn(2, L, 2, generator=g)).to(dtype)
    z = torch.randn(2, L, 2, generator=g).to(real)
    return s, z


def test_parsed_flag_and_real_inputs_print_as_before():
    (blk,) = parse(SPEC).blocks
    s, z = [d for d in blk.body if type(d).__name__ == "InputDecl"]
    assert (s.name, s.complex, z.name, z.complex) == ("s", True, "z", False)
    assert "complex=True" in dump(s) and "complex" not in dump(z)


def test_reference_against_the_equations():
    layer = _load(SPEC, "numpy").Cx(seed=1, dtype=torch.float64)
    p = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    s, z = _draw()
    y = layer(s, z=z)
    assert y.dtype == torch.complex128
    A = -np.exp(p["A_log"]) + 1j * p["A_im"]
    x = np.zeros((2, 2, 3), complex)
    want = []
    for t in range(s.shape[1]):
        st, zt = s[:, t].numpy(), z[:, t].numpy()
        dt = np.log1p(np.exp(zt))[..., None]
        x = np.exp(dt * A) * x + (np.exp(dt * A) - 1) / A * p["B"] * st[..., None]
        want.append((p["C"] * x).sum(-1) + p["D"] * st)
    np.testing.assert_allclose(y.numpy(), np.stack(want, 1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("text", [SPEC, SECOND], ids=["primary", "second"])
def test_numpy_and_torch_through_the_harness(text):
    rep = check_spec(text, {}, 7, backends=("numpy", "torch"), seed=3)
    assert not rep.findings, "\n".join(map(str, rep.findings))
    assert rep.checks_run >= 10


def test_triton_through_the_harness():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    rep = check_spec(SPEC, {}, 5, backends=("numpy", "torch", "triton"), seed=2)
    assert not rep.findings, "\n".join(map(str, rep.findings))
    assert not rep.unsupported, rep.unsupported


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_dtypes(backend):
    mod = _load(SPEC, backend)
    layer = mod.Cx(seed=0)
    s, z = _draw(dtype=torch.complex64)
    assert layer(s, z=z).dtype == torch.complex64
    y, st = layer.step(s[:, 0], layer.init_state(2, dtype=torch.float32), z=z[:, 0])
    assert y.dtype == torch.complex64 and y.shape == (2, 2)
    s2, z2 = _draw(dtype=torch.complex128)
    assert layer(s2, z=z2).dtype == torch.complex128
    real = _load(SECOND, backend).Cx(seed=0)
    assert real(z, s=s).dtype == torch.float32    # a real output in the input's class


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_shape_errors(backend):
    layer = _load(SPEC, backend).Cx(seed=0)
    s, z = _draw(dtype=torch.complex64)
    with pytest.raises(ssmc.ShapeError) as info:
        layer(s.real.contiguous(), z=z)
    msg = str(info.value)
    assert "s is declared complex" in msg and "complex64 or complex128" in msg and "float32" in msg
    assert "\n" not in msg
    with pytest.raises(ssmc.ShapeError) as info:
        layer(s, z=z.to(torch.complex64))
    assert "z is real" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ssmc.ShapeError):
        layer.step(s.real[:, 0].contiguous(), layer.init_state(2), z=z[:, 0])


@pytest.mark.parametrize("edit, fragment, line", [
    (("state x[H, N] complex", "state x[H, N]"), "the input term is complex but the state 'x' is real", 12),
    (("dt = softplus(z)", "dt = softplus(re(s) + z)\n  w = sigmoid(s)"), "sigmoid() needs a real argument", 12),
    (("discretize zoh, step = dt", "discretize zoh, step = dt * s"), "step", 13),
])
def test_spec_errors(edit, fragment, line):
    text = SPEC.replace(*edit)
    if edit[1] == "state x[H, N]":
        # everything else real: only the input makes the input term complex
        for a, b in (("A = -exp(A_log) + 1j * A_im", "A = -exp(A_log)"), ("param B[H, N] complex", "param B[H, N]"),
                     ("param C[H, N] complex", "param C[H, N]")):
            text = text.replace(a, b)
    if "w = sigmoid" in text:
        text = text.replace("output y = sum(C * x, N) + D * s", "output y = sum(C * x, N) + D * s * w")
    with pytest.raises(ssmc.SpecError) as info:
        _load(text, "numpy")
    assert fragment in info.value.message, info.value.message
    assert info.value.line == line


def test_an_lti_system_with_a_complex_input_takes_the_recurrence():
    lti = SPEC.replace("dt = softplus(z)", "param log_dt[H] = log_uniform(0.01, 0.1)\n  dt = exp(log_dt)").replace(
        "input s[H] complex, z[H]", "input s[H] complex").replace(
        "output y = sum(C * x, N) + D * s", "output y = 2 * re(sum(C * x, N))")
    real = lti.replace("input s[H] complex", "input s[H]")
    assert _load(real, "torch").Cx.ALGORITHM == "fft_conv"
    assert _load(lti, "torch").Cx.ALGORITHM != "fft_conv"
    rep = check_spec(lti, {}, 6, backends=("numpy", "torch"), seed=4)
    assert not rep.findings, "\n".join(map(str, rep.findings))


def test_cli_run_draws_complex_values(tmp_path):
    from click.testing import CliRunner

    from ssmc.cli import main
    p = tmp_path / "cx.ssm"
    p.write_text(SPEC)
    r = CliRunner().invoke(main, ["run", str(p), "--length", "5", "--backend", "numpy"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "complex128" in r.output or "complex64" in r.output
