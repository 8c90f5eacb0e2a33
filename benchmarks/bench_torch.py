"""ssmc's PyTorch backend side by side with its peers, in one process.

    python benchmarks/bench_torch.py            # the shapes of the issue (minutes on 2 CPU cores)
    python benchmarks/bench_torch.py --quick    # small shapes, to check that it runs

Peers: a plain PyTorch loop over time; mambapy's parallel scan (pip install mambapy) on
the Mamba shape; torch's own associative scan where it runs; the minimal SSD algorithm
written plainly in PyTorch (Mamba-2); a hand-written FFT convolution with a precomputed
kernel (S4D). Prints times (best of --repeat), ratios to ssmc, and peak extra memory
(resident set high-water mark, Linux) of each forward.
"""
from __future__ import annotations

import argparse
import gc
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

import ssmc

ROOT = Path(__file__).resolve().parents[1]

MAMBA_CORE = """
ssm MambaCore "the Mamba-1 selective scan core: inputs x, delta, B, C as mambapy's selective_scan" {
  dims H = 1536, N = 16
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

SSD_CORE = """
ssm SSDCore "the Mamba-2 SSD core: scalar A per head, inputs x, delta, B, C" {
  dims Hd = 24, P = 64, N = 64
  input u[Hd, P], delta[Hd], Bm[N], Cm[N]
  state x[Hd, P, N]
  param A_log[Hd] = log(uniform(1, 16))
  A = -exp(A_log) : scalar
  dynamics   x' = A x + Bm * u
  discretize zoh_euler, step = delta
  scan       causal
  output     y = sum(Cm * x, N)
}
"""


def rss_peak_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_now_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def timeit(fn, repeat: int, warmup: bool = True) -> tuple[float, float]:
    """(best seconds, peak extra MB over the resident set before the call)."""
    if warmup:
        fn()  # warm up (allocator, lazy init)
    best = math.inf
    peak = 0.0
    for _ in range(repeat):
        gc.collect()
        base = rss_now_mb()
        rss_peak_reset()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        peak = max(peak, rss_peak_mb() - base)
    return best, peak


# --- peers ---------------------------------------------------------------------------
def loop_scan(x, delta, A, B, C, D):
    """The plain PyTorch loop over time that researchers write."""
    dA = torch.exp(delta.unsqueeze(-1) * A)
    BX = (delta * x).unsqueeze(-1) * B.unsqueeze(2)
    h = torch.zeros(x.shape[0], A.shape[0], A.shape[1], dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        h = dA[:, t] * h + BX[:, t]
        ys.append((h * C[:, t].unsqueeze(1)).sum(-1))
    return torch.stack(ys, 1) + D * x


def mambapy_scan(x, delta, A, B, C, D):
    from mambapy.mamba import MambaBlock
    return MambaBlock.selective_scan(None, x, delta, A, B, C, D)


def assoc_scan(x, delta, A, B, C, D):
    from torch._higher_order_ops.associative_scan import associative_scan

    def combine(l, r):
        return l[0] * r[0], r[0] * l[1] + r[1]

    dA = torch.exp(delta.unsqueeze(-1) * A)
    BX = (delta * x).unsqueeze(-1) * B.unsqueeze(2)
    _, h = associative_scan(combine, (dA, BX), dim=1, combine_mode="generic")
    return (h * C.unsqueeze(2)).sum(-1) + D * x


def segsum(a):
    """a[..., T] -> [..., T, T]: sum of a over (j, i] below the diagonal, -inf above."""
    T = a.shape[-1]
    cs = torch.cumsum(a, -1)
    out = cs[..., :, None] - cs[..., None, :]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    return out.masked_fill(~mask, -math.inf)


def ssd_minimal(x, dt, A, B, C, chunk=64):
    """The minimal SSD algorithm (Dao & Gu 2024, listing 1), written plainly.
    x [b, l, h, p], dt [b, l, h], A [h], B, C [b, l, n] (one group)."""
    b, L, h, p = x.shape
    c = L // chunk
    X = (x * dt.unsqueeze(-1)).reshape(b, c, chunk, h, p)
    Al = (dt * A).reshape(b, c, chunk, h).permute(0, 3, 1, 2)      # [b, h, c, l]
    Bc = B.reshape(b, c, chunk, -1)
    Cc = C.reshape(b, c, chunk, -1)
    Acum = torch.cumsum(Al, -1)
    Lm = torch.exp(segsum(Al))
    Y_diag = torch.einsum("bcln,bcsn,bhcls,bcshp->bclhp", Cc, Bc, Lm, X)
    decay = torch.exp(Acum[..., -1:] - Acum)
    states = torch.einsum("bcln,bhcl,bclhp->bchpn", Bc, decay, X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], 1)
    chunk_decay = torch.exp(segsum(torch.nn.functional.pad(Acum[..., -1], (1, 0))))
    new = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)[:, :-1]
    Y_off = torch.einsum("bcln,bchpn,bhcl->bclhp", Cc, new, torch.exp(Acum))
    return (Y_diag + Y_off).reshape(b, L, h, p)


def fft_conv_precomputed(u, K, D):
    L = u.shape[1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n, dim=1) * torch.fft.rfft(K, n=n, dim=0), n=n, dim=1)[:, :L]
    return y + D * u


# --- runs --------------------------------------------------------------------------------
def row(results, label, t, mem, ref_t=None):
    results.append((label, t, mem, ref_t))
    ratio = f"{t / ref_t:6.2f} x ssmc" if ref_t else "   (ssmc)"
    print(f"  {label:<44} {t * 1e3:9.1f} ms  {ratio}   peak +{mem:7.1f} MB", flush=True)


def grad_of(fn, *tensors):
    def run():
        for t in tensors:
            t.grad = None
        fn().sum().backward()
    return run


def bench_mamba1(args, results):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.loads(MAMBA_CORE, backend="torch")
    H, N = (64, 16) if args.quick else (1536, 16)
    for batch, L, mode in [(1, 4096, "fwd"), (4, 1024, "fwd"), (1, 2048, "fwd+bwd")] if not args.quick \
            else [(1, 256, "fwd"), (1, 128, "fwd+bwd")]:
        layer = mod.MambaCore(H=H, N=N, seed=0)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, L, H, generator=g)
        delta = torch.nn.functional.softplus(torch.randn(batch, L, H, generator=g) - 3)
        B = torch.randn(batch, L, N, generator=g)
        C = torch.randn(batch, L, N, generator=g)
        A = -torch.exp(layer.A_log.detach())
        D = layer.D.detach()
        print(f"Mamba-1 scan core, batch {batch}, {H} channels, N {N}, L {L}, float32, {mode}")
        inputs = dict(delta=delta, Bm=B, Cm=C)
        if mode == "fwd":
            with torch.no_grad():
                y_ref = loop_scan(x, delta, A, B, C, D)
                y = layer(x, **inputs)
                err = float((y - y_ref).abs().max() / y_ref.abs().max())
                t0, m0 = timeit(lambda: layer(x, **inputs), args.repeat)
                row(results, f"ssmc torch (rel. err vs loop {err:.1e})", t0, m0)
                io_mb = sum(t.numel() * 4 for t in (x, delta, B, C, y)) / 2 ** 20
                print(f"  {'inputs + output':<44} {io_mb:9.1f} MB")
                t, m = timeit(lambda: mambapy_scan(x, delta, A, B, C, D), args.repeat)
                row(results, "mambapy selective_scan (pscan)", t, m, t0)
                t, m = timeit(lambda: loop_scan(x, delta, A, B, C, D), 1, warmup=False)
                row(results, "plain PyTorch loop over time", t, m, t0)
                try:
                    assoc_scan(x[:, :8], delta[:, :8], A, B[:, :8], C[:, :8], D)
                    t, m = timeit(lambda: assoc_scan(x, delta, A, B, C, D), 1, warmup=False)
                    row(results, "torch associative_scan (eager, generic)", t, m, t0)
                except Exception as e:  # noqa: BLE001
                    print(f"  {'torch associative_scan':<44} does not run here: {type(e).__name__}")
        else:
            xs = x.clone().requires_grad_()
            t0, m0 = timeit(grad_of(lambda: layer(xs, **inputs), xs), args.repeat)
            row(results, "ssmc torch", t0, m0)
            Ag = A.clone().requires_grad_()
            t, m = timeit(grad_of(lambda: mambapy_scan(xs, delta, Ag, B, C, D), xs, Ag), args.repeat)
            row(results, "mambapy selective_scan (pscan)", t, m, t0)
            # (The plain loop's backward takes minutes at this size: it is timed forward only.)


def bench_mamba2(args, results):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.loads(SSD_CORE, backend="torch")
    Hd, P, L = (4, 16, 256) if args.quick else (24, 64, 4096)
    for N, mode in [(64, "fwd"), (128, "fwd"), (64, "fwd+bwd")] if not args.quick else [(16, "fwd")]:
        layer = mod.SSDCore(Hd=Hd, P=P, N=N, seed=0)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, L, Hd, P, generator=g)
        dt = torch.nn.functional.softplus(torch.randn(1, L, Hd, generator=g) - 3)
        B = torch.randn(1, L, N, generator=g)
        C = torch.randn(1, L, N, generator=g)
        A = -torch.exp(layer.A_log.detach())
        print(f"Mamba-2 SSD core, {Hd} heads x {P}, N {N}, L {L}, float32, {mode}")
        inputs = dict(delta=dt, Bm=B, Cm=C)
        if mode == "fwd":
            with torch.no_grad():
                y_ref = ssd_minimal(x, dt, A, B, C)
                y = layer(x, **inputs)
                err = float((y - y_ref).abs().max() / y_ref.abs().max())
                t0, m0 = timeit(lambda: layer(x, **inputs), args.repeat)
                row(results, f"ssmc torch (rel. err vs SSD {err:.1e})", t0, m0)
                t, m = timeit(lambda: ssd_minimal(x, dt, A, B, C), args.repeat)
                row(results, "minimal SSD in PyTorch (chunk 64)", t, m, t0)
        else:
            xs = x.clone().requires_grad_()
            t0, m0 = timeit(grad_of(lambda: layer(xs, **inputs), xs), args.repeat)
            row(results, "ssmc torch", t0, m0)
            t, m = timeit(grad_of(lambda: ssd_minimal(xs, dt, A, B, C), xs), args.repeat)
            row(results, "minimal SSD in PyTorch (chunk 64)", t, m, t0)


def bench_s4d(args, results):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ssmc.load(ROOT / "examples" / "s4d.ssm", backend="torch")
    H, N, L = (64, 16, 512) if args.quick else (768, 64, 4096)
    layer = mod.S4D(H=H, N=N, seed=0)
    u = torch.randn(1, L, H)
    print(f"S4D, H {H}, N {N}, L {L}, float32")
    with torch.no_grad():
        # The hand-written peer's kernel, from S4D's closed form (Vandermonde), precomputed.
        dt = torch.exp(layer.log_dt)[:, None]
        A = -torch.exp(layer.log_A_real) + 1j * layer.A_imag
        dA = dt * A
        Bc = (torch.exp(dA) - 1) / A * layer.C
        t_k = time.perf_counter()
        K = 2 * torch.einsum("hn,hnl->hl", Bc, torch.exp(dA.unsqueeze(-1) * torch.arange(L))).real
        t_kernel_ref = time.perf_counter() - t_k
        K = K.T.contiguous()
        y_ref = fft_conv_precomputed(u, K, layer.D)
        y = layer(u)
        err = float((y - y_ref).abs().max() / y_ref.abs().max())
        layer._kernels.clear()
        t_k = time.perf_counter()
        layer(u)
        t_first = time.perf_counter() - t_k
        t0, m0 = timeit(lambda: layer(u), args.repeat)
        row(results, f"ssmc torch, kernel cached (rel. err {err:.1e})", t0, m0)
        print(f"  {'ssmc torch, first call (kernel generation)':<44} {t_first * 1e3:9.1f} ms")
        t, m = timeit(lambda: fft_conv_precomputed(u, K, layer.D), args.repeat)
        row(results, "hand-written FFT conv, precomputed kernel", t, m, t0)
        print(f"  {'kernel by Vandermonde, as S4D code does':<44} {t_kernel_ref * 1e3:9.1f} ms")
    us = u.clone().requires_grad_()
    t0, m0 = timeit(grad_of(lambda: layer(us), us), args.repeat)
    row(results, "ssmc torch fwd+bwd (kernel in autograd)", t0, m0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes: check that everything runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=("mamba1", "mamba2", "s4d"), default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"ssmc {ssmc.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    print(f"command: python {' '.join(sys.argv)}\n")
    results: list = []
    for name, fn in (("mamba1", bench_mamba1), ("mamba2", bench_mamba2), ("s4d", bench_s4d)):
        if args.only in (None, name):
            fn(args, results)
            print()
    return results


if __name__ == "__main__":
    main()
