"""The Triton backend through Triton's CPU interpreter (TRITON_INTERPRET=1), small shapes.

Forward agrees with the NumPy reference (float32, 1e-4) for every example; gradients
(backward kernels, or the PyTorch path for matrix structures) agree with the torch
backend's and pass gradcheck in float64; specs
beyond the backend fall back with a notice or, strictly, fail; with neither a GPU nor
the interpreter, backend="triton" is an error under strict=True and never silent.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

import ssmc

from ..conftest import EXAMPLES

# Triton reads TRITON_INTERPRET when it is imported: set it first (tests run on the CPU).
os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

COVERED = [p.stem for p in EXAMPLES]


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _load(stem, backend, **kw):
    path = next(p for p in EXAMPLES if p.stem == stem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssmc.load(path, backend=backend, **kw)


def rel(a, b):
    # (complex gradients compared whole: .double() would drop their imaginary parts)
    def wide(t):
        return t.to(torch.complex128) if t.is_complex() else t.double()
    return float((wide(a) - wide(b)).abs().max() / wide(b).abs().max())


def _small(cls):
    dims = {d: 3 for d, _ in cls.DIMS}
    for name, kind, info in cls.PARAMS:
        if kind == "conv_weight" and isinstance(info["K"], str):
            dims[info["K"]] = 2
    return dims


def _inputs(cls, layer, batch=2, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = layer.dims
    if cls.SCAN["order"] == "cross2d":
        length = d[cls.SCAN["rows"]] * d[cls.SCAN["cols"]]
    out = {}
    for i, (name, dims) in enumerate(cls.INPUTS):
        t = torch.randn((batch, length) + tuple(d[x] for x in dims), generator=g)
        out[name] = t.abs() + 0.5 if i and not dims else t
    return out


@pytest.mark.parametrize("stem", [s for s in COVERED if any(p.stem == s for p in EXAMPLES)])
def test_forward_matches_reference(stem):
    ref, tr = _load(stem, "numpy"), _load(stem, "triton", strict=True)
    name = ref.__all__[0]
    R, T = getattr(ref, name), getattr(tr, name)
    assert T.BACKEND == "triton"
    dims = _small(R)
    r, t = R(seed=1, **dims), T(seed=1, **dims)
    ins = _inputs(R, r)
    first, *rest = R.INPUTS
    kw = {n: ins[n] for n, _ in rest}
    with torch.no_grad():
        y = t(ins[first[0]], **kw)
    assert rel(y, r(ins[first[0]].double(), **{k: v.double() for k, v in kw.items()})) < 1e-4
    if R.SCAN["order"] == "causal":
        x0 = r.init_state(2)
        x0 = tuple(torch.randn_like(s) for s in x0) if isinstance(x0, tuple) else torch.randn_like(x0)
        with torch.no_grad():
            y_t, last_t = t(ins[first[0]], initial_state=x0, return_state=True, **kw)
        y_r, last_r = r(ins[first[0]].double(), initial_state=x0, return_state=True,
                        **{k: v.double() for k, v in kw.items()})
        assert rel(y_t, y_r) < 1e-4
        for a, b in zip(last_t if isinstance(last_t, tuple) else (last_t,),
                        last_r if isinstance(last_r, tuple) else (last_r,)):
            assert rel(a, b) < 1e-4


@pytest.mark.parametrize("stem", COVERED)
def test_gradients_match_the_torch_backend(stem):
    """Backward kernels where the module has them (TRITON_BACKWARD, or the SSD family), the
    PyTorch path otherwise: the same gradients as the torch backend."""
    tr, tm = _load(stem, "triton", strict=True), _load(stem, "torch")
    name = tr.__all__[0]
    T, M = getattr(tr, name), getattr(tm, name)
    dims = _small(T)
    t, m = T(seed=0, **dims), M(seed=0, **dims)
    ins = _inputs(T, t, length=5)
    first, *rest = T.INPUTS
    u = ins[first[0]].clone().requires_grad_()
    kw = {n: ins[n] for n, _ in rest}
    gt = torch.autograd.grad(t(u, **kw).square().sum(), [u, *t.parameters()])
    gm = torch.autograd.grad(m(u, **kw).square().sum(), [u, *m.parameters()])
    for a, b in zip(gt, gm):
        assert rel(a, b) < 1e-3


BEYOND_SPEC = """
ssm Beyond "inv_softplus inside the recurrence: not in the kernel's vocabulary yet" {
  dims H = 3, N = 2
  input u[H]
  state x[H, N]
  param a[H, N] = uniform(0.5, 1.5)
  A = -a : diagonal
  dt = softplus(linear(u, H))
  dynamics x' = A x + u
  discretize zoh_euler, step = dt
  scan causal
  output y = sum(inv_softplus(1 + x * x), N)
}
"""


def test_a_spec_beyond_the_backend_falls_back_with_a_notice_or_fails_strictly():
    ssmc.api._NOTICED.clear()
    with pytest.warns(ssmc.BackendNotice, match=r"inv_softplus\(\) inside the recurrence"):
        mod = ssmc.loads(BEYOND_SPEC, backend="triton")
    assert mod.Beyond.BACKEND == "torch"
    with pytest.raises(ssmc.BackendUnavailable, match=r"inv_softplus\(\) inside the recurrence"):
        ssmc.loads(BEYOND_SPEC, backend="triton", strict=True)


def test_no_gpu_and_no_interpreter_is_never_silent(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    path = next(p for p in EXAMPLES if p.stem == "mamba")
    with pytest.raises(ssmc.BackendUnavailable, match="no CUDA GPU"):
        ssmc.load(path, backend="triton", strict=True)
    ssmc.api._NOTICED.clear()
    with pytest.warns(ssmc.BackendNotice, match="unavailable"):
        mod = ssmc.load(path, backend="triton")
    assert mod.Mamba.BACKEND == "torch"


def test_auto_never_picks_the_interpreter():
    ssmc.api._NOTICED.clear()
    with pytest.warns(ssmc.BackendNotice, match="picked 'torch'"):
        _ = ssmc.load(EXAMPLES[0], backend="auto")


def _captured_call(layer, u):
    """Run the layer once, capturing the arguments of its fused-scan op."""
    import ssmc.runtime.triton_module as tm
    captured = {}
    original = tm.fused_scan

    def spy(*args):
        captured["args"] = args
        return original(*args)

    tm.fused_scan = spy
    try:
        with torch.no_grad():
            y = layer(u)
    finally:
        tm.fused_scan = original
    return y, captured["args"]


@pytest.mark.parametrize("stem", ["mamba", "s4d", "lssl"])
def test_kernel_is_a_registered_torch_library_op(stem):
    mod = _load(stem, "triton", strict=True)
    cls = getattr(mod, mod.__all__[0])
    layer = cls(seed=0, **_small(cls))
    u = _inputs(cls, layer, length=40)[cls.INPUTS[0][0]]
    layer.fft_min_length = 10 ** 9  # the scan, not the LTI convolution
    _, args = _captured_call(layer, u)
    # The op has no autograd formula: gradients run the module's PyTorch path instead.
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else
                 [t.detach() for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor) else a
                 for a in args)
    result = torch.library.opcheck(torch.ops.ssmc.fused_scan.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("stem", ["mamba_block", "vim_bidirectional"])
def test_torch_compile_runs_without_graph_breaks(stem):
    """Inference, including a non-causal order (index maps built per call)."""
    mod = _load(stem, "triton", strict=True)
    cls = getattr(mod, mod.__all__[0])
    layer = cls(seed=0, **_small(cls))
    u = _inputs(cls, layer)[cls.INPUTS[0][0]]
    torch._dynamo.reset()
    with torch.no_grad():
        y = layer(u)
        compiled = torch.compile(layer, fullgraph=True, backend="eager")
        assert torch.equal(compiled(u), y)


def test_block_sizes_are_tuned_once_and_remembered(tmp_path, monkeypatch, capsys):
    import ssmc.runtime.triton_autotune as at
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SSMC_AUTOTUNE", "1")
    monkeypatch.setattr(at, "_memory", {})
    mod = _load("mamba", "triton", strict=True)
    layer = mod.Mamba(seed=0, H=8, N=2)
    u = torch.randn(1, 3, 8)
    with torch.no_grad():
        y = layer(u)
    err = capsys.readouterr().err
    assert "ssmc: tuning" in err and "BLOCK_P=" in err and "BLOCK_T=" in err
    stored = __import__("json").loads((tmp_path / "autotune.json").read_text())
    # Mamba's kernel takes a chunk of tokens at a time: (BLOCK_P, BLOCK_T) are tuned together.
    assert len(stored) == 1
    block_p, block_t = list(stored.values())[0]
    assert block_p in (1, 2, 4, 8) and block_t in (8, 16, 32, 64)
    # A new process (empty memory) reads the file instead of tuning again.
    monkeypatch.setattr(at, "_memory", {})
    with torch.no_grad():
        assert torch.equal(layer(u), y)
    assert "ssmc: tuning" not in capsys.readouterr().err


@pytest.mark.parametrize("stem", ["mamba_block", "mamba2", "lru"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs(dtype, stem):
    """bf16 / fp16 inputs through each kernel family (scan, SSD; complex states), computing
    in float32, forward and backward."""
    ref, tr = _load(stem, "numpy"), _load(stem, "triton", strict=True)
    name = tr.__all__[0]
    R, T = getattr(ref, name), getattr(tr, name)
    dims = _small(R)
    r, t = R(seed=2, **dims), T(seed=2, **dims)
    t.fft_min_length = 10 ** 9
    u = _inputs(R, r, length=40)["u"].to(dtype)
    with torch.no_grad():
        y = t(u)
    assert y.dtype == dtype
    assert rel(y, r(u.double())) < 3e-2
    u = u.clone().requires_grad_()
    (g,) = torch.autograd.grad(t(u).float().square().sum(), [u])
    assert g.dtype == dtype and torch.isfinite(g.float()).all()


@pytest.mark.parametrize("stem", ["mamba", "mamba_block", "s4d_real", "vim_bidirectional", "s4d", "dss", "s4d_inv",
                                  "lru", "s5", "s5_irregular"])
def test_backward_kernel_gradcheck(stem):
    """The generated backward kernel (reverse scan, per-op derivatives) against finite
    differences, in float64 through the interpreter."""
    mod = _load(stem, "triton", strict=True)
    cls = getattr(mod, mod.__all__[0])
    assert cls.TRITON_BACKWARD
    dims = {d: 2 for d in _small(cls)}
    layer = cls(seed=0, dtype=torch.float64, **dims)
    layer.fft_min_length = 10 ** 9
    ins = _inputs(cls, layer, batch=1, length=4)
    first, *rest = cls.INPUTS
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    u = ins[first[0]].double().requires_grad_()

    def f(u, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (u,), {n: ins[n].double() for n, _ in rest})

    assert torch.autograd.gradcheck(f, (u, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("stem", ["mamba", "mamba_block"])
def test_backward_recomputes_from_checkpoints(stem, monkeypatch):
    """Several checkpoint chunks, the last one partial: gradients still match the torch backend."""
    import ssmc.runtime.triton_module as tmod
    monkeypatch.setattr(tmod, "CHECKPOINT", 2)
    tr, tm = _load(stem, "triton", strict=True), _load(stem, "torch")
    name = tr.__all__[0]
    T, M = getattr(tr, name), getattr(tm, name)
    dims = _small(T)
    t, m = T(seed=3, **dims), M(seed=3, **dims)
    u = _inputs(T, t, length=7)["u"].requires_grad_()
    x0 = t.init_state(2)
    x0 = tuple(torch.randn_like(s) for s in x0) if isinstance(x0, tuple) else torch.randn_like(x0).requires_grad_()
    yt, lt = t(u, initial_state=x0, return_state=True)
    ym, lm = m(u, initial_state=x0, return_state=True)
    lt, lm = (lt if isinstance(lt, tuple) else (lt,)), (lm if isinstance(lm, tuple) else (lm,))
    loss_t = yt.square().sum() + sum(s.square().sum() for s in lt)
    loss_m = ym.square().sum() + sum(s.square().sum() for s in lm)
    wrt = [u, *t.parameters()]
    gt = torch.autograd.grad(loss_t, wrt)
    gm = torch.autograd.grad(loss_m, [u, *m.parameters()])
    for a, b in zip(gt, gm):
        assert rel(a, b) < 1e-4


REVERSED_SSD = """
ssm RevSSD "Mamba-2's SSD form scanned {order}" {{
  dims Hd = 2, P = 3, N = 5
  input u[Hd, P]
  state x[Hd, P, N]
  param A_log[Hd] = log(uniform(1, 16))
  A  = -exp(A_log) : scalar
  dt = softplus(linear(u, Hd))
  B  = linear(u, N)
  C  = linear(u, N)
  dynamics   x' = A x + B * u
  discretize zoh_euler, step = dt
  scan       {order}
  output     y = sum(C * x, N)
}}
"""


def _spy_copies(monkeypatch):
    """Count reordered copies of inputs (TorchModule._take) and check index maps reach the kernels."""
    from ssmc.runtime import torch_module, triton_module, triton_ssd
    seen = {"copies": 0, "maps": 0}
    take = torch_module.TorchModule._take

    def counting_take(self, a, perm):
        seen["copies"] += 1
        return take(self, a, perm)

    monkeypatch.setattr(torch_module.TorchModule, "_take", counting_take)
    # Where each op takes its time map.
    for mod, name, at in ((triton_module, "fused_scan", 11), (triton_ssd, "ssd_scan", 6)):
        original = getattr(mod, name)

        def spy(*args, _original=original, _at=at):
            seen["maps"] += args[_at] is not None
            return _original(*args)

        monkeypatch.setattr(mod, name, spy)
    return seen


@pytest.mark.parametrize("source", ["vim_bidirectional", "vmamba_ss2d", "ssd:reverse", "ssd:bidirectional"])
def test_scan_orders_by_index_maps(source, monkeypatch):
    """Non-causal orders run by index maps in the kernels (no reordered copies of the inputs),
    forward and, through the backward kernels, gradients."""
    if source.startswith("ssd:"):
        text = REVERSED_SSD.format(order=source[4:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr, ref = ssmc.loads(text, backend="triton", strict=True), ssmc.loads(text, backend="numpy")
    else:
        tr, ref = _load(source, "triton", strict=True), _load(source, "numpy")
    name = tr.__all__[0]
    T, R = getattr(tr, name), getattr(ref, name)
    dims = _small(T)
    t, r = T(seed=5, **dims), R(seed=5, **dims)
    ins = _inputs(T, t, length=70)
    seen = _spy_copies(monkeypatch)
    # The first input is positional (forward(u, /, ...)); the others are keywords.
    first = T.INPUTS[0][0]
    rest = {k: v for k, v in ins.items() if k != first}
    with torch.no_grad():
        y = t(ins[first], **rest)
    assert seen["copies"] == 0 and seen["maps"] >= 1, seen
    assert rel(y, r(ins[first].double(), **{k: v.double() for k, v in rest.items()})) < 1e-4
    if T.TRITON_BACKWARD or T.ALGORITHM == "ssd":
        u = ins[first].clone().requires_grad_()
        gt = torch.autograd.grad(t(u, **rest).square().sum(), [u, *t.parameters()])
        assert seen["copies"] == 0
        m = getattr(_load(source, "torch") if not source.startswith("ssd:") else
                    ssmc.loads(REVERSED_SSD.format(order=source[4:]), backend="torch"), name)(seed=5, **dims)
        u2 = ins[first].clone().requires_grad_()
        gm = torch.autograd.grad(m(u2, **rest).square().sum(), [u2, *m.parameters()])
        for a, b in zip(gt, gm):
            assert rel(a, b) < 1e-3


@pytest.mark.parametrize("stem", ["mamba", "mamba2", "lru", "vim_bidirectional"])
def test_torch_compile_traces_training_without_graph_breaks(stem):
    """Forward and backward kernels are torch.library ops with fake implementations, so
    AOTAutograd traces a training step in one graph (fullgraph=True) and its gradients
    equal eager ones."""
    mod = _load(stem, "triton", strict=True)
    cls = getattr(mod, mod.__all__[0])
    layer = cls(seed=0, **_small(cls))
    u = _inputs(cls, layer, length=9)["u"]
    torch._dynamo.reset()

    def step(u):
        return layer(u).square().sum()

    u1 = u.clone().requires_grad_()
    eager = torch.autograd.grad(step(u1), [u1, *layer.parameters()])
    u2 = u.clone().requires_grad_()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    traced = torch.autograd.grad(compiled(u2), [u2, *layer.parameters()])
    for a, b in zip(traced, eager):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stem", ["s4d", "s4d_real", "lru"])
def test_lti_kernel_family_on_the_fft_path(stem, monkeypatch):
    """Long LTI sequences run as an FFT convolution whose kernel K comes from the Triton
    LTI family (triton_lti.vandermonde, float64), when no gradient is needed."""
    from ssmc.runtime import triton_lti
    calls = []
    original = triton_lti.vandermonde

    def spy(*args, **kw):
        calls.append(args[-1])
        return original(*args, **kw)

    monkeypatch.setattr(triton_lti, "vandermonde", spy)
    tr, ref = _load(stem, "triton", strict=True), _load(stem, "numpy")
    name = tr.__all__[0]
    T, R = getattr(tr, name), getattr(ref, name)
    dims = _small(T)
    t, r = T(seed=2, **dims), R(seed=2, **dims)
    assert T.ALGORITHM == "fft_conv"
    u = _inputs(T, t, length=97)[T.INPUTS[0][0]]
    with torch.no_grad():
        y = t(u)
    assert calls == [97]
    assert rel(y, r(u.double())) < 1e-4


@pytest.mark.parametrize("block_t", [1, 4, 16])
@pytest.mark.parametrize("stem", ["mamba", "s4d", "lru"])
def test_chunked_scan_any_chunk_size(stem, block_t, monkeypatch):
    """The scan family's chunked form (BLOCK_T tokens per iteration, an associative scan
    inside) at several chunk sizes, a prime length, an initial state and the final state,
    real and complex: the same as the reference."""
    import ssmc.runtime.triton_autotune as at
    monkeypatch.setattr(at, "choose", lambda kernel, shape, args, largest, run, candidates=None:
                        (candidates[0][0], block_t) if candidates else largest)
    tr, ref = _load(stem, "triton", strict=True), _load(stem, "numpy")
    name = tr.__all__[0]
    T, R = getattr(tr, name), getattr(ref, name)
    dims = _small(T)
    t, r = T(seed=6, **dims), R(seed=6, **dims)
    t.fft_min_length = 10 ** 9
    u = _inputs(T, t, length=37)[T.INPUTS[0][0]]
    x0 = torch.randn_like(t.init_state(2))
    with torch.no_grad():
        y, xf = t(u, initial_state=x0, return_state=True)
    yr, xr = r(u.double(), initial_state=x0.to(torch.complex128 if x0.is_complex() else torch.float64),
               return_state=True)
    assert rel(y, yr) < 1e-4 and rel(xf, xr) < 1e-4


@pytest.mark.parametrize("block_t", [1, 4, 16])
@pytest.mark.parametrize("stem", ["mamba", "vim_bidirectional"])
def test_chunked_backward_any_chunk_size(stem, block_t, monkeypatch):
    """The chunked backward kernel (checkpoint intervals in reverse, chunks of BLOCK_T
    tokens, the state's adjoint by a reverse associative scan) at several chunk sizes, over
    two checkpoint intervals (the last partial), with an index map for the reverse
    direction: gradients equal the torch backend's."""
    import ssmc.runtime.triton_autotune as at
    monkeypatch.setattr(at, "choose", lambda kernel, shape, args, largest, run, candidates=None:
                        (candidates[0][0], block_t) if candidates else largest)
    tr, tm = _load(stem, "triton", strict=True), _load(stem, "torch")
    name = tr.__all__[0]
    T, M = getattr(tr, name), getattr(tm, name)
    dims = _small(T)
    t, m = T(seed=7, **dims), M(seed=7, **dims)
    assert T.TRITON_BACKWARD
    ins = _inputs(T, t, length=70)
    first = T.INPUTS[0][0]
    rest = {k: v for k, v in ins.items() if k != first}
    u1, u2 = ins[first].clone().requires_grad_(), ins[first].clone().requires_grad_()
    gt = torch.autograd.grad(t(u1, **rest).square().sum(), [u1, *t.parameters()])
    gm = torch.autograd.grad(m(u2, **rest).square().sum(), [u2, *m.parameters()])
    for a, b in zip(gt, gm):
        assert rel(a, b) < 1e-4


CORE = """
ssm Core "Mamba-1's selective scan core, inputs as mamba-ssm's selective_scan" {
  dims H = 4, N = 3
  input u[H], delta[H], Bm[N], Cm[N]
  state x[H, N]
  param A_log[H, N] = log(1 + arange(N))
  param D[H] = ones
  A = -exp(A_log) : diagonal
  dynamics   x' = A x + Bm * u
  discretize zoh_euler, step = delta
  scan       causal
  output     y = sum(Cm * x, N) + D * u
}
"""


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs_reach_the_kernel_as_they_are(dtype, monkeypatch):
    """Per-token inputs stored in half precision are read by the kernel as they are (half the
    bytes of a float32 copy) and widened in registers; gradients come back in their dtype."""
    import ssmc.runtime.triton_module as tm
    seen = []
    original = tm.fused_scan

    def spy(*args):
        seen.extend(t.dtype for t in args[2])
        return original(*args)

    monkeypatch.setattr(tm, "fused_scan", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T, R = ssmc.loads(CORE, backend="triton", strict=True).Core, ssmc.loads(CORE, backend="numpy").Core
    t, r = T(seed=1), R(seed=1)
    g = torch.Generator().manual_seed(0)
    u, Bm, Cm = (torch.randn(2, 37, n, generator=g) for n in (4, 3, 3))
    delta = torch.rand(2, 37, 4, generator=g) * 0.5 + 0.05
    ins = {k: v.to(dtype) for k, v in dict(u=u, delta=delta, Bm=Bm, Cm=Cm).items()}
    # u is positional (forward(u, /, ...)); the other inputs are keywords.
    with torch.no_grad():
        y = t(ins["u"], **{k: v for k, v in ins.items() if k != "u"})
    assert dtype in seen
    assert y.dtype == dtype
    assert rel(y, r(ins["u"].double(), **{k: v.double() for k, v in ins.items() if k != "u"})) < 3e-2
    ins = {k: v.clone().requires_grad_() for k, v in ins.items()}
    grads = torch.autograd.grad(t(ins["u"], **{k: v for k, v in ins.items() if k != "u"}).float().square().sum(),
                                list(ins.values()))
    assert all(gr.dtype == dtype and torch.isfinite(gr.float()).all() for gr in grads)
