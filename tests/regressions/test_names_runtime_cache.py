"""Regressions (issue 8): names that collide with the generated module, run-time argument
checks, and the generated-module cache.

1. Every name a spec may give a dim, input, param, named value, state or output either
   works (state_dict keys are the spec's names, forward gives what the same spec with a
   harmless name gives) or is a located SpecError. The names tried are derived from the
   generated classes and torch.nn.Module themselves (attributes, constructor and call
   keywords), so a new attribute or keyword is tried as soon as it exists.
2. Bad run-time arguments are one-line ShapeErrors; an empty batch gives an empty output.
3. A cache entry that is damaged, planted, or read from a directory others can write to
   never runs.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
import warnings

import numpy as np
import pytest
import torch

import ssmc
from ssmc import cache
from ssmc.ir import functions as F
from ssmc.passes.declarations import MODULE_KEYWORDS
from ssmc.runtime import ReferenceModule, TorchModule
from ssmc.runtime.triton_module import TritonModule

BACKENDS = ("numpy", "torch")
CLASSES = (ReferenceModule, TorchModule, TritonModule)

# One spec with a placeholder per role; DEFAULT gives each a harmless name.
TEMPLATE = """ssm T {
  dims H = 2, DIM = 3
  input q[H], IN[H]
  state ST[H, DIM]
  param a_log[H, DIM] = log(0.5)
  param PAR[H, DIM] = normal(0, 1)
  param FRZ[H] frozen = 0.25
  param dt_log[H] = log(0.1)
  VAL = exp(dt_log)
  g = sigmoid(IN)
  A = -exp(a_log) : diagonal
  dynamics ST' = A ST + g * q
  discretize zoh, step = VAL
  scan causal
  output OUT = sum(PAR * ST, DIM) + FRZ * q
}
"""
DEFAULT = dict(DIM="N", IN="w", ST="x", PAR="C", FRZ="D", VAL="dt", OUT="y")
ROLES = tuple(DEFAULT)


def _spec(role=None, name=None) -> str:
    names = dict(DEFAULT)
    if role:
        names[role] = name
    return re.sub(r"\b(" + "|".join(ROLES) + r")\b", lambda m: names[m.group(1)], TEMPLATE)


def _keywords(fn) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"}


def _call_keywords() -> set[str]:
    """Keywords of the generated classes' constructor, forward() and step()."""
    return set().union(*(_keywords(getattr(c, f)) for c in CLASSES for f in ("__init__", "forward", "step")))


def _colliding_names() -> list[str]:
    """Every public name the generated module or torch.nn.Module already uses."""
    names = set(dir(torch.nn.Module)) | _call_keywords()
    for c in CLASSES:
        names |= set(dir(c))
        for f in ("__init__", "forward", "step", "init_state", "reset_parameters"):
            names |= set(inspect.signature(getattr(c, f)).parameters)
    prev = os.environ.get("SSMC_CACHE")
    os.environ["SSMC_CACHE"] = "0"
    try:
        for backend in BACKENDS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                layer = ssmc.loads(_spec(), backend=backend).T()
            # Instance attributes and the generated class's own tables and methods.
            names |= set(vars(layer)) | set(vars(type(layer)))
    finally:
        if prev is None:
            os.environ.pop("SSMC_CACHE")
        else:
            os.environ["SSMC_CACHE"] = prev
    return sorted(n for n in names if not n.startswith("_"))


NAMES = _colliding_names()


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setenv("SSMC_CACHE", "0")


def _inputs(first_dims=(2, 5, 2)):
    g = torch.Generator().manual_seed(1)
    return torch.randn(*first_dims, generator=g), torch.randn(*first_dims, generator=g)


def _run(mod, role, name):
    """Construct (setting the renamed dim to a non-default size), run forward, the
    return_state path and step(), and round-trip the module through eval/train/to and
    its state_dict."""
    dim = name if role == "DIM" else DEFAULT["DIM"]
    layer = mod.T(seed=0, **{dim: 4})
    assert layer.dims[dim] == 4
    inp = name if role == "IN" else DEFAULT["IN"]
    q, w = _inputs()
    y = layer(q, **{inp: w})
    y2, x = layer(q, return_state=True, **{inp: w})
    assert torch.equal(y, y2)
    yt, _ = layer.step(q[:, 0], layer.init_state(2), **{inp: w[:, 0]})
    assert torch.allclose(yt, y[:, 0], rtol=1e-5, atol=1e-6)
    sd = layer.state_dict()
    layer.eval()
    assert layer.training is False
    layer.train()
    assert layer.training is True
    assert isinstance(layer.dims, dict)
    layer.load_state_dict(sd)
    layer.to(torch.float64)
    y64 = layer(q.double(), **{inp: w.double()})
    return y, x, sd, y64


@functools.lru_cache(maxsize=None)
def _reference(backend):
    """What the spec with harmless names gives (computed once per backend)."""
    return _run(ssmc.loads(_spec(), backend=backend), None, None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", NAMES)
def test_module_names_work_or_are_located_spec_errors(name, role, backend, no_cache):
    text = _spec(role, name)
    rejected = name in F.RESERVED or (role in ("DIM", "IN") and name in MODULE_KEYWORDS)
    if rejected:
        with pytest.raises(ssmc.SpecError) as info:
            ssmc.loads(text, backend=backend)
        e = info.value
        assert e.line is not None and e.column is not None and e.hint, str(e)
        assert "^" in str(e)
        if name in MODULE_KEYWORDS:
            # The caret is under the name, and the hint proposes another one.
            assert e.source.line_text(e.line)[e.column - 1:].startswith(name), str(e)
            assert f"'{name}_'" in e.hint
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ssmc.BackendNotice)
        mod = ssmc.loads(text, backend=backend)
    y, x, sd, y64 = _run(mod, role, name)
    ry, rx, rsd, ry64 = _reference(backend)
    torch.testing.assert_close(y, ry, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x, rx, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(y64, ry64)
    # state_dict keys are the spec's names; the values are the same draws.
    renamed = {DEFAULT[role]: name} if role in ("PAR", "FRZ") else {}
    assert sorted(sd) == sorted(renamed.get(k, k) for k in rsd)
    for k, v in rsd.items():
        torch.testing.assert_close(sd[renamed.get(k, k)], v)
    if role in ("PAR", "FRZ"):
        layer = mod.T(seed=0)
        got = layer.get_parameter(name) if role == "PAR" else layer.get_buffer(name)
        assert got is layer.state_dict(keep_vars=True)[name]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["training", "forward", "directions", "chunk_size", "parameters"])
def test_params_named_like_module_attributes_survive_assignment_and_copies(name, backend, no_cache):
    """load_state_dict(assign=True) sets params by setattr, deepcopy restores __dict__, and
    gradients reach the param: none of it mixes up the param and the module's attribute."""
    import copy
    mod = ssmc.loads(_spec("PAR", name), backend=backend)
    a, b = mod.T(seed=0), mod.T(seed=1)
    b.load_state_dict(a.state_dict(), assign=True)
    assert b.training is True and isinstance(b.get_parameter(name), torch.nn.Parameter)
    b.eval()
    assert b.training is False
    c = copy.deepcopy(b)
    q, w = _inputs((1, 3, 2))
    torch.testing.assert_close(c(q, w=w), a(q, w=w))
    if backend == "torch":
        a(q, w=w).square().sum().backward()
        assert a.get_parameter(name).grad is not None


def test_module_keywords_table_matches_the_classes_signatures():
    """The check pass's table of names no dim or input may take is exactly the generated
    classes' keyword arguments (those not reserved words anyway)."""
    derived = _call_keywords() - F.RESERVED
    assert derived == set(MODULE_KEYWORDS)
    # The first input and step's token are positional-only: an input may be named u or u_t.
    for c in CLASSES:
        for f, first in (("forward", "u"), ("step", "u_t")):
            p = inspect.signature(getattr(c, f)).parameters[first]
            assert p.kind == p.POSITIONAL_ONLY, (c, f)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_named_u_and_u_t_after_the_first(backend, no_cache):
    text = _spec("IN", "u_t").replace("q[H]", "r[H]").replace("* q", "* r")
    text2 = _spec("IN", "u").replace("q[H]", "r[H]").replace("* q", "* r")
    q, w = _inputs()
    for t, name in ((text, "u_t"), (text2, "u")):
        layer = ssmc.loads(t, backend=backend).T(seed=0)
        y = layer(q, **{name: w})
        yt, _ = layer.step(q[:, 0], layer.init_state(2), **{name: w[:, 0]})
        torch.testing.assert_close(yt, y[:, 0], rtol=1e-5, atol=1e-6)


# --- 2. run-time argument checks ------------------------------------------------------
SMALL = """ssm T {
  dims H = 2, N = 3
  input u[H]
  state x[H, N]
  param a_log[H, N] = log(0.5)
  param C[H, N] = normal(0, 1)
  A = -exp(a_log) : diagonal
  dynamics x' = A x + u
  discretize zoh, step = 0.1
  scan causal
  output y = sum(C * x, N)
}
"""
CROSS = SMALL.replace("dims H = 2, N = 3", "dims H = 2, N = 3, R = 2, K = 3").replace(
    "scan causal", "scan cross2d(rows = R, cols = K)")


def _one_line(info):
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


def _layer(text, backend, **dims):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ssmc.BackendNotice)
        mod = ssmc.loads(text, backend=backend)
    return getattr(mod, mod.__all__[0])(seed=0, **dims)


def _example(stem):
    from pathlib import Path
    return (Path(__file__).resolve().parents[2] / "examples" / f"{stem}.ssm").read_text()


def _batch(cls, layer, b, L):
    d = layer.dims
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn((b, L) + tuple(d[x] for x in dims), generator=g) for n, dims in cls.INPUTS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stem,dims,L", [
    ("small", {}, 5),
    ("mamba2", {"Hd": 2, "P": 2, "N": 2}, 4),     # SSD form; numpy's reshape of an empty batch
    ("mamba_block", {"D": 4, "N": 2}, 4),         # conv tails in the state
    ("s4d", {"H": 2, "N": 2}, 40),                # FFT convolution form from 32 tokens on
    ("vim_bidirectional", {"H": 4, "N": 2}, 4),   # two directions
])
def test_empty_batch_gives_an_empty_output(stem, dims, L, backend):
    text = SMALL if stem == "small" else _example(stem)
    layer = _layer(text, backend, **dims)
    cls = type(layer)
    first = cls.INPUTS[0][0]
    one = _batch(cls, layer, 1, L)
    ref = layer(one.pop(first), **one)
    empty = _batch(cls, layer, 0, L)
    u = empty.pop(first)
    y = layer(u, **empty)
    assert y.shape == (0,) + tuple(ref.shape[1:]) and y.dtype == ref.dtype
    if cls.SCAN["order"] != "causal":
        return
    y, state = layer(u, return_state=True, **empty)
    assert y.shape[0] == 0
    for s, z in zip(state if cls.CONVS else (state,), layer.init_state(0) if cls.CONVS else (layer.init_state(0),)):
        assert s.shape == z.shape
    yt, _ = layer.step(u[:, 0], layer.init_state(0), **{k: v[:, 0] for k, v in empty.items()})
    assert yt.shape == (0,) + tuple(ref.shape[2:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_initial_states_are_one_line_shape_errors(backend):
    layer = _layer(SMALL, backend)
    u = torch.randn(2, 5, 2)
    bad = {
        "meta": (torch.zeros(2, 2, 3, device="meta"), r"must be on cpu, got meta"),
        "bool": (torch.zeros(2, 2, 3, dtype=torch.bool), r"must be float16, bfloat16, float32 or float64, got torch.bool"),
        "int": (torch.zeros(2, 2, 3, dtype=torch.int64), r"got torch.int64"),
        "complex": (torch.zeros(2, 2, 3, dtype=torch.complex64), r"is real"),
        "shape": (torch.zeros(2, 3, 3), r"must have shape \(batch, H=2, N=3\), got \(2, 3, 3\)"),
    }
    for what, (x0, message) in bad.items():
        with pytest.raises(ssmc.ShapeError, match=message) as info:
            layer(u, initial_state=x0)
        _one_line(info)
        with pytest.raises(ssmc.ShapeError, match=message) as info:
            layer.step(u[:, 0], x0)
        _one_line(info)
    # init_state makes only states that forward accepts.
    for batch, dtype, message in ((-1, torch.float32, "batch must be an int >= 0"), (2.5, torch.float32, "batch"),
                                  (True, torch.float32, "batch"), (2, torch.int64, "dtype must be float16"),
                                  (2, torch.bool, "dtype must be")):
        with pytest.raises(ssmc.ShapeError, match=message) as info:
            layer.init_state(batch, dtype)
        _one_line(info)
    # With cu_seqlens the state has one row per sequence, and is checked whole.
    up = torch.randn(1, 6, 2)
    with pytest.raises(ssmc.ShapeError, match=r"must have shape \(batch, H=2, N=3\), got \(2, 5, 3\)"):
        layer(up, cu_seqlens=[0, 2, 6], initial_state=torch.zeros(2, 5, 3))
    with pytest.raises(ssmc.ShapeError, match="got torch.bool"):
        layer(up, cu_seqlens=[0, 2, 6], initial_state=torch.zeros(2, 2, 3, dtype=torch.bool))


def test_triton_checks_states_and_empty_batches_alike():
    """The Triton module's own forward looks at the arguments first: a state that is not a
    tensor used to fail there with an AttributeError."""
    if not torch.cuda.is_available():
        # Triton reads this when it is first imported (as tests/backends/test_triton.py does).
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("triton was imported without its interpreter")
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    try:
        layer = ssmc.loads(SMALL, backend="triton", strict=True).T(seed=0)
    except ssmc.BackendUnavailable:
        pytest.skip("triton cannot run here")
    u = torch.randn(2, 5, 2)
    for x0 in ([[0.0]], torch.zeros(2, 2, 3, dtype=torch.bool), torch.zeros(2, 2, 3, device="meta")):
        with pytest.raises(ssmc.ShapeError, match="the state x must") as info:
            layer(u, initial_state=x0)
        _one_line(info)
    y = layer(u[:0])
    assert y.shape == (0, 5, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cu_seqlens_must_be_integers_rising_from_zero(backend):
    layer = _layer(SMALL, backend)
    up = torch.randn(1, 6, 2)
    # Valid forms agree with running each sequence on its own.
    want = torch.cat([layer(up[:, :2]), layer(up[:, 2:])], dim=1)
    for good in (torch.tensor([0, 2, 6], dtype=torch.int32), torch.tensor([0, 2, 6]), [0, 2, 6],
                 np.array([0, 2, 6])):
        torch.testing.assert_close(layer(up, cu_seqlens=good), want)
    for bad in (torch.tensor([0.0, float("nan"), 6.0]), torch.tensor([0.0, 2.5, 6.0]), torch.tensor([0.0, 2.0, 6.0]),
                [0, 2.5, 6], [0, 2.0, 6], torch.tensor([0, 4, 2, 6]), [0, 2, 5], torch.tensor([False, True]),
                torch.tensor([[0, 2], [2, 6]]), "0,2,6", torch.tensor([0, 2, 6], device="meta"), [0, True, 6]):
        with pytest.raises(ssmc.ShapeError, match="cu_seqlens must rise strictly from 0 to the total length 6, as a 1-d integer tensor or a list of ints") as info:
            layer(up, cu_seqlens=bad)
        _one_line(info)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross2d_sizes_are_positive_ints(backend):
    layer = _layer(CROSS, backend)
    u = torch.randn(2, 6, 2)
    torch.testing.assert_close(layer(u, R=3, K=2), layer(u, R=np.int64(3), K=torch.tensor(2)))
    # 2.9 used to be truncated to 2 (2 * 3 = 6 tokens: a silent wrong grid).
    for kw in ({"R": 2.9}, {"R": 2.0}, {"R": -2, "K": -3}, {"R": 0}, {"R": True}, {"R": "2"}, {"K": 1.5}):
        with pytest.raises(ssmc.ShapeError, match=r"\((a )?cross2d size\) must be a positive int") as info:
            layer(u, **kw)
        _one_line(info)
    with pytest.raises(ssmc.ShapeError, match=r"cross2d needs length = R \* K = 2 \* 3 = 6, got 7") as info:
        layer(torch.randn(2, 7, 2))
    _one_line(info)
    with pytest.raises(ssmc.ShapeError, match=r"= 3 \* 3 = 9, got 6"):
        layer(u, R=3)


# --- 3. the generated-module cache ----------------------------------------------------------
CONST = SMALL.replace("step = 0.1", "step = 0.125")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("SSMC_CACHE_DIR", str(d))
    monkeypatch.delenv("SSMC_CACHE", raising=False)
    monkeypatch.setattr(cache, "_NOTICED", set(), raising=False)
    return d


def _entry(d):
    (f,) = d.glob("*.json")
    return f, json.loads(f.read_text())


def _reference_output(text):
    os.environ["SSMC_CACHE"] = "0"
    try:
        layer = _layer(text, "numpy")
    finally:
        del os.environ["SSMC_CACHE"]
    return layer(torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(3)))


def _output(text):
    return _layer(text, "numpy")(torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(3)))


def _valid_digest(k, entry):
    """The digest ssmc would store for this entry (as a forger could compute it)."""
    digest = getattr(cache, "_digest", None)
    return digest(k, entry) if digest else ""


def test_a_flipped_byte_in_an_entry_is_detected_and_repaired(cache_dir):
    want = _reference_output(CONST)
    torch.testing.assert_close(_output(CONST), want)
    f, entry = _entry(cache_dir)
    assert "0.125" in entry["source"]
    raw = f.read_bytes()
    f.write_bytes(raw.replace(b"0.125", b"0.925", 1))   # one byte: '1' -> '9'
    torch.testing.assert_close(_output(CONST), want)
    # The entry was rewritten: it holds the right source again, with a valid digest.
    _, repaired = _entry(cache_dir)
    assert repaired == entry and cache.get(f.stem) is not None


def test_planted_code_in_an_entry_never_runs(cache_dir, tmp_path):
    want = _reference_output(CONST)
    _output(CONST)
    f, entry = _entry(cache_dir)
    marker = tmp_path / "planted-code-ran"
    planted = dict(entry, source=f"open({str(marker)!r}, 'w').write('ran')\n" + entry["source"])
    for extra in ({}, {"sha256": entry.get("sha256", "")}, {"sha256": "0" * 64}):
        f.write_text(json.dumps({k: v for k, v in planted.items() if k != "sha256"} | extra))
        torch.testing.assert_close(_output(CONST), want)
        assert not marker.exists()
        assert _entry(cache_dir)[1] == entry
    # Another spec's valid entry stored under this spec's key is not this spec's module.
    other = CONST.replace("0.125", "0.5")
    _output(other)
    g = next(p for p in cache_dir.glob("*.json") if p != f)
    f.write_bytes(g.read_bytes())
    torch.testing.assert_close(_output(CONST), want)


@pytest.mark.parametrize("how", ["world-writable", "group-writable", "another user's"])
def test_a_cache_directory_others_can_write_to_is_not_used(cache_dir, tmp_path, monkeypatch, how):
    want = _reference_output(CONST)
    _output(CONST)
    f, entry = _entry(cache_dir)
    marker = tmp_path / "planted-code-ran"
    # A planted entry with a valid digest: only the directory check keeps it out.
    planted = {k: v for k, v in entry.items() if k != "sha256"}
    planted["source"] = f"open({str(marker)!r}, 'w').write('ran')\n" + entry["source"]
    planted["sha256"] = _valid_digest(f.stem, planted)
    f.write_text(json.dumps(planted))
    if how == "another user's":
        uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    else:
        cache_dir.chmod(0o777 if how == "world-writable" else 0o770)
    with pytest.warns(cache.CacheNotice, match="not using the compiled-module cache"):
        got = _output(CONST)
    torch.testing.assert_close(got, want)
    assert not marker.exists()
    # Nothing is written there either.
    assert json.loads(f.read_text()) == planted


def test_an_entry_file_others_can_write_to_is_ignored(cache_dir, tmp_path):
    want = _reference_output(CONST)
    _output(CONST)
    f, entry = _entry(cache_dir)
    marker = tmp_path / "planted-code-ran"
    planted = {k: v for k, v in entry.items() if k != "sha256"}
    planted["source"] = f"open({str(marker)!r}, 'w').write('ran')\n" + entry["source"]
    planted["sha256"] = _valid_digest(f.stem, planted)
    f.write_text(json.dumps(planted))
    f.chmod(0o666)
    torch.testing.assert_close(_output(CONST), want)
    assert not marker.exists()
    # Replaced by a private, valid entry.
    assert (f.stat().st_mode & 0o077) == 0 and _entry(cache_dir)[1] == entry


def test_the_cache_directory_is_created_private(cache_dir):
    _output(CONST)
    assert (cache_dir.stat().st_mode & 0o077) == 0
    f, _ = _entry(cache_dir)
    assert (f.stat().st_mode & 0o077) == 0
