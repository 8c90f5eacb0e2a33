"""Layers from ssmc.load / ssmc.loads pickle: pickle, copy.deepcopy, torch.save /
torch.load(weights_only=False), and a multiprocessing `spawn` child (a fresh interpreter
that has never loaded the spec). The copy has the same class (in the same process), the
same parameters, dims and attributes, and gives the same outputs."""
from __future__ import annotations

import copy
import multiprocessing
import pickle
import warnings

import pytest
import torch

import ssmc

from ..conftest import ROOT
from . import _spawn_child

TWO_BLOCKS = """
ssm First {
  dims   H = 3, N = 2
  input  u[H]
  state  x[H, N]
  param  a[H, N] = uniform(0.2, 0.8)
  param  c[H, N] = normal(0, 1)
  lam = a : diagonal
  recurrence x = lam x + u
  scan       causal
  output     y = sum(c * x, N)
}
ssm Second {
  dims   H = 3
  input  u[H]
  state  x[H]
  param  a[H] = uniform(0.2, 0.8)
  lam = a : diagonal
  recurrence x = lam x + 2 * u
  scan       causal
  output     y = x
}
"""


def _load(path="mamba.ssm", backend="torch"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssmc.load(ROOT / "examples" / path, backend=backend)


def _trained_mamba():
    """A layer whose parameters are no longer their seeded initial values, with a
    non-default attribute: a copy rebuilt from the spec and seed alone would differ."""
    layer = _load().Mamba(H=4, N=3, seed=0, chunk_size=2)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    layer.eval()
    return layer


def _same(a, b, u):
    assert type(a).__qualname__ == type(b).__qualname__
    assert a.dims == b.dims and a.chunk_size == b.chunk_size and a.training == b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert all(isinstance(p, torch.nn.Parameter) for p in b.parameters())
    with torch.no_grad():
        torch.testing.assert_close(b(u), a(u), atol=0, rtol=0)


@pytest.mark.parametrize("route", ["pickle", "deepcopy", "torch.save"])
def test_roundtrip_in_process(route, tmp_path):
    layer = _trained_mamba()
    if route == "pickle":
        back = pickle.loads(pickle.dumps(layer))
    elif route == "deepcopy":
        back = copy.deepcopy(layer)
    else:
        torch.save(layer, tmp_path / "layer.pt")
        back = torch.load(tmp_path / "layer.pt", weights_only=False)
    _same(layer, back, torch.randn(2, 7, 4))
    # In the process that loaded the spec, the copy's class is the loaded class itself.
    assert type(back) is type(layer)
    # And it is a copy: its parameters are its own.
    with torch.no_grad():
        next(back.parameters()).add_(1.0)
    assert not torch.equal(next(back.parameters()), next(layer.parameters()))


def test_deepcopy_keeps_gradients_flowing():
    layer = _trained_mamba()
    back = copy.deepcopy(layer)
    back(torch.randn(1, 5, 4)).sum().backward()
    assert all(p.grad is not None for p in back.parameters())
    assert all(p.grad is None for p in layer.parameters())


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_every_block_of_a_multi_block_spec(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.loads(TWO_BLOCKS, backend=backend, filename="two.ssm")
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    for layer in (mod.First(seed=0, dtype=torch.float64), mod.Second(seed=0, dtype=torch.float64)):
        back = pickle.loads(pickle.dumps(layer))
        assert type(back) is type(layer)
        torch.testing.assert_close(back(u), layer(u), atol=0, rtol=0)


def test_pickle_holds_the_spec_and_survives_a_missing_module():
    """The pickle holds the spec's text, so it is compiled again where the generated
    module it came from does not exist (another process; here: removed)."""
    import sys
    layer = _trained_mamba()
    data = pickle.dumps(layer)
    assert b"ssmc.runtime.module" in data and b"dynamics" in data
    name = type(layer).__module__
    saved = sys.modules.pop(name)
    try:
        back = pickle.loads(data)
    finally:
        sys.modules[name] = saved
    _same(layer, back, torch.randn(2, 5, 4))


def test_a_module_of_another_spec_under_the_same_name_is_not_used():
    """Module names are per process: a pickle from elsewhere may name a module that here
    holds another spec; the class comes from the spec, not the name."""
    import sys
    layer = _trained_mamba()
    data = pickle.dumps(layer)
    other = _load("s4d.ssm")
    name = type(layer).__module__
    saved = sys.modules[name]
    sys.modules[name] = other
    try:
        back = pickle.loads(data)
    finally:
        sys.modules[name] = saved
    assert type(back).__qualname__ == "Mamba"
    _same(layer, back, torch.randn(2, 5, 4))


def test_a_subclass_in_an_importable_module_pickles_by_reference():
    back = pickle.loads(pickle.dumps(SubMamba(H=4, N=3, seed=0)))
    assert type(back) is SubMamba and back.hello() == "sub"


def test_a_layer_written_to_a_file_pickles_by_reference(tmp_path, monkeypatch):
    (tmp_path / "written_mamba.py").write_text(ssmc.compile_source(
        __import__("ssmc.frontend.parser", fromlist=["read_source"]).read_source(ROOT / "examples" / "mamba.ssm"),
        backend="torch"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import written_mamba
    layer = written_mamba.Mamba(H=4, N=3, seed=0)
    back = pickle.loads(pickle.dumps(layer))
    assert type(back) is written_mamba.Mamba
    u = torch.randn(1, 4, 4)
    torch.testing.assert_close(back(u), layer(u), atol=0, rtol=0)


def test_multiprocessing_spawn(tmp_path, monkeypatch):
    # The child compiles the spec again: through a cache of its own (it must not depend on
    # the parent's cache entry).
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path / "cache"))
    layer = _trained_mamba()
    u = torch.randn(2, 6, 4)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        y, module, generated = pool.apply(_spawn_child.forward, (layer, u))
    with torch.no_grad():
        torch.testing.assert_close(y, layer(u), atol=0, rtol=0)
    # The child's class came from compiling the pickled spec there.
    assert generated == [module]


SubMamba = type("SubMamba", (_load().Mamba,), {"__module__": __name__, "__qualname__": "SubMamba",
                                              "hello": lambda self: "sub"})
