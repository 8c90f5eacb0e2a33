"""The differential harness: one spec, every backend, against the independent evaluator.

`check_spec(text, sizes, length)` compiles a spec, builds its layer with fixed
random parameters, draws inputs, runs the evaluator of `ssmc.testing.evaluator`
(which reads the AST only) and compares with every requested backend:

| check | what is compared |
| --- | --- |
| `forward` | the output (and the final state for causal / reverse scans), float64 |
| `initial_state` | a random state entering the first visited token |
| `step` | `step()` token by token (causal scans) |
| `chain` | two calls, the second from the first's final state (global scans: the final state only) |
| `packed` | `cu_seqlens` over two sequences of different lengths |
| `float32` | the output in float32 (torch, triton) at a float32 tolerance |
| `grad` | `gradcheck` in float64 over the input and every parameter (torch); triton's gradients against torch's |

Each disagreement, crash or rejection is a `Finding`. Nothing here asserts: the
pytest sample and `python -m ssmc.testing.fuzz` decide what to do with findings.
"""
from __future__ import annotations

import contextlib
import io
import os
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import BackendUnavailable, SpecError
from ..frontend.parser import parse
from .evaluator import EvalError, Spec, eval_dims, evaluate

RTOL64 = 1e-9
RTOL32 = 1e-4
# Outputs beyond this are ill-conditioned draws (a generator matter), not findings.
HUGE = 1e6

ALL_CHECKS = ("forward", "initial_state", "step", "chain", "packed", "float32", "grad")


@dataclass
class Finding:
    kind: str          # rejected | crash | mismatch | evaluator
    backend: str       # numpy | torch | triton | compile | evaluator
    check: str         # one of ALL_CHECKS, or compile / construct
    message: str
    detail: str = ""

    def key(self) -> tuple:
        return (self.kind, self.backend, self.check)

    def __str__(self):
        return f"[{self.kind} {self.backend}/{self.check}] {self.message}"


@dataclass
class Report:
    text: str
    findings: list = field(default_factory=list)
    skipped: str = ""           # why the spec was not compared (ill-conditioned draw, ...)
    unsupported: list = field(default_factory=list)   # backends that would fall back, and why
    checks_run: int = 0

    @property
    def ok(self):
        return not self.findings


def _err(e) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def _tb() -> str:
    return "".join(traceback.format_exc(limit=-6))


def _rel(y, ref) -> float:
    y, ref = np.asarray(y), np.asarray(ref)
    if y.shape != ref.shape:
        return float("inf")
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    return float(np.abs(y - ref).max(initial=0.0)) / scale


def _np(t):
    if isinstance(t, (tuple, list)):
        return type(t)(_np(v) for v in t)
    return t.detach().resolve_conj().resolve_neg().cpu().numpy()


class _Case:
    """One spec, its sizes, parameters and inputs."""

    def __init__(self, text, sizes, length, batch, seed):
        self.text, self.length, self.batch, self.seed = text, length, batch, seed
        self.block = parse(text, "<fuzz>").blocks[0]
        self.spec = Spec(self.block)
        self.sizes = eval_dims(self.block, sizes)
        self.given = dict(sizes)
        self.rng = np.random.default_rng(seed)
        # one direction: the scans with a final state, `initial_state` and chaining
        self.single = self.spec.scan.order in ("causal", "reverse", "global")
        self.causal = self.spec.scan.order == "causal"
        # a global scan's outputs read the state after the whole sequence: no chaining
        self.chains = self.spec.scan.order in ("causal", "reverse")
        # conv and prev of a per-token value look back in time: a reverse scan's chained
        # halves see different tokens before them (prev(x) of the state does not).
        self.has_conv = "conv(" in text or "prev(" in text
        self.nstates = len(self.spec.states)

    def draw_inputs(self, batch, length):
        out = {}
        for i in self.spec.inputs:
            shape = (batch, length) + tuple(self.sizes[d.name] for d in i.dims)
            if not i.dims and not i.complex:
                # scalar inputs are time steps in most specs (`tau`): keep them positive
                out[i.name] = self.rng.uniform(0.5, 1.5, shape)
            else:
                out[i.name] = self.rng.standard_normal(shape)
                if i.complex:
                    # `input v[...] complex`: complex values of the same size
                    out[i.name] = (out[i.name] + 1j * self.rng.standard_normal(shape)) / np.sqrt(2)
        return out

    def draw_state(self, batch):
        """A random entering state (a tuple of them, in declaration order, for several)."""
        xs = []
        for st_ in self.spec.states:
            shape = (batch,) + tuple(self.sizes[d.name] for d in st_.dims)
            x = 0.5 * self.rng.standard_normal(shape)
            if st_.complex:
                x = x + 0.5j * self.rng.standard_normal(shape)
            xs.append(x)
        return xs[0] if len(xs) == 1 else tuple(xs)


def _tensor(v, dtype):
    """An input array as a tensor of `dtype`, or of its complex counterpart (complex inputs)."""
    if np.iscomplexobj(v):
        return torch.tensor(v, dtype=torch.complex128 if dtype == torch.float64 else torch.complex64)
    return torch.tensor(v, dtype=dtype)


def _torch_inputs(inputs: dict, dtype):
    return {k: _tensor(v, dtype) for k, v in inputs.items()}


def _call(layer, prim, ins: dict, **kw):
    u = ins[prim]
    rest = {k: v for k, v in ins.items() if k != prim}
    return layer(u, **rest, **kw)


def _slice(ins: dict, sl):
    return {k: v[:, sl] for k, v in ins.items()}


def _state_tensor(x, like_complex: bool, dtype):
    if like_complex:
        return torch.tensor(x, dtype=torch.complex128 if dtype == torch.float64 else torch.complex64)
    return torch.tensor(x, dtype=dtype)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def check_spec(text: str, sizes: dict | None = None, length: int = 7, batch: int = 2, seed: int = 0,
               backends=("numpy", "torch"), checks=ALL_CHECKS) -> Report:
    """Compare every backend on one spec with the evaluator; collect the findings."""
    import ssmc

    rep = Report(text)
    F = rep.findings
    sizes = dict(sizes or {})
    # ---- compile with the reference backend (also: is the spec accepted at all?)
    try:
        with _quiet():
            mod = ssmc.loads(text, backend="numpy", filename="<fuzz>", strict=True)
    except SpecError as e:
        F.append(Finding("rejected", "compile", "compile", _err(e), str(e)))
        return rep
    except Exception as e:  # noqa: BLE001 - any other exception is a compiler crash
        F.append(Finding("crash", "compile", "compile", _err(e), _tb()))
        return rep
    try:
        case = _Case(text, sizes, length, batch, seed)
    except EvalError as e:
        F.append(Finding("evaluator", "evaluator", "setup", _err(e), _tb()))
        return rep
    cls = getattr(mod, case.block.name)
    try:
        with _quiet():
            ref_layer = cls(seed=seed, dtype=torch.float64, **case.given)
    except Exception as e:  # noqa: BLE001
        # Sizes the spec does not allow (a shrunk dim that the blocks of a block_diagonal
        # matrix no longer divide) are the constructor's one-line ValueError: not a finding.
        if isinstance(e, ValueError) and "is not divisible by the block count" in str(e):
            rep.skipped = f"sizes the spec does not allow: {_err(e)}"
            return rep
        F.append(Finding("crash", "numpy", "construct", _err(e), _tb()))
        return rep
    if dict(ref_layer.dims) != case.sizes:
        F.append(Finding("mismatch", "numpy", "construct",
                         f"dims {dict(ref_layer.dims)} != {case.sizes} (evaluated from the spec)"))
        return rep
    sd = {k: v.detach().clone() for k, v in ref_layer.state_dict().items()}
    params = {k: v.numpy() for k, v in sd.items()}
    params32 = {k: v.to(torch.complex64 if v.is_complex() else torch.float32).to(
        torch.complex128 if v.is_complex() else torch.float64).numpy() for k, v in sd.items()}
    prim = case.spec.inputs[0].name
    L, B = length, batch
    inputs = case.draw_inputs(B, L)
    inputs32 = {k: v.astype(np.complex64 if np.iscomplexobj(v) else np.float32).astype(
        np.complex128 if np.iscomplexobj(v) else np.float64) for k, v in inputs.items()}

    def ref(params_=params, inputs_=inputs, x0=None, return_state=False):
        return evaluate(case.block, case.sizes, params_, inputs_, initial_state=x0,
                        return_state=return_state)

    try:
        y_ref, x_ref = (ref(return_state=True) if case.single else (ref(), None))
    except EvalError as e:
        F.append(Finding("evaluator", "evaluator", "forward", _err(e), _tb()))
        return rep
    except Exception as e:  # noqa: BLE001
        F.append(Finding("evaluator", "evaluator", "forward", _err(e), _tb()))
        return rep
    if not np.all(np.isfinite(y_ref)) or np.abs(y_ref).max(initial=0) > HUGE:
        rep.skipped = "ill-conditioned draw: the evaluator's output is not finite or huge"
        return rep

    layers = {}
    for be in backends:
        try:
            with _quiet():
                m = mod if be == "numpy" else ssmc.loads(text, backend=be, filename="<fuzz>", strict=True)
                lay = getattr(m, case.block.name)(seed=seed, dtype=torch.float64, **case.given)
                lay.load_state_dict(sd)
            layers[be] = lay
        except SpecError as e:
            F.append(Finding("rejected", be, "compile", _err(e), str(e)))
        except BackendUnavailable as e:
            # beyond this backend: it would fall back to torch with a notice (not a failure)
            rep.unsupported.append(f"{be}: {_err(e)}")
        except Exception as e:  # noqa: BLE001
            F.append(Finding("crash", be, "compile", _err(e), _tb()))

    def compare(be, check, got, want, tol=RTOL64, what="y"):
        rep.checks_run += 1
        err = _rel(got, want)
        if not err <= tol:
            shape = f"{np.shape(got)} vs {np.shape(want)}"
            F.append(Finding("mismatch", be, check, f"{what}: relative error {err:.3g} > {tol:g} ({shape})"))
            return False
        return True

    def run(be, check, fn):
        try:
            with _quiet():
                return fn()
        except Exception as e:  # noqa: BLE001
            F.append(Finding("crash", be, check, _err(e), _tb()))
            return None

    t64 = torch.float64
    for be, lay in layers.items():
        ins = _torch_inputs(inputs, t64)
        # ---- forward (+ final state)
        if "forward" in checks:
            if case.single:
                out = run(be, "forward", lambda: _call(lay, prim, ins, return_state=True))
                if out is not None:
                    y, xf = out
                    compare(be, "forward", _np(y), y_ref)
                    # The returned state: the state (or the states, in declaration order),
                    # then any conv tails.
                    k = case.nstates
                    got = tuple(xf[:k]) if isinstance(xf, tuple) else (xf,)
                    wants = x_ref if k > 1 else (x_ref,)
                    for i, (a, b) in enumerate(zip(got, wants)):
                        compare(be, "forward", _np(a), b,
                                what="final state" + (f" {case.spec.states[i].name}" if k > 1 else ""))
            else:
                y = run(be, "forward", lambda: _call(lay, prim, ins))
                if y is not None:
                    compare(be, "forward", _np(y), y_ref)
        # ---- initial state
        if "initial_state" in checks and case.single:
            x0 = case.draw_state(B)
            want = ref(x0=x0)
            x0t = (_state_tensor(x0, case.spec.state.complex, t64) if case.nstates == 1 else
                   tuple(_state_tensor(x, st_.complex, t64) for x, st_ in zip(x0, case.spec.states)))
            if lay.CONVS:
                # The carried tails of conv and prev (zero: the evaluator starts from none).
                x0t = (*(x0t if case.nstates > 1 else (x0t,)), *lay.init_state(B, dtype=t64)[case.nstates:])
            y = run(be, "initial_state", lambda: _call(lay, prim, ins, initial_state=x0t))
            if y is not None:
                compare(be, "initial_state", _np(y), want)
        # ---- step() token by token
        if "step" in checks and case.causal:
            def steps():
                st = lay.init_state(B, dtype=t64) if be != "numpy" else lay.init_state(B)
                outs = []
                for t in range(L):
                    tok = {k: v[:, t] for k, v in ins.items()}
                    y_t, st = lay.step(tok[prim], st, **{k: v for k, v in tok.items() if k != prim})
                    outs.append(y_t)
                return torch.stack(outs, dim=1)
            y = run(be, "step", steps)
            if y is not None:
                compare(be, "step", _np(y), y_ref)
        # ---- chaining through the returned state
        if "chain" in checks and case.chains and L >= 2 and (case.causal or not case.has_conv):
            T = L // 2
            first, second = (slice(0, T), slice(T, L)) if case.causal else (slice(T, L), slice(0, T))

            def chain():
                y1, s1 = _call(lay, prim, _slice(ins, first), return_state=True)
                y2 = _call(lay, prim, _slice(ins, second), initial_state=s1)
                return torch.cat([y1, y2] if case.causal else [y2, y1], dim=1)
            y = run(be, "chain", chain)
            if y is not None:
                compare(be, "chain", _np(y), y_ref)
        # ---- a global scan: the final state chains (its outputs read the whole sequence's)
        if "chain" in checks and case.single and not case.chains and L >= 2:
            T = L // 2

            def chain_state():
                _, s1 = _call(lay, prim, _slice(ins, slice(0, T)), return_state=True)
                _, s2 = _call(lay, prim, _slice(ins, slice(T, L)), initial_state=s1, return_state=True)
                return s2[0] if isinstance(s2, tuple) else s2
            xs = run(be, "chain", chain_state)
            if xs is not None:
                compare(be, "chain", _np(xs), x_ref, what="final state")
        # ---- packed variable-length sequences
        if "packed" in checks and case.single and B >= 2 and L >= 2:
            l1, l2 = L, max(1, L - 2)
            packed = {k: torch.cat([v[0:1, :l1], v[1:2, :l2]], dim=1) for k, v in ins.items()}
            cu = torch.tensor([0, l1, l1 + l2])
            want = np.concatenate(
                [ref(inputs_={k: v[0:1, :l1] for k, v in inputs.items()}),
                 ref(inputs_={k: v[1:2, :l2] for k, v in inputs.items()})], axis=1)
            y = run(be, "packed", lambda: _call(lay, prim, packed, cu_seqlens=cu))
            if y is not None:
                compare(be, "packed", _np(y), want)
        # ---- float32
        if "float32" in checks and be != "numpy":
            def f32():
                m = ssmc.loads(text, backend=be, filename="<fuzz>", strict=True)
                l32 = getattr(m, case.block.name)(seed=seed, **case.given)
                l32.load_state_dict(sd)
                return _call(l32, prim, _torch_inputs(inputs, torch.float32))
            y = run(be, "float32", f32)
            if y is not None:
                want32 = ref(params_=params32, inputs_=inputs32)
                if y.dtype != torch.float32 and not y.is_complex():
                    F.append(Finding("mismatch", be, "float32", f"output dtype {y.dtype} for float32 inputs"))
                compare(be, "float32", _np(y).astype(np.complex128 if y.is_complex() else np.float64),
                        want32, tol=RTOL32)
    # ---- gradients
    if "grad" in checks and "torch" in layers:
        _grad_checks(rep, layers, case, inputs, prim)
    return rep


def _grad_checks(rep, layers, case, inputs, prim):
    """gradcheck of torch in float64; triton's gradients against torch's."""
    F = rep.findings
    lay = layers["torch"]
    names = [n for n, p in lay.named_parameters()]
    ins = {k: _tensor(v[:, : min(v.shape[1], 5)], torch.float64) for k, v in inputs.items()}
    if case.spec.scan.order == "cross2d":
        ins = {k: _tensor(v, torch.float64) for k, v in inputs.items()}
    ins[prim].requires_grad_(True)
    base = {n: p.detach().clone().requires_grad_(True) for n, p in lay.named_parameters()}

    def fn(u, *ps):
        over = dict(zip(names, ps))
        rest = {k: v for k, v in ins.items() if k != prim}
        y = torch.func.functional_call(lay, over, (u,), dict(rest), strict=False)
        return torch.view_as_real(y) if y.is_complex() else y

    args = (ins[prim],) + tuple(base[n] for n in names)
    rep.checks_run += 1
    try:
        with _quiet():
            ok = torch.autograd.gradcheck(fn, args, fast_mode=True, raise_exception=False,
                                          atol=1e-6, rtol=1e-4)
        if not ok:
            F.append(Finding("mismatch", "torch", "grad", "gradcheck failed (analytic vs numerical, float64)"))
    except Exception as e:  # noqa: BLE001
        F.append(Finding("crash", "torch", "grad", _err(e), _tb()))
        return
    if "triton" not in layers:
        return
    tl = layers["triton"]

    def grads(layer):
        layer.zero_grad(set_to_none=True)
        u = ins[prim].detach().clone().requires_grad_(True)
        rest = {k: v for k, v in ins.items() if k != prim}
        y = layer(u, **rest)
        yr = torch.view_as_real(y) if y.is_complex() else y
        # Fixed random weights, the same for both layers: symmetric ones (a linspace from -1
        # to 1) sum to zero, so a bias added to every output has a true gradient of exactly 0
        # and each backend returns its own roundoff there.
        w = (torch.rand(yr.shape, generator=torch.Generator().manual_seed(12345), dtype=yr.dtype) * 2 - 1)
        (yr * w).sum().backward()
        out = {"<input>": u.grad}
        for n, p in layer.named_parameters():
            out[n] = p.grad if p.grad is not None else torch.zeros_like(p)
        return out

    rep.checks_run += 1
    try:
        with _quiet():
            gt, gr = grads(tl), grads(lay)
    except Exception as e:  # noqa: BLE001
        F.append(Finding("crash", "triton", "grad", _err(e), _tb()))
        return
    # A gradient whose terms cancel (to a size far below the others') is compared at the
    # roundoff of the largest gradient, not relative to its own leftover roundoff.
    floor = 1e-12 * max((float(np.abs(_np(b)).max(initial=0.0)) for b in gr.values() if b is not None),
                        default=0.0)
    for n in gr:
        a, b = gt[n], gr[n]
        if a is None or b is None:
            continue
        a, b = _np(a), _np(b)
        if a.shape != b.shape:
            err = float("inf")
        else:
            err = float(np.abs(a - b).max(initial=0.0)) / max(float(np.abs(b).max(initial=0.0)), floor, 1e-30)
        if not err <= 1e-7:
            F.append(Finding("mismatch", "triton", "grad", f"gradient of {n}: relative error {err:.3g} vs torch"))
