"""ssmc's chunked delta rule (PyTorch backend) against flash-linear-attention's naive
references, in one process, float32 on the CPU.

    python benchmarks/bench_delta.py             # fla's test size: batch 2, length 1000, 3 heads, dim 128
    python benchmarks/bench_delta.py --quick     # small shapes, to check that it runs

Peers (pip install flash-linear-attention / fla-core): `fla.ops.delta_rule.naive`'s
`delta_rule_recurrence` (a loop over time, [B, H, L, D] inputs, q scaled by Dk ** -0.5,
state [B, H, Dk, Dv]) and `delta_rule_chunkwise` (its chunked reference, chunk 32;
length a multiple of the chunk, no initial state). Prints the median of --repeat runs
(after one warm-up) of forward and forward + backward, and the ratios peer / ssmc.
The outputs are checked to agree first.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import ssmc

# The delta rule on given q, k, v, beta (fla's interface), written in ssmc's language.
DELTA_CORE = """
ssm DeltaCore "the delta rule on inputs v, k, q, beta (fla's delta_rule_recurrence)" {
  dims H = 3, Dk = 128, Dv = 128
  input v[H, Dv], k[H, Dk], q[H, Dk], beta[H]
  state S[H, Dv, Dk]
  A = dplr(1, beta * k, k) : dplr
  recurrence S = A S + beta * v * k
  scan       causal
  output     o = sum(q * S, Dk) * Dk ** -0.5
}
"""


def timed(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    B, L, H, D = (2, 64, 2, 16) if a.quick else (2, 1000, 3, 128)
    torch.manual_seed(0)
    q = torch.randn(B, H, L, D)
    k = torch.nn.functional.normalize(torch.randn(B, H, L, D), dim=-1)
    v = torch.randn(B, H, L, D)
    beta = torch.rand(B, H, L).sigmoid()
    layer = ssmc.loads(DELTA_CORE, backend="torch").DeltaCore(H=H, Dk=D, Dv=D)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} threads, "
          f"B {B}, L {L}, H {H}, Dk = Dv = {D}, float32, median of {a.repeat}")

    def ours(grad=False):
        ins = [t.transpose(1, 2).contiguous().requires_grad_(grad) for t in (v, k, q)]
        b = beta.transpose(1, 2).contiguous().requires_grad_(grad)
        y = layer(ins[0], k=ins[1], q=ins[2], beta=b)
        if grad:
            y.sum().backward()
        return y

    from fla.ops.delta_rule.naive import delta_rule_chunkwise, delta_rule_recurrence

    def rec(grad=False):
        ins = [t.clone().requires_grad_(grad) for t in (q, k, v, beta)]
        o, _ = delta_rule_recurrence(*ins)
        if grad:
            o.sum().backward()
        return o

    chunk = 32 if L % 32 == 0 else 8 if L % 8 == 0 else None

    def chunkwise(grad=False):
        ins = [t.clone().requires_grad_(grad) for t in (q, k, v, beta)]
        o, _ = delta_rule_chunkwise(*ins, chunk_size=chunk)
        if grad:
            o.sum().backward()
        return o

    with torch.no_grad():
        y = ours().transpose(1, 2)
        ref = rec()
        err = (y - ref).abs().max().item() / ref.abs().max().item()
    print(f"# max |ssmc - fla recurrence| / max |fla| = {err:.1e}")
    rows = [("fla delta_rule_recurrence (naive loop)", rec)]
    if chunk:
        rows.append((f"fla delta_rule_chunkwise (chunk {chunk})", chunkwise))
    for grad, what in ((False, "fwd"), (True, "fwd+bwd")):
        ctx = torch.no_grad() if not grad else torch.enable_grad()
        with ctx:
            t_ours = timed(lambda: ours(grad), a.repeat)
            print(f"{what:8s} ssmc torch (delta_chunked)              {t_ours * 1e3:9.1f} ms")
            for name, fn in rows:
                t = timed(lambda: fn(grad), a.repeat)
                print(f"{what:8s} {name:40s} {t * 1e3:9.1f} ms   peer / ssmc = {t / t_ours:6.2f}")


if __name__ == "__main__":
    main()
