"""The generated module's API (section 10 of the language page), for every backend:
deterministic initializers, frozen params as buffers, every dim a keyword, state_dict
keys the spec's names, clear errors for wrong tensors."""
from __future__ import annotations

import warnings

import pytest
import torch

import ssmc

from .conftest import EXAMPLES, ROOT

BACKENDS = ["numpy", "torch"]


def _load(stem, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssmc.load(ROOT / "examples" / f"{stem}.ssm", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_seed_makes_initialization_deterministic(path, backend):
    mod = _load(path.stem, backend)
    cls = getattr(mod, mod.__all__[0])
    a, b, c = cls(seed=7), cls(seed=7), cls(seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sorted(sa) == sorted(name for name, _, _ in cls.PARAMS)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    random = [k for k in sa if not torch.equal(sa[k], sc[k])]
    assert random, "a different seed must change some random initializer"
    # reset_parameters re-runs the initializers, deterministically for a seed.
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    a.reset_parameters(seed=7)
    assert all(torch.equal(a.state_dict()[k], sb[k]) for k in sa)
    g = torch.Generator().manual_seed(7)
    d = cls(generator=g)
    assert all(torch.equal(d.state_dict()[k], sb[k]) for k in sa)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_params_are_buffers_and_dims_are_keywords(backend):
    mod = _load("lssl", backend)
    layer = mod.LSSL(H=5, N=3, seed=0)
    assert layer.dims == {"H": 5, "N": 3}
    buffers = dict(layer.named_buffers())
    params = dict(layer.named_parameters())
    assert set(buffers) == {"A", "Bv"} and "A" not in params
    assert buffers["A"].shape == (3, 3) and params["C"].shape == (5, 3)
    with pytest.raises(TypeError, match="unexpected keyword 'Q'; its dims are H, N"):
        mod.LSSL(Q=3)
    with pytest.raises(ValueError, match="must be positive"):
        mod.LSSL(N=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dims_defaults_follow_the_dims_given(backend):
    mod = _load("mamba", backend)
    assert mod.Mamba(H=40).dims["R"] == 3          # R = ceil(H / 16)
    assert mod.Mamba(H=40, R=7).dims["R"] == 7
    assert mod.Mamba(H=40).dt_proj.shape == (40, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_separate_params_have_a_direction_axis(backend):
    mod = _load("vim_bidirectional", backend)
    layer = mod.VimBidirectional(H=4, N=3, seed=0)
    assert layer.A_log.shape == (2, 4, 3)
    assert not torch.equal(layer.dt_bias[0], layer.dt_bias[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_tensors_get_one_line_errors(backend):
    mod = _load("s5_irregular", backend)
    layer = mod.S5Irregular(H=4, P=3, seed=0)
    u, tau = torch.randn(2, 5, 4), torch.rand(2, 5)
    assert layer(u, tau=tau).shape == (2, 5, 4)
    cases = [
        (lambda: layer(torch.randn(2, 5, 3), tau=tau), r"u must have shape \(batch, length, H=4\), got \(2, 5, 3\)"),
        (lambda: layer(u), "missing input 'tau'"),
        (lambda: layer(u, tau=torch.rand(2, 6)), r"tau must have shape \(batch=2, length=5\)"),
        (lambda: layer(u.long(), tau=tau), "must be float16, bfloat16, float32 or float64"),
        (lambda: layer(u, tau=tau, initial_state=torch.zeros(2, 4)), r"must have shape \(batch, P=3\)"),
        (lambda: layer(u, tau=tau, sigma=tau), "unexpected keyword 'sigma'"),
    ]
    for call, message in cases:
        with pytest.raises((ssmc.ShapeError, TypeError), match=message) as info:
            call()
        assert "\n" not in str(info.value)
