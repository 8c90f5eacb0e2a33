"""benchmarks/bench_triton.py --smoke runs to the end: here through Triton's CPU interpreter.

The GPU benchmark itself needs an H100 (see benchmarks/RESULTS.md); this only keeps the script
from rotting between GPU sessions: it exits 0, prints ssmc's rows for both models, and the
correctness line against the PyTorch backend. Peers that are not installed or need CUDA
print 'skipped' rows, which is what they should do.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_bench_triton_smoke_runs():
    # Not `import triton` here: it would be imported into the test process before other test
    # modules set TRITON_INTERPRET; the subprocess is what needs it.
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_triton.py"), "--smoke"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    # Mamba-1: ssmc's forward and forward+backward rows, timed, in the Markdown table.
    assert re.search(r"^\| ssmc triton \| 1 x 32 x 8, N 4, fwd \| [0-9.]+ \| \(ssmc\) \|", out, re.M), out[-3000:]
    assert re.search(r"^\| ssmc triton \(generated backward kernel\) \| 1 x 32 x 8, N 4, fwd\+bwd \| [0-9.]+ \|",
                     out, re.M), out[-3000:]
    assert re.search(r"^\| HBM roofline: u, delta, B, C, y", out, re.M)
    line = re.search(r"^- ssmc triton vs ssmc torch, float32, batch 2, L 24: forward max \|diff\| (\S+)", out, re.M)
    assert line, out[-3000:]
    assert float(line.group(1)) < 1e-4
    # Mamba-2: a row for ssmc, timed or saying why it failed, and the peers' rows (skipped here
    # without CUDA, or run).
    assert re.search(r"^\| ssmc triton[^|]* \| 1 x 64 x 2 x 4, N 8, fwd \|", out, re.M), out[-3000:]
    assert re.search(r"^\| fla chunk_simple_gla", out, re.M)
    assert re.search(r"^\| mamba-ssm mamba_chunk_scan_combined", out, re.M)
