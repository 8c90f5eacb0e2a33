"""The ahead-of-time compile check of the Triton kernels (ssmc.aot), on a machine without a GPU.

Compiling needs real @triton.jit functions, not the interpreter's, so every compile runs
in a subprocess without TRITON_INTERPRET (other test modules set it in this process).
The sample is fixed and small (compiling is CPU-heavy): a selective scan (Mamba), a
complex LTI system (LRU: its convolution kernel and the complex scan), a real LTI one
(S4D), the SSD family (Mamba-2), forward and backward, float32 and bfloat16 inputs, at
every autotune candidate, for sm_90 and (Mamba-2) sm_80; the full sweep is
`python -m ssmc.aot` (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from ssmc import aot  # noqa: E402

from .conftest import ROOT  # noqa: E402


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _sweep(tmp_path, *args):
    out = tmp_path / "aot.json"
    p = subprocess.run([sys.executable, "-m", "ssmc.aot", *args, "--json", str(out), "--table"],
                       capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=900)
    results = json.loads(out.read_text()) if out.exists() else []
    return p, results


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aot")
    p, results = _sweep(tmp, *[str(ROOT / "examples" / f) for f in ("mamba.ssm", "lru.ssm", "s4d.ssm")],
                        "--arch", "90")
    p2, results2 = _sweep(tmp, str(ROOT / "examples" / "mamba2.ssm"), "--arch", "80,90")
    return (p, p2), results + results2


def test_sample_compiles_launches_and_does_not_spill_by_default(sample):
    (p, p2), results = sample
    for proc in (p, p2):
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    fams = {r["family"] for r in results}
    assert {"scan", "scan_bwd", "lti", "ssd", "ssd_bwd"} <= fams, fams
    assert {r["arch"] for r in results} == {80, 90}
    # every autotune candidate is compiled, one of them the default
    scan = [r for r in results if r["family"] == "scan" and r["spec"] == "mamba.ssm"]
    assert len(scan) >= 4 and sum(r["default"] for r in scan) >= 1
    for r in results:
        assert not r["error"], r
        assert r["regs"] > 0, r
        if r["default"]:
            assert not r["unlaunchable"] and r["spills"] == 0, r
        assert r["narrow"] == 0, r  # 64-bit address arithmetic everywhere
    assert "spill B" in p.stdout and "family" in p.stdout


def test_float64_only_in_the_lti_generator(sample):
    _, results = sample
    for r in results:
        if r["family"] != "lti":
            assert r["f64"] == 0, r
    assert all(r["f64"] > 0 for r in results if r["family"] == "lti")


_KERNELS = '''
import torch, triton, triton.language as tl
from ssmc import aot

@triton.jit
def narrow(x, y, stride, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    i = tl.arange(0, BLOCK)
    tl.store(y + b * stride + i, tl.load(x + b * stride + i))

@triton.jit
def wide(x, y, stride, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    tl.store(y + b * stride + i, tl.load(x + b * stride + i))

@triton.jit
def big(x, y, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(y + i[:, None] * BLOCK + i[None, :], tl.load(x + i[:, None] * BLOCK + i[None, :]))

x = torch.zeros(1 << 16)
recs = []
with aot._capture(80, "t", recs):
    narrow[(2,)](x, x, 33, BLOCK=64)
    wide[(2,)](x, x, 33, BLOCK=64)
    big[(1,)](x, x, BLOCK=256)
for r in recs:
    print(r.kernel, r.narrow, r.spills, r.shared, r.regs, r.error)
'''


def test_the_32_bit_offset_criterion_and_spills_are_measured(tmp_path):
    """A kernel whose address is program_id * stride in int32 is caught; the same in int64
    is not; a kernel holding a [256, 256] tile per program spills."""
    script = tmp_path / "kernels.py"  # @triton.jit reads its source from a file
    script.write_text(_KERNELS)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=_env(), cwd=ROOT,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines() if line.strip()}
    assert int(rows["narrow"][0]) >= 1, p.stdout
    assert int(rows["wide"][0]) == 0, p.stdout
    assert int(rows["big"][1]) > 0, p.stdout


def test_narrow_offsets_on_ir_text():
    ir = """
    %0 = tt.get_program_id x : i32 loc(#loc1)
    %1 = arith.muli %0, %arg2 : i32 loc(#loc2)
    %c64_i32 = arith.constant 64 : i32 loc(#loc3)
    %2 = arith.muli %0, %c64_i32 : i32 loc(#loc4)
    %3 = tt.addptr %arg0, %1 : !tt.ptr<f32>, i32 loc(#loc5)
    %4 = tt.addptr %arg0, %2 : !tt.ptr<f32>, i32 loc(#loc6)
    %5 = arith.extsi %0 : i32 to i64 loc(#loc7)
    %6 = arith.extsi %arg2 : i32 to i64 loc(#loc8)
    %7 = arith.muli %5, %6 : i64 loc(#loc9)
    %8 = tt.addptr %arg0, %7 : !tt.ptr<f32>, i64 loc(#loc10)
    %9 = arith.extsi %1 : i32 to i64 loc(#loc11)
    %10 = tt.addptr %arg0, %9 : !tt.ptr<f32>, i64 loc(#loc12)
    """
    # %3 (32-bit product) and %10 (widened after the product wrapped) count; the product
    # with a constant (%4) and the 64-bit one (%8) do not.
    assert aot._narrow_offsets(ir) == 2


def test_ptxas_log_parsing():
    log = """ptxas info    : Compiling entry function 'k' for 'sm_90a'
ptxas info    : Function properties for k
    20480 bytes stack frame, 112000 bytes spill stores, 90000 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 20480 bytes cumulative stack size"""
    assert aot._parse_ptxas(log, "k") == {"regs": 32, "stack": 20480, "spills": 112000}


def test_launch_limits_per_architecture():
    r = aot.Result(spec="s", kernel="_ssd_bwd", family="ssd_bwd", arch=80, config="", default=True,
                   regs=128, shared=200 * 1024, threads=128)
    assert "shared" in r.unlaunchable  # A100: 163 KB opt-in
    r.arch = 90
    assert r.unlaunchable == ""  # H100: 227 KB
    r.shared = 230 * 1024
    assert "shared" in r.unlaunchable
    r.shared, r.regs, r.threads = 1024, 128, 1024
    assert "registers" in r.unlaunchable  # 128 x 1024 > the register file
    assert aot.fits(128, 0, 1024, 4, 80) and not aot.fits(128, 8, 1024, 4, 80)
    assert not aot.fits(96, 0, 200 * 1024, 4, 80) and aot.fits(96, 0, 200 * 1024, 4, 90)


def test_the_autotuner_prunes_what_spills_or_cannot_launch(monkeypatch):
    from ssmc.runtime import triton_autotune
    info = {1: (64, 0, 1024, 4, 90), 2: (255, 512, 1024, 4, 90), 4: (96, 0, 240 * 1024, 4, 90),
            8: (128, 0, 2048, 4, 90)}
    monkeypatch.setattr(aot, "compiled", lambda run, config: [info[config]])
    assert triton_autotune._prune([1, 2, 4, 8], None) == [1, 8]
    # nothing fits: the least spilling still runs
    info.update({1: (255, 64, 0, 4, 90), 8: (255, 32, 0, 4, 90)})
    assert triton_autotune._prune([1, 2, 8], None) == [8]


def test_family_names():
    assert aot.family("_ssd_fwd") == "ssd" and aot.family("_ssd_bwd") == "ssd_bwd"
    assert aot.family("_vandermonde_kernel") == "lti"
    assert aot.family("_S4D_loop") == "scan" and aot.family("_S4D_loop_bwd") == "scan_bwd"


def test_compile_triton_without_a_gpu_writes_the_kernels(tmp_path):
    out = tmp_path / "mamba2_triton.py"
    p = subprocess.run([sys.executable, "-m", "ssmc", "compile", str(ROOT / "examples" / "mamba.ssm"), "-b", "triton",
                        "-o", str(out)], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert "@_triton.jit" in text and "(triton backend)" in p.stderr
    assert "b = _tl.program_id(0).to(_tl.int64)" in text


def test_doctor_reports_versions_devices_target_and_caches():
    from click.testing import CliRunner

    from ssmc.cli import main
    r = CliRunner().invoke(main, ["doctor"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for word in ("ssmc ", "torch ", "triton ", "triton target:", "ssmc cache:", "triton cache:"):
        assert word in r.output, r.output
