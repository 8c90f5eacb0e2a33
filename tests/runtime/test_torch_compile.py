"""The torch backend in PyTorch's program transforms: torch.compile(fullgraph=True) for
inference and a training step, torch.func.vmap (batches, parameter ensembles, per-sample
gradients) and torch.export, each equal to the eager module.

Compiling is slow on CI's two cores, so CI compiles one example per algorithm family
(LTI convolution, chunked diagonal scan, SSD, dense matrix scan, conv tails in the state,
the chunked delta rule)
through dynamo and AOT autograd (`aot_eager`: the whole graph capture, forward and
backward, where graph breaks and untraceable code show), and one through Inductor end to
end. `SSMC_COMPILE_SWEEP=1` compiles every example, with Inductor, each algorithm
(tens of minutes on two cores: about 40 shared with other jobs).
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch._dynamo.testing

import ssmc

from ..conftest import ROOT

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: example -> (class, tiny dims, length); every other dim keeps its default.
EXAMPLES = {
    "dss": ("DSS", dict(H=3, N=4), 5),
    "lru": ("LRU", dict(H=3, N=4), 5),
    "lssl": ("LSSL", dict(H=3, N=4), 5),
    "mamba": ("Mamba", dict(H=4, N=3, R=1), 5),
    "mamba2": ("Mamba2", dict(Hd=2, P=2, N=3), 5),
    "mamba2_dt_limit": ("Mamba2DtLimit", dict(Hd=2, P=2, N=3), 5),
    "mamba_block": ("MambaBlock", dict(D=4, E=6, N=3, R=1, K=3), 5),
    "s4": ("S4", dict(H=3, N=4), 5),
    "s4d": ("S4D", dict(H=3, N=4), 5),
    "s4d_inv": ("S4DInv", dict(H=3, N=4), 5),
    "s4d_real": ("S4DReal", dict(H=3, N=4), 5),
    "s5": ("S5", dict(H=3, P=4), 5),
    "s5_irregular": ("S5Irregular", dict(H=3, P=4), 5),
    "vim_bidirectional": ("VimBidirectional", dict(H=4, N=3, R=1), 5),
    "vmamba_ss2d": ("SS2D", dict(H=4, N=3, Rdt=1, R=2, Cc=3), 6),
    "gla": ("GLA", dict(D=4, Hd=2, Dk=2, Dv=2, R=2), 5),
    "gsa": ("GSA", dict(H=2, D=4, Dk=2, Dv=2, M=2), 5),
    "gss": ("GSS", dict(E=4, H=2, F=4, N=3), 5),
    "hydra": ("Hydra", dict(Hd=2, P=2, N=3), 5),
    "linear_attention": ("LinearAttention", dict(H=2, D=4, Dk=2, Dv=2), 5),
    "mamba3": ("Mamba3", dict(Hd=2, P=2, N=2), 5),
    "retnet": ("RetNet", dict(D=4, Hd=2, Dk=2, Dv=2), 5),
    "rglru": ("RGLRU", dict(H=4), 5),
    "rwkv6": ("RWKV6", dict(H=2, K=2, R=2), 5),
    "s5_bidirectional": ("S5Bidirectional", dict(H=3, P=4), 5),
    "s7": ("S7", dict(H=3, N=4), 5),
    "vssd": ("VSSD", dict(Hd=2, P=2, N=3), 5),
    "deltanet": ("DeltaNet", dict(D=4, H=2, Dk=2, Dv=2), 5),
    "gated_deltanet": ("GatedDeltaNet", dict(D=4, H=2, Dk=2, Dv=2), 5),
    "longhorn": ("Longhorn", dict(D=3, N=2), 5),
}


def test_every_example_is_in_the_table():
    """A new example joins the sweep (and gets tiny dims here)."""
    assert sorted(EXAMPLES) == sorted(p.stem for p in (ROOT / "examples").glob("*.ssm"))


def make(name: str, fft: bool = False, dtype=torch.float32):
    """The example's layer with tiny dims, and its inputs (u, keyword inputs)."""
    cls_name, dims, length = EXAMPLES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.load(ROOT / "examples" / f"{name}.ssm", backend="torch")
    layer = getattr(mod, cls_name)(seed=0, dtype=dtype, **dims)
    if fft:
        assert layer.ALGORITHM == "fft_conv"
        layer.fft_min_length = 1            # the convolution form at a tiny length
    gen = torch.Generator().manual_seed(1)
    first, *rest = layer.INPUTS
    u = torch.randn((2, length) + tuple(layer.dims[d] for d in first[1]), generator=gen, dtype=dtype)
    kw = {n: torch.rand((2, length) + tuple(layer.dims[d] for d in ds), generator=gen, dtype=dtype) + 0.5
          for n, ds in rest}
    return layer, u, kw


def _loss(y):
    return (y.real if y.is_complex() else y).pow(2).sum()


def _grads(layer, u):
    return [p.grad.clone() for p in layer.parameters()] + [u.grad.clone()]


def check_compiled(name: str, backend: str, fft: bool = False, state: bool = False, train: bool = True):
    """Inference (no_grad, two calls) and a training step (forward + backward) of the
    compiled layer equal the eager ones: outputs, final state and every gradient."""
    torch._dynamo.reset()
    layer, u, kw = make(name, fft)
    extra = {}
    if state:
        extra = dict(initial_state=layer.init_state(u.shape[0]), return_state=True)
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(layer, fullgraph=True, backend=counter)
    flat = (lambda o: tuple(o[:1]) + (tuple(o[1]) if isinstance(o[1], tuple) else (o[1],))) if state else (
        lambda o: (o,))
    with torch.no_grad():
        for k in range(2):
            uk = u * (1 + k)
            for a, b in zip(flat(compiled(uk, **kw, **extra)), flat(layer(uk, **kw, **extra))):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if not train:
        assert counter.frame_count == 1, counter.frame_count
        return
    # Training: the graph again with autograd (one more frame), gradients of the loss.
    u = u.clone().requires_grad_(True)
    y = flat(compiled(u, **kw, **extra))
    _loss(y[0]).backward()
    got = _grads(layer, u)
    layer.zero_grad()
    u.grad = None
    y0 = flat(layer(u, **kw, **extra))
    _loss(y0[0]).backward()
    for a, b in zip(y, y0):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-5, rtol=1e-5)
    for a, b in zip(got, _grads(layer, u)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # One graph for inference, one for training: no graph break, no recompile per call.
    assert counter.frame_count == 2, counter.frame_count


# --- CI: one example per algorithm family ---------------------------------------------

@pytest.mark.parametrize("name, fft, state", [
    ("s4d", True, False),          # LTI: the kernel by powers, FFT convolution
    ("mamba", False, True),        # selective: the chunked diagonal scan, from a given state
    ("mamba2", False, False),      # SSD: chunk-local matmuls
    ("lssl", False, False),        # dense state matrix: the matrix scan
    ("mamba_block", False, True),  # conv tails in the state, gate, out projection
    ("deltanet", False, False),    # the delta rule, chunked
], ids=["fft", "scan", "ssd", "dense", "conv", "delta"])
def test_fullgraph_matches_eager(name, fft, state):
    check_compiled(name, "aot_eager", fft=fft, state=state)


def test_fullgraph_inductor_end_to_end():
    """Inductor generates and runs the code (not only the traced graph); inference only in
    CI (the backward graph through Inductor doubles the time; the sweep has it)."""
    check_compiled("mamba", "inductor", train=False)


def test_compiled_step_matches_eager():
    """Generation: step() compiled, token by token, equals eager step()."""
    torch._dynamo.reset()
    layer, u, _ = make("mamba_block")
    step = torch.compile(layer.step, fullgraph=True, backend="aot_eager")
    s1 = s0 = layer.init_state(2)
    with torch.no_grad():
        for t in range(u.shape[1]):
            y1, s1 = step(u[:, t], s1)
            y0, s0 = layer.step(u[:, t], s0)
            torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
    for a, b in zip(s1, s0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dynamic_length_lti_kernel():
    """A symbolic length (dynamic=True) traces the LTI kernel's power split."""
    torch._dynamo.reset()
    layer, u, _ = make("s5", fft=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager", dynamic=True)
    with torch.no_grad():
        for length in (5, 9):
            v = torch.randn(2, length, u.shape[-1])
            torch.testing.assert_close(compiled(v), layer(v), atol=1e-5, rtol=1e-5)


def test_packed_sequences_with_list_boundaries():
    """cu_seqlens as a list of ints traces (the grouping by length is static)."""
    torch._dynamo.reset()
    layer, _, _ = make("mamba")
    u = torch.randn(1, 7, 4)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(u, cu_seqlens=[0, 3, 7]), layer(u, cu_seqlens=[0, 3, 7]),
                                   atol=1e-5, rtol=1e-5)


# --- the full sweep, on demand ----------------------------------------------------------

#: the LTI examples, which also run the convolution form
LTI = ("dss", "lru", "lssl", "s4", "s4d", "s4d_inv", "s4d_real", "s5", "s5_bidirectional")
SWEEP = [(n, False) for n in EXAMPLES] + [(n, True) for n in LTI]


@pytest.mark.skipif(os.environ.get("SSMC_COMPILE_SWEEP") != "1",
                    reason="every example through Inductor takes tens of minutes on 2 cores: SSMC_COMPILE_SWEEP=1")
@pytest.mark.parametrize("name, fft", SWEEP, ids=[f"{n}-{'fft' if f else 'scan'}" for n, f in SWEEP])
def test_sweep_every_example_inductor(name, fft):
    check_compiled(name, "inductor", fft=fft)


# --- torch.func and torch.export ------------------------------------------------------

@pytest.mark.parametrize("name, fft", [("mamba", False), ("s4d", True), ("mamba2", False), ("lssl", True)])
def test_vmap_over_batches_and_parameter_ensembles(name, fft):
    from torch.func import functional_call, vmap
    layer, u, kw = make(name, fft)
    us = torch.stack([u, 2 * u, -u])                                   # an extra leading axis
    with torch.no_grad():
        ref = torch.stack([layer(x, **kw) for x in us])
        torch.testing.assert_close(vmap(lambda x: layer(x, **kw))(us), ref, atol=1e-6, rtol=1e-6)
        # An ensemble of two parameter sets, one vmap.
        params = {k: v.detach() for k, v in layer.named_parameters()}
        stacked = {k: torch.stack([v, 0.9 * v]) for k, v in params.items()}
        got = vmap(lambda p: functional_call(layer, p, (u,), kw))(stacked)
        ref = torch.stack([functional_call(layer, {k: v[i] for k, v in stacked.items()}, (u,), kw)
                           for i in range(2)])
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_per_sample_gradients_with_vmap_of_grad():
    """vmap(grad(...)): per-sample gradients through the scan's own backward."""
    from torch.func import functional_call, grad, vmap
    layer, u, _ = make("mamba", dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, x):
        return _loss(functional_call(layer, p, (x[None],)))

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, u)
    for i in range(u.shape[0]):
        layer.zero_grad()
        _loss(layer(u[i:i + 1])).backward()
        for k, p in layer.named_parameters():
            torch.testing.assert_close(per_sample[k][i], p.grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name, fft", [("mamba", False), ("s4d", True), ("mamba2", False)])
def test_torch_export(name, fft):
    layer, u, kw = make(name, fft)
    program = torch.export.export(layer, (u,), kw)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(u, **kw), layer(u, **kw), atol=1e-6, rtol=1e-6)
