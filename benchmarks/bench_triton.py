"""ssmc's Triton backend on a GPU, side by side with its peers, in one process.

    python benchmarks/bench_triton.py                   # the shapes of the issue (an H100: minutes)
    python benchmarks/bench_triton.py --out gpu.md      # also write the Markdown tables to a file
    python benchmarks/bench_triton.py --smoke           # tiny shapes; without CUDA, through Triton's
                                                        # CPU interpreter, to check that it runs

Mamba-1 selective scan (bfloat16, batch 8, 1536 channels, N 16, L 2048 / 4096 / 8192,
forward and forward+backward): ssmc (backend="triton"); mamba-ssm's selective_scan_fn
(CUDA extension); accelerated-scan's Triton first-order scan run on the expanded state
(B x 1536*16 x L); torch.compile of torch's associative_scan on the same expanded state;
and the HBM roofline: the bytes that must move (u, delta, B, C read, y written, bf16)
over the device bandwidth measured in the same run by a 2 GiB device-to-device copy.

Mamba-2 SSD (bfloat16, batch 8, 24 heads x 64, N 128, L 8192, forward and
forward+backward): ssmc; mamba-ssm's mamba_chunk_scan_combined (Triton); fla's
chunk_simple_gla, the scalar-decay linear attention that Mamba-2 is an instance of
(q = C, k = B, v = dt*x, g = dt*A per head, scale 1).

Every peer is optional: one that does not import or fails prints a row saying why. Each
model starts with correctness lines (float32, a shorter length): ssmc triton against
ssmc's PyTorch backend, and each peer against ssmc. Speed is measured, never asserted.
Peers' wheels for a machine without network: benchmarks/peers.sh.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import math
import os
import platform
import shlex
import sys
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# The specs are the CPU benchmark's. (Importing ssmc does not import triton: TRITON_INTERPRET
# can still be set in main(), before ssmc generates the first Triton kernel.)
from bench_torch import MAMBA_CORE, SSD_CORE  # noqa: E402

# --- shapes -----------------------------------------------------------------------------------
# The shapes, and tiny ones for --smoke: Triton's interpreter runs every program
# of a kernel in numpy, one after another, so the smoke shapes keep programs and tokens few.
FULL = dict(
    m1=dict(batch=8, H=1536, N=16, lengths=(2048, 4096, 8192), check=dict(batch=2, L=1024)),
    m2=dict(batch=8, Hd=24, P=64, N=128, lengths=(8192,), check=dict(batch=1, L=512)),
)
SMOKE = dict(
    m1=dict(batch=1, H=8, N=4, lengths=(32, 64), check=dict(batch=2, L=24)),
    m2=dict(batch=1, Hd=2, P=4, N=8, lengths=(64,), check=dict(batch=1, L=24)),
)

# The Mamba-2 chunk length the peers use (Mamba-2's default).
SSD_CHUNK = 256


# --- timing ------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_ms(fn, args) -> float:
    """Median milliseconds of fn() on the GPU (triton's do_bench: CUDA events, L2 flushed
    between runs), after one explicit call that absorbs compilation and ssmc's block-size
    tuning; on the CPU (--smoke) the best of --repeat wall-clock runs, which only shows
    that the code runs (the interpreter's times mean nothing)."""
    fn()
    sync(args.device)
    if args.device == "cuda":
        # Something that takes seconds per call after its warm-up (a peer's slow fallback, such as
        # torch.compile's generic associative_scan) is timed once: do_bench would call it dozens of times.
        t = time.perf_counter()
        fn()
        sync(args.device)
        once = time.perf_counter() - t
        if once > args.slow_s:
            return once * 1e3
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median"))
    best = math.inf
    for _ in range(args.repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def measure_bandwidth(args) -> tuple[float, str]:
    """Device memory bandwidth in bytes/s: a large copy, counting the bytes read plus the bytes
    written (2 GiB each way on the GPU; the datasheet figure is a lead, this is the ceiling
    that the roofline rows divide by)."""
    nbytes = (2 << 30) if args.device == "cuda" else (32 << 20)
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=args.device)  # not zeros
    dst = torch.empty_like(src)
    ms = bench_ms(functools.partial(dst.copy_, src), args)
    src = dst = None  # the 4 GiB go back before the benchmarks start
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3), f"{nbytes >> 20} MiB {args.device} copy_, read + write, {ms:.3f} ms"


# --- results -------------------------------------------------------------------------------------
@dataclass
class Row:
    what: str
    shape: str
    ms: float | None = None          # None: skipped or failed (why in note)
    nbytes: float | None = None      # the bytes that must move, for GB/s and % of the roofline
    ref_ms: float | None = None      # ssmc's time at this shape and mode
    note: str = ""                   # why skipped / failed, or how it ran
    ref: bool = False                # ssmc's own row: the one the ratios divide by


@dataclass
class Table:
    title: str
    bw: float                        # the measured bandwidth, bytes/s
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt_ms(ms: float) -> str:
    return f"{ms:.4f}" if ms < 1 else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def cells(r: Row, bw: float) -> list[str]:
    if r.ms is None:
        return [r.what, r.shape, r.note, "", "", ""]
    ratio = "(ssmc)" if r.ref else f"{r.ms / r.ref_ms:.2f}" if r.ref_ms else "n/a"
    gbs = pct = ""
    if r.nbytes:
        gbs = f"{r.nbytes / (r.ms * 1e-3) / 1e9:.0f}"
        pct = f"{100 * r.nbytes / bw / (r.ms * 1e-3):.0f} %"
    what = r.what + (f" ({r.note})" if r.note else "")
    return [what, r.shape, _fmt_ms(r.ms), ratio, gbs, pct]


def emit(table: Table, r: Row) -> None:
    """Record a row and print it at once, so that a run cut short still shows what it measured."""
    table.rows.append(r)
    c = cells(r, table.bw)
    if r.ms is None:
        print(f"  {c[0]:<72} {c[1]:<34} {c[2]}", flush=True)
    else:
        print(f"  {c[0]:<72} {c[1]:<34} {c[2]:>9} ms  ratio {c[3]:>6}  {c[4]:>5} GB/s  {c[5]:>5}",
              flush=True)


def markdown(tables: list[Table], header: list[str]) -> str:
    out = header[:]
    for t in tables:
        out += ["", f"### {t.title}", "",
                "| what | shape | ms | peer / ssmc | GB/s | % of HBM roofline |",
                "| --- | --- | ---: | ---: | ---: | ---: |"]
        out += ["| " + " | ".join(x.replace("|", "/") for x in cells(r, t.bw)) + " |" for r in t.rows]
        if t.notes:
            out += [""] + [f"- {n}" for n in t.notes]
    return "\n".join(out) + "\n"


def why(e: BaseException) -> str:
    """One line for a table cell: the error, and where it was raised when it says nothing."""
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not str(e).strip() and e.__traceback__ is not None:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        text += f" at {Path(frame.filename).name}:{frame.lineno}"
    return text[:160]


def guarded(table: Table, what: str, shape: str, run, *, nbytes=None, ref_ms=None, ref=False):
    """Run one measurement; any error becomes a row saying so and the benchmark goes on
    (every peer is optional, and ssmc's own rows must not take the peers down with them)."""
    try:
        ms, note = run()
        emit(table, Row(what, shape, ms, nbytes, ref_ms, note, ref))
        return ms
    except Exception as e:  # noqa: BLE001
        if isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        # The whole traceback on stderr: GPU time is scarce, the next session must see the cause.
        traceback.print_exc(file=sys.stderr)
        emit(table, Row(what, shape, note=f"failed: {why(e)}"))
        return None


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> str:
    """max |a - b|, and relative to max |b|."""
    a, b = a.detach().double(), b.detach().double()
    d = float((a - b).abs().max())
    return f"max |diff| {d:.2e} (rel. {d / max(float(b.abs().max()), 1e-30):.1e})"


# --- peers: imports ----------------------------------------------------------------------------
def peer_import(loader):
    """(callable, None) or (None, why it is skipped)."""
    try:
        return loader(), None
    except Exception as e:  # noqa: BLE001  (ImportError, and whatever a peer raises at import)
        return None, f"skipped: {why(e)}"


def load_selective_scan():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    return selective_scan_fn


def load_chunk_scan_combined():
    """mamba-ssm's Mamba-2 kernels are Triton and need no compiled extension, but the package's
    __init__ imports selective_scan_cuda (the CUDA build, many minutes of nvcc): where that is
    missing (an install with MAMBA_SKIP_CUDA_BUILD=TRUE, as peers.sh suggests), load the Triton
    module without running the package's __init__."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return mamba_chunk_scan_combined
    except ImportError as e:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or "selective_scan_cuda" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        del sys.modules[name]
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = pkg
    return importlib.import_module("mamba_ssm.ops.triton.ssd_combined").mamba_chunk_scan_combined


def load_accelerated_scan():
    # 0.3.x names the Triton scan accelerated_scan.scalar; earlier releases accelerated_scan.triton.
    for name in ("accelerated_scan.scalar", "accelerated_scan.triton"):
        try:
            return importlib.import_module(name).scan
        except ImportError:
            continue
    raise ImportError("No module named 'accelerated_scan' (neither .scalar nor .triton)")


def load_chunk_simple_gla():
    from fla.ops.simple_gla import chunk_simple_gla
    return chunk_simple_gla


def check(table: Table, label: str, fn) -> None:
    """One correctness line, printed at once and kept for the Markdown; a failure is a line too."""
    try:
        line = f"{label}: {fn()}"
    except Exception as e:  # noqa: BLE001
        line = f"{label}: failed: {why(e)}"
    table.notes.append(line)
    print(f"  correctness: {line}", flush=True)


def compare_layers(layer, ref, inputs, names) -> str:
    """Forward and input gradients of two ssmc layers (same parameters) on the same inputs."""
    first, *rest = inputs
    kw = lambda xs: dict(zip(("delta", "Bm", "Cm"), xs))  # noqa: E731
    with torch.no_grad():
        y, y_ref = layer(first, **kw(rest)), ref(first, **kw(rest))
    text = maxdiff(y, y_ref)
    a, b = leaves_of(*inputs), leaves_of(*inputs)
    gy = torch.randn_like(y_ref)
    layer(a[0], **kw(a[1:])).backward(gy)
    ref(b[0], **kw(b[1:])).backward(gy)
    return text + "; gradients: " + "; ".join(f"d{n} {maxdiff(p.grad, q.grad)}" for n, p, q in zip(names, a, b))


def needs_cuda(args, what: str) -> str | None:
    if args.device != "cuda":
        return f"skipped: needs CUDA ({what})"
    return None


# --- ssmc -----------------------------------------------------------------------------------------
def load_ssmc(spec: str, backend: str):
    import ssmc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssmc.loads(spec, backend=backend, strict=True)


def fwd_fn(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def fwd_bwd_fn(fn, leaves, dy):
    """Forward and backward with a fixed output gradient; leaves' gradients reset each time."""
    def run():
        for t in leaves:
            t.grad = None
        fn().backward(dy)
    return run


def leaves_of(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def backward_kind(layer) -> str:
    # Systems in the SSD form differentiate through the SSD family's backward kernel; elsewhere,
    # where the Triton backend has no generated backward kernel for a spec, its module runs the
    # PyTorch backend's path when gradients are wanted: the row says which one was timed.
    if getattr(layer, "ALGORITHM", "") == "ssd":
        return "SSD backward kernel"
    return "generated backward kernel" if getattr(layer, "TRITON_BACKWARD", False) else \
        "gradients through the torch path"


# --- Mamba-1 ----------------------------------------------------------------------------------------
def m1_inputs(batch, L, H, N, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    u = torch.randn(batch, L, H, generator=g, device=device)
    # Mamba's step sizes: softplus of a projection, about 0.001 to 0.1.
    delta = torch.nn.functional.softplus(torch.randn(batch, L, H, generator=g, device=device) - 3)
    Bm = torch.randn(batch, L, N, generator=g, device=device)
    Cm = torch.randn(batch, L, N, generator=g, device=device)
    return [t.to(dtype) for t in (u, delta, Bm, Cm)]


def m1_selective_scan(f, u, delta, A, Bm, Cm, D):
    """mamba-ssm's layout: u, delta [B, H, L]; B, C [B, N, L]; A [H, N] and D [H] in float32."""
    return f(u, delta, A, Bm, Cm, D=D)


def m1_expanded(delta, u, A, Bm):
    """The expanded first-order recurrence h_t = a_t h_(t-1) + b_t over channels (H, N):
    a = exp(delta A), b = delta B u, laid out [B, H*N, L] as accelerated-scan wants."""
    b_, L, H = u.shape
    dT, uT = delta.transpose(1, 2), u.transpose(1, 2)                    # [B, H, L]
    gates = torch.exp(dT[:, :, None, :] * A[None, :, :, None])           # [B, H, N, L] float32
    toks = (dT * uT)[:, :, None, :] * Bm.transpose(1, 2)[:, None, :, :]  # [B, H, N, L]
    # (Elementwise results follow the transposed inputs' strides: made contiguous, as the scan asserts.)
    return gates.to(u.dtype).reshape(b_, -1, L).contiguous(), toks.to(u.dtype).reshape(b_, -1, L).contiguous()


def m1_readout(h, u, Cm, D):
    b_, L, H = u.shape
    hs = h.reshape(b_, H, -1, L)                                         # [B, H, N, L]
    return torch.einsum("bhnl,bln->blh", hs, Cm) + D * u


def m1_accelerated(scan, u, delta, A, Bm, Cm, D):
    gates, toks = m1_expanded(delta, u, A, Bm)
    return m1_readout(scan(gates, toks), u, Cm, D)


def _assoc_combine(left, right):
    return left[0] * right[0], right[0] * left[1] + right[1]


def m1_assoc(mode, u, delta, A, Bm, Cm, D):
    """torch's associative_scan over time on the expanded state [B, L, H, N], readout included."""
    from torch._higher_order_ops.associative_scan import associative_scan
    dA = torch.exp(delta.unsqueeze(-1) * A)
    BX = (delta * u).unsqueeze(-1) * Bm.unsqueeze(2)
    _, h = associative_scan(_assoc_combine, (dA, BX), dim=1, combine_mode=mode)
    return ((h * Cm.unsqueeze(2)).sum(-1) + D * u).to(u.dtype)


def m1_bytes(batch, L, H, N, mode, elt=2) -> float:
    """Bytes that must cross HBM: forward reads u, delta, B, C and writes y; the backward reads
    them again with dy and writes du, ddelta, dB, dC. A, D and the state stay on chip."""
    ins, out = batch * L * (2 * H + 2 * N) * elt, batch * L * H * elt
    return ins + out if mode == "fwd" else 3 * ins + 2 * out


def bench_mamba1(args, bw, tables):
    cfg = args.shapes["m1"]
    H, N, batch = cfg["H"], cfg["N"], cfg["batch"]
    dev, dt = args.device, torch.bfloat16
    table = Table(f"Mamba-1 selective scan, bfloat16, batch {batch}, {H} channels, N {N}", bw)
    tables.append(table)
    print(f"\n{table.title}", flush=True)

    # ssmc's rows may fail (the Triton backend is under work): they say so and the peers still run.
    layer, layer_why = None, ""
    try:
        layer = load_ssmc(MAMBA_CORE, "triton").MambaCore(H=H, N=N, seed=0).to(dev)
    except Exception as e:  # noqa: BLE001
        layer_why = f"failed to build: {why(e)}"

    sel, sel_why = peer_import(load_selective_scan)
    acc, acc_why = peer_import(load_accelerated_scan)

    # Correctness first (float32, shorter): ssmc triton against ssmc torch, then each peer
    # against ssmc torch (which is what checks the peers' argument mappings).
    c = cfg["check"]
    u, delta, Bm, Cm = m1_inputs(c["batch"], c["L"], H, N, dev, torch.float32, seed=1)
    y_ref = None
    try:
        ref = load_ssmc(MAMBA_CORE, "torch").MambaCore(H=H, N=N, seed=0).to(dev)
        if layer is not None:
            ref.load_state_dict(layer.state_dict())
        with torch.no_grad():
            y_ref = ref(u, delta=delta, Bm=Bm, Cm=Cm)
    except Exception as e:  # noqa: BLE001
        failure = f"failed: {why(e)}"
        check(table, "ssmc torch (the reference)", lambda: failure)
    if y_ref is None:
        A = -torch.arange(1, N + 1, device=dev, dtype=torch.float32).expand(H, N)  # the spec's default A
        D = torch.ones(H, device=dev)
    else:
        A = -torch.exp(ref.A_log.detach().float())
        D = ref.D.detach().float()
        if layer is not None:
            check(table, f"ssmc triton vs ssmc torch, float32, batch {c['batch']}, L {c['L']}",
                  lambda: "forward " + compare_layers(layer, ref, (u, delta, Bm, Cm), ("u", "delta", "B", "C")))
        if sel is not None and args.device == "cuda":
            def sel_check():
                p = [t.transpose(1, 2).contiguous() for t in (u, delta, Bm, Cm)]
                with torch.no_grad():
                    return maxdiff(m1_selective_scan(sel, p[0], p[1], A, p[2], p[3], D).transpose(1, 2), y_ref)
            check(table, "mamba-ssm selective_scan_fn vs ssmc torch, float32", sel_check)
        if acc is not None:
            def acc_check():
                with torch.no_grad():
                    return maxdiff(m1_accelerated(acc, u, delta, A, Bm, Cm, D), y_ref)
            check(table, "accelerated-scan on the expanded state vs ssmc torch, float32", acc_check)

    for L in cfg["lengths"]:
        u, delta, Bm, Cm = m1_inputs(batch, L, H, N, dev, dt)
        for mode in ("fwd", "fwd+bwd"):
            shape = f"{batch} x {L} x {H}, N {N}, {mode}"
            nbytes = m1_bytes(batch, L, H, N, mode)
            dy = torch.randn(batch, L, H, device=dev, dtype=dt)

            # ssmc: the layer as a user calls it, inputs [B, L, H] and [B, L, N].
            def run_ssmc():
                if layer is None:
                    raise RuntimeError(layer_why)
                if mode == "fwd":
                    f = fwd_fn(lambda: layer(u, delta=delta, Bm=Bm, Cm=Cm))
                    return bench_ms(f, args), ""
                lv = leaves_of(u, delta, Bm, Cm)
                # (The parameters' gradients are reset too, so none accumulates across runs.)
                f = fwd_bwd_fn(lambda: layer(lv[0], delta=lv[1], Bm=lv[2], Cm=lv[3]),
                               lv + list(layer.parameters()), dy)
                return bench_ms(f, args), backward_kind(layer)
            t0 = guarded(table, "ssmc triton", shape, run_ssmc, nbytes=nbytes, ref=True)
            emit(table, Row("HBM roofline: u, delta, B, C, y at bf16 / measured bandwidth" +
                            (" (+ backward's reads and writes)" if mode != "fwd" else ""),
                            shape, nbytes / bw * 1e3, nbytes, t0))
            if t0 is not None and mode == "fwd":
                pct = 100 * nbytes / bw / (t0 * 1e-3)
                table.notes.append(f"ssmc forward at L {L}: {pct:.0f} % of the HBM roofline (goal: at least 70 %)")

            # mamba-ssm: its own layout, [B, H, L] and [B, N, L], made before the timed region.
            what = "mamba-ssm selective_scan_fn (CUDA)"
            if sel is None or needs_cuda(args, "a compiled CUDA extension"):
                emit(table, Row(what, shape, note=sel_why or needs_cuda(args, "a compiled CUDA extension")))
            else:
                def run_sel():
                    p = [t.transpose(1, 2).contiguous() for t in (u, delta, Bm, Cm)]
                    if mode == "fwd":
                        return bench_ms(fwd_fn(lambda: m1_selective_scan(sel, *p[:2], A, *p[2:], D)), args), ""
                    lv = leaves_of(*p) + leaves_of(A, D)
                    dyT = dy.transpose(1, 2).contiguous()
                    f = fwd_bwd_fn(lambda: m1_selective_scan(sel, lv[0], lv[1], lv[4], lv[2], lv[3], lv[5]), lv, dyT)
                    return bench_ms(f, args), ""
                guarded(table, what, shape, run_sel, nbytes=nbytes, ref_ms=t0)

            # accelerated-scan: a first-order scan, so it runs on the expanded state.
            what = "accelerated-scan (Triton) on the expanded state [B, H*N, L]: exp(delta A), delta B u, readout in torch"
            if acc is None:
                emit(table, Row(what, shape, note=acc_why))
            else:
                def run_acc():
                    if mode == "fwd":
                        return bench_ms(fwd_fn(lambda: m1_accelerated(acc, u, delta, A, Bm, Cm, D)), args), ""
                    lv = leaves_of(u, delta, Bm, Cm, A, D)
                    f = fwd_bwd_fn(lambda: m1_accelerated(acc, lv[0], lv[1], lv[4], lv[2], lv[3], lv[5]), lv, dy)
                    return bench_ms(f, args), ""
                guarded(table, what, shape, run_acc, nbytes=nbytes, ref_ms=t0)
                if mode == "fwd":
                    def run_acc_scan():
                        gates, toks = m1_expanded(delta, u, A, Bm)
                        return bench_ms(fwd_fn(lambda: acc(gates, toks)), args), "expanded inputs made beforehand"
                    guarded(table, "accelerated-scan, the scan alone", shape, run_acc_scan, ref_ms=t0)

            # torch.compile of torch's associative_scan (pointwise combine: CUDA codegen only).
            what = "torch.compile(associative_scan) on the expanded state [B, L, H, N], readout included"
            if needs_cuda(args, "combine_mode='pointwise' is CUDA-only"):
                emit(table, Row(what, shape, note=needs_cuda(args, "combine_mode='pointwise' is CUDA-only")))
            else:
                def run_assoc():
                    errors = []
                    for cm in ("pointwise", "generic"):
                        try:
                            torch._dynamo.reset()
                            f = torch.compile(functools.partial(m1_assoc, cm), dynamic=False)
                            if mode == "fwd":
                                return bench_ms(fwd_fn(lambda: f(u, delta, A, Bm, Cm, D)), args), f"combine_mode={cm}"
                            lv = leaves_of(u, delta, Bm, Cm, A, D)
                            f_bwd = fwd_bwd_fn(lambda: f(lv[0], lv[1], lv[4], lv[2], lv[3], lv[5]), lv, dy)
                            return bench_ms(f_bwd, args), f"combine_mode={cm}"
                        except Exception as e:  # noqa: BLE001  (try the generic combine before giving up)
                            if isinstance(e, torch.cuda.OutOfMemoryError):
                                raise
                            errors.append(f"{cm}: {why(e)}")
                    raise RuntimeError("; ".join(errors))
                guarded(table, what, shape, run_assoc, nbytes=nbytes, ref_ms=t0)
        if dev == "cuda":
            torch.cuda.empty_cache()


# --- Mamba-2 SSD ------------------------------------------------------------------------------------
def m2_inputs(batch, L, Hd, P, N, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, L, Hd, P, generator=g, device=device)
    dt = torch.nn.functional.softplus(torch.randn(batch, L, Hd, generator=g, device=device) - 3)
    Bm = torch.randn(batch, L, N, generator=g, device=device)
    Cm = torch.randn(batch, L, N, generator=g, device=device)
    return [t.to(dtype) for t in (x, dt, Bm, Cm)]


def m2_mamba(f, x, dt, A, Bm, Cm):
    """mamba-ssm's layout is ssmc's, with a group axis (one group) on B and C."""
    return f(x, dt, A, Bm.unsqueeze(2), Cm.unsqueeze(2), chunk_size=SSD_CHUNK)


def m2_fla_map(x, dt, A, Bm, Cm):
    """SSD as scalar-decay linear attention: q = C, k = B (per head: fla has no groups, so B and
    C are copied to every head), v = dt x, g = dt A (the log decay per step)."""
    b_, L, Hd, _ = x.shape
    q = Cm.unsqueeze(2).expand(b_, L, Hd, Cm.shape[-1]).contiguous()
    k = Bm.unsqueeze(2).expand(b_, L, Hd, Bm.shape[-1]).contiguous()
    v = x * dt.unsqueeze(-1)
    g = dt.float() * A
    return q, k, v, g


def m2_fla(f, q, k, v, g):
    return f(q, k, v, g=g, scale=1.0)[0]


def m2_bytes(batch, L, Hd, P, N, mode, elt=2) -> float:
    ins, out = batch * L * (Hd * P + Hd + 2 * N) * elt, batch * L * Hd * P * elt
    return ins + out if mode == "fwd" else 3 * ins + 2 * out


def bench_mamba2(args, bw, tables):
    cfg = args.shapes["m2"]
    Hd, P, N, batch = cfg["Hd"], cfg["P"], cfg["N"], cfg["batch"]
    dev, dtype = args.device, torch.bfloat16
    table = Table(f"Mamba-2 SSD, bfloat16, batch {batch}, {Hd} heads x {P}, N {N}, one group", bw)
    tables.append(table)
    print(f"\n{table.title}", flush=True)

    # ssmc's row may fail (its SSD kernel is being rewritten): say so and still run the peers.
    layer, layer_why = None, ""
    try:
        layer = load_ssmc(SSD_CORE, "triton").SSDCore(Hd=Hd, P=P, N=N, seed=0).to(dev)
        A = -torch.exp(layer.A_log.detach().float())
    except Exception as e:  # noqa: BLE001
        layer_why = f"failed to build: {why(e)}"
        A = -torch.exp(torch.log(torch.linspace(1, 16, Hd, device=dev)))

    cs, cs_why = peer_import(load_chunk_scan_combined)
    if cs is None or needs_cuda(args, "torch.cuda device guards"):
        cs_why = cs_why or needs_cuda(args, "torch.cuda device guards")
        cs = None
    gla, gla_why = peer_import(load_chunk_simple_gla)
    if gla is None or needs_cuda(args, "its kernels do not run under Triton's interpreter"):
        gla_why = gla_why or needs_cuda(args, "its kernels do not run under Triton's interpreter")
        gla = None

    # Correctness first (float32, shorter): ssmc triton against ssmc torch, then each peer
    # against ssmc torch (which is what checks the peers' argument mappings, fla's above all).
    c = cfg["check"]
    x, dt, Bm, Cm = m2_inputs(c["batch"], c["L"], Hd, P, N, dev, torch.float32, seed=1)
    y_ref = None
    try:
        ref = load_ssmc(SSD_CORE, "torch").SSDCore(Hd=Hd, P=P, N=N, seed=0).to(dev)
        if layer is not None:
            ref.load_state_dict(layer.state_dict())
        else:
            with torch.no_grad():
                ref.A_log.copy_(torch.log(-A))
        with torch.no_grad():
            y_ref = ref(x, delta=dt, Bm=Bm, Cm=Cm)
    except Exception as e:  # noqa: BLE001
        failure = f"failed: {why(e)}"
        check(table, "ssmc torch (the reference)", lambda: failure)
    if y_ref is not None:
        if layer is not None:
            check(table, f"ssmc triton vs ssmc torch, float32, batch {c['batch']}, L {c['L']}",
                  lambda: "forward " + compare_layers(layer, ref, (x, dt, Bm, Cm), ("x", "dt", "B", "C")))
        if cs is not None:
            def cs_check():
                with torch.no_grad():
                    return maxdiff(m2_mamba(cs, x, dt, A, Bm, Cm), y_ref)
            check(table, "mamba-ssm mamba_chunk_scan_combined vs ssmc torch, float32", cs_check)
        if gla is not None:
            def gla_check():
                with torch.no_grad():
                    return maxdiff(m2_fla(gla, *m2_fla_map(x, dt, A, Bm, Cm)), y_ref)
            check(table, "fla chunk_simple_gla (q = C, k = B, v = dt x, g = dt A, scale 1) vs ssmc torch, "
                         "float32", gla_check)

    for L in cfg["lengths"]:
        x, dt, Bm, Cm = m2_inputs(batch, L, Hd, P, N, dev, dtype)
        for mode in ("fwd", "fwd+bwd"):
            shape = f"{batch} x {L} x {Hd} x {P}, N {N}, {mode}"
            nbytes = m2_bytes(batch, L, Hd, P, N, mode)
            dy = torch.randn(batch, L, Hd, P, device=dev, dtype=dtype)

            t0 = None
            if layer is None:
                emit(table, Row("ssmc triton", shape, note=layer_why))
            else:
                def run_ssmc():
                    if mode == "fwd":
                        return bench_ms(fwd_fn(lambda: layer(x, delta=dt, Bm=Bm, Cm=Cm)), args), ""
                    lv = leaves_of(x, dt, Bm, Cm)
                    f = fwd_bwd_fn(lambda: layer(lv[0], delta=lv[1], Bm=lv[2], Cm=lv[3]),
                                   lv + list(layer.parameters()), dy)
                    return bench_ms(f, args), backward_kind(layer)
                t0 = guarded(table, "ssmc triton", shape, run_ssmc, nbytes=nbytes, ref=True)
            emit(table, Row("HBM roofline: x, dt, B, C, y at bf16 / measured bandwidth" +
                            (" (+ backward's reads and writes)" if mode != "fwd" else ""),
                            shape, nbytes / bw * 1e3, nbytes, t0))

            what = f"mamba-ssm mamba_chunk_scan_combined (Triton, chunk {SSD_CHUNK})"
            if cs is None:
                emit(table, Row(what, shape, note=cs_why))
            else:
                def run_cs():
                    if mode == "fwd":
                        return bench_ms(fwd_fn(lambda: m2_mamba(cs, x, dt, A, Bm, Cm)), args), ""
                    lv = leaves_of(x, dt, Bm, Cm, A)
                    return bench_ms(fwd_bwd_fn(lambda: m2_mamba(cs, lv[0], lv[1], lv[4], lv[2], lv[3]), lv, dy),
                                    args), ""
                guarded(table, what, shape, run_cs, nbytes=nbytes, ref_ms=t0)

            what = "fla chunk_simple_gla, mapping in the timed region (B, C copied per head; v = dt x; g = dt A)"
            if gla is None:
                emit(table, Row(what, shape, note=gla_why))
            else:
                def run_gla():
                    if mode == "fwd":
                        return bench_ms(fwd_fn(lambda: m2_fla(gla, *m2_fla_map(x, dt, A, Bm, Cm))), args), ""
                    lv = leaves_of(x, dt, Bm, Cm)
                    return bench_ms(fwd_bwd_fn(lambda: m2_fla(gla, *m2_fla_map(lv[0], lv[1], A, lv[2], lv[3])),
                                               lv, dy), args), ""
                guarded(table, what, shape, run_gla, nbytes=nbytes, ref_ms=t0)

                def run_gla_kernel():
                    mapped = m2_fla_map(x, dt, A, Bm, Cm)
                    if mode == "fwd":
                        return bench_ms(fwd_fn(lambda: m2_fla(gla, *mapped)), args), "q, k, v, g made beforehand"
                    lv = leaves_of(*mapped)
                    return bench_ms(fwd_bwd_fn(lambda: m2_fla(gla, *lv), lv, dy), args), \
                        "q, k, v, g made beforehand"
                guarded(table, "fla chunk_simple_gla alone", shape, run_gla_kernel, ref_ms=t0)
        if dev == "cuda":
            torch.cuda.empty_cache()


# --- main -----------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes; without CUDA through Triton's CPU interpreter (TRITON_INTERPRET=1)")
    ap.add_argument("--only", choices=("mamba1", "mamba2"), default=None)
    ap.add_argument("--lengths", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                    help="Mamba-1 lengths, comma-separated (default 2048,4096,8192)")
    ap.add_argument("--batch", type=int, default=None, help="batch of both models (default 8)")
    ap.add_argument("--warmup-ms", type=int, default=25, help="do_bench warm-up (GPU)")
    ap.add_argument("--rep-ms", type=int, default=200, help="do_bench measuring time per row (GPU)")
    ap.add_argument("--slow-s", type=float, default=1.0,
                    help="a call slower than this (seconds, GPU, after its warm-up) is timed once, not by do_bench")
    ap.add_argument("--repeat", type=int, default=1, help="wall-clock repeats (CPU, --smoke)")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown to this file")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.smoke:
            ap.error("no CUDA GPU here: the benchmark needs one (--smoke runs tiny shapes on the CPU interpreter)")
        # Triton reads TRITON_INTERPRET when it is imported, so this must come before ssmc
        # generates (and so imports) any Triton code.
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            ap.error("triton was imported before TRITON_INTERPRET=1 could be set")
        os.environ["TRITON_INTERPRET"] = "1"
    args.device = "cuda" if cuda else "cpu"
    args.shapes = {k: dict(v) for k, v in (SMOKE if args.smoke else FULL).items()}
    if args.lengths:
        args.shapes["m1"]["lengths"] = args.lengths
    if args.batch:
        args.shapes["m1"]["batch"] = args.shapes["m2"]["batch"] = args.batch

    import triton

    import ssmc

    if cuda:
        props = torch.cuda.get_device_properties(0)
        machine = f"{torch.cuda.get_device_name(0)} ({props.multi_processor_count} SMs, " \
                  f"{props.total_memory / 2 ** 30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        machine = f"no GPU: Triton's CPU interpreter on {platform.machine()} (times mean nothing)"
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    header = [
        f"## ssmc Triton backend{' (smoke run)' if args.smoke else ''} — {time.strftime('%Y-%m-%d')}",
        "",
        f"- Machine: {machine}; torch {torch.__version__}, triton {triton.__version__}, "
        f"ssmc {ssmc.__version__}, Python {platform.python_version()}.",
        f"- Command: `{command}`" + (" (with TRITON_INTERPRET=1)" if not cuda else ""),
    ]
    for line in header:
        print(line)

    bw, how = measure_bandwidth(args)
    header.append(f"- Measured bandwidth: {bw / 1e9:.0f} GB/s ({how}); the roofline rows are the bytes "
                  f"that must move over it.")
    header.append("- Times: " + ("median of triton.testing.do_bench (CUDA events, L2 flushed), after one call "
                                 "that absorbs compilation and tuning" if cuda else
                                 f"best of {args.repeat} wall-clock run(s)") +
                  ". Ratio: the row's time over ssmc's at the same shape (above 1: ssmc is faster). "
                  "Peers take their inputs in their own layout, made before the timed region.")
    print(header[-2])

    tables: list[Table] = []
    t_start = time.perf_counter()
    if args.only in (None, "mamba1"):
        bench_mamba1(args, bw, tables)
    if args.only in (None, "mamba2"):
        bench_mamba2(args, bw, tables)
    text = markdown(tables, header)
    print(f"\n(finished in {time.perf_counter() - t_start:.0f} s)\n")
    print(text)
    if args.out:
        args.out.write_text(text)
        print(f"written to {args.out}")
    return tables


if __name__ == "__main__":
    main()
