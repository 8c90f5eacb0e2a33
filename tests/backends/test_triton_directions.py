"""`scan global` and per-tensor direction sharing through Triton's CPU interpreter.

VSSD (a global scan: the state's pass in the fused scan kernel, the readout in torch)
and bidirectional S5 (shared Lambda and B, one C per direction), forward in float64
against the NumPy reference at 1e-10, gradients against the torch backend's.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

import ssmc

from ..conftest import ROOT

os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

CASES = {"vssd": ("VSSD", dict(Hd=2, P=2, N=3), (2, 2)),
         "hydra": ("Hydra", dict(Hd=2, P=2, N=2), (2, 2)),
         "s5_bidirectional": ("S5Bidirectional", dict(H=2, P=3), (2,))}


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _layers(stem):
    cls, dims, _ = CASES[stem]
    out = {}
    for be in ("numpy", "torch", "triton"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = ssmc.load(ROOT / "examples" / f"{stem}.ssm", backend=be, strict=True)
        out[be] = getattr(mod, cls)(seed=0, dtype=torch.float64, **dims)
    return out


def rel(a, b):
    a, b = a.detach(), b.detach()
    wide = (lambda x: x.to(torch.complex128)) if (a.is_complex() or b.is_complex()) else (lambda x: x.double())
    return float((wide(a) - wide(b)).abs().max() / wide(b).abs().max())


def test_vssd_state_pass_runs_the_fused_kernel():
    text = ssmc.api.compile_source(ssmc.frontend.parser.read_source(ROOT / "examples" / "vssd.ssm"), "triton", True)
    assert "rt.triton_module.fused_scan(" in text
    assert "TRITON_BACKWARD = True" in text


@pytest.mark.parametrize("stem", list(CASES))
def test_forward_and_gradients(stem):
    layers = _layers(stem)
    _, _, in_dims = CASES[stem]
    g = torch.Generator().manual_seed(0)
    u = torch.randn((2, 5) + in_dims, generator=g, dtype=torch.float64)
    w = torch.randn((2, 5) + in_dims, generator=g, dtype=torch.float64)
    y_ref = layers["numpy"](u)
    grads = {}
    for be in ("torch", "triton"):
        lay = layers[be]
        uu = u.clone().requires_grad_()
        y = lay(uu)
        assert rel(y, y_ref) <= 1e-10, be
        (y * w).sum().backward()
        grads[be] = {"u": uu.grad, **{n: p.grad for n, p in lay.named_parameters()}}
    for name, gt in grads["torch"].items():
        assert rel(grads["triton"][name], gt) <= 1e-9, name


def test_vssd_initial_and_final_state():
    layers = _layers("vssd")
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 7, 2, 2, generator=g, dtype=torch.float64)
    x0 = torch.randn(2, 2, 2, 3, generator=g, dtype=torch.float64)
    y_ref, x_ref = layers["numpy"](u, initial_state=x0, return_state=True)
    y, xL = layers["triton"](u, initial_state=x0, return_state=True)
    assert rel(y, y_ref) <= 1e-10 and rel(xL, x_ref) <= 1e-10
