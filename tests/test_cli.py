"""The `ssmc` command: check, explain, compile, run; errors exit 1 without a traceback."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ssmc.cli import main

from .conftest import EXAMPLES, ROOT


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_check_every_example(path):
    r = invoke("check", str(path))
    assert r.exit_code == 0, r.output
    # one algorithm line per state: "algorithm: ..." or "algorithm (x): ..."
    assert re.search(r"^  algorithm( \(\w+\))?: ", r.output, re.M), r.output
    assert "parameters:" in r.output
    assert ("LTI" in r.output) or ("selective" in r.output)


def test_explain_prints_equations():
    r = invoke("explain", str(ROOT / "examples" / "mamba.ssm"))
    assert r.exit_code == 0
    assert "Abar_t = exp(dt_t * A)" in r.output
    assert "x_t = Abar * x_(t-1) + Ebar" in r.output
    assert "chunked_scan" in r.output


def test_compile_writes_importable_module(tmp_path):
    out = tmp_path / "s4d_mod.py"
    r = invoke("compile", str(ROOT / "examples" / "s4d.ssm"), "--backend", "numpy", "-o", str(out))
    assert r.exit_code == 0
    text = out.read_text()
    imports = sorted({line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))})
    assert imports == ["numpy", "ssmc", "torch"]
    ns = {}
    exec(compile(text, str(out), "exec"), ns)
    import torch
    layer = ns["S4D"](H=3, N=2, seed=0)
    assert layer(torch.randn(1, 5, 3)).shape == (1, 5, 3)


def test_run_reports_shape_and_time():
    r = invoke("run", str(ROOT / "examples" / "s5.ssm"), "--length", "16")
    assert r.exit_code == 0
    assert "output y of shape (2, 16, 32)" in r.output and " ms" in r.output


def test_spec_error_exits_1_without_traceback(tmp_path):
    bad = tmp_path / "bad.ssm"
    bad.write_text("ssm A {\n  dims H = 4\n  input u[H]\n  discretize zho, step = 1\n}\n")
    p = subprocess.run([sys.executable, "-m", "ssmc", "check", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert f"{bad}:" in p.stderr and "^" in p.stderr


def test_missing_file_is_a_clean_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ssmc", "check", str(tmp_path / "nope.ssm")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "no such spec file" in p.stderr


def test_dump_ir_writes_one_file_per_pass(tmp_path):
    r = invoke("check", str(ROOT / "examples" / "lru.ssm"), "--dump-ir", str(tmp_path))
    assert r.exit_code == 0
    files = sorted(p.name for p in (tmp_path / "LRU").iterdir())
    assert files[0] == "00-check_declarations.ssmir" and files[-1].endswith("choose_algorithm.ssmir")


def test_compile_torch_backend_and_auto_note(tmp_path):
    out = tmp_path / "mamba_mod.py"
    p = subprocess.run([sys.executable, "-m", "ssmc", "compile", str(ROOT / "examples" / "mamba.ssm"), "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "note: backend='auto' picked 'torch'" in p.stderr and "Warning" not in p.stderr
    ns = {}
    exec(compile(out.read_text(), str(out), "exec"), ns)
    import torch
    layer = ns["Mamba"](H=4, N=3, seed=0)
    y = layer(torch.randn(2, 5, 4, requires_grad=True))
    y.sum().backward()
    assert y.shape == (2, 5, 4)


def test_compiled_specs_are_cached(tmp_path, monkeypatch):
    import ssmc
    import ssmc.api
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path / "cache"))
    path = ROOT / "examples" / "s5.ssm"
    first = ssmc.load(path, backend="torch")
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    def no_analysis(*a, **k):
        raise AssertionError("a cached spec must not be analysed again")

    monkeypatch.setattr(ssmc.api, "analyse", no_analysis)
    second = ssmc.load(path, backend="torch")
    assert second.__ssmc_source__ == first.__ssmc_source__
    # Another spec text is another entry; SSMC_CACHE=0 turns the cache off.
    monkeypatch.setenv("SSMC_CACHE", "0")
    with pytest.raises(AssertionError, match="must not be analysed"):
        ssmc.load(path, backend="torch")
