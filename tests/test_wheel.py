"""A regular (non-editable) install works: build a wheel from the tree, install it in
a fresh virtual environment, and compile an example with it from outside the repo."""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_wheel_installs_and_compiles(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("ssmc-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # torch & co. come from the environment running the tests (no network): its
    # site-packages directories, appended after the new venv's own. Not
    # system_site_packages=True: inside a virtual environment that would be the base
    # interpreter's, without what this venv installed. Only the directories are added,
    # their .pth files are not run, so an editable ssmc there is not seen.
    here = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    outer = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (Path(here) / "_outer_env.pth").write_text("".join(p + "\n" for p in outer))
    script = (
        "import pathlib, sys, torch, ssmc\n"
        f"assert pathlib.Path(ssmc.__file__).is_relative_to({str(env_dir)!r}), ssmc.__file__\n"
        "import ssmc.backends, ssmc.grammar\n"
        f"mod = ssmc.load({str(ROOT / 'examples' / 'mamba.ssm')!r})\n"
        "layer = mod.Mamba(H=4, N=3, seed=0)\n"
        "y = layer(torch.randn(2, 5, 4))\n"
        "print('OK', tuple(y.shape), ssmc.__file__)\n"
    )
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    p = subprocess.run([str(py), "-c", script], capture_output=True, text=True, cwd=run_dir, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK (2, 5, 4)" in p.stdout
    cli = env_dir / "bin" / "ssmc"
    p = subprocess.run([str(cli), "check", str(ROOT / "examples" / "s4d.ssm")], capture_output=True, text=True,
                       cwd=run_dir, env=env)
    assert p.returncode == 0, p.stderr
