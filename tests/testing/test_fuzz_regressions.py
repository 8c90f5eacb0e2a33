"""Every finding of the differential tester, reduced, stays fixed.

`tests/testing/regressions/*.ssm` are reproducers written by
`python -m ssmc.testing.fuzz` (then reviewed): the header names the finding, the
sizes, the length and the backends. Each must now pass `check_spec` on those
backends (valid specs) or be accepted / give a located SpecError (mutants, whose
header has `# mutation:`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from ssmc.testing.fuzz import check_invalid
from ssmc.testing.harness import check_spec

HERE = Path(__file__).resolve().parent / "regressions"
FILES = sorted(HERE.glob("*.ssm"))


def _header(text):
    meta = {}
    for line in text.splitlines():
        if not line.startswith("# "):
            break
        k, _, v = line[2:].partition(": ")
        meta[k.strip()] = v.strip()
    return meta


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_fuzz_reproducer(path):
    text = path.read_text()
    meta = _header(text)
    if "mutation" in meta:
        f = check_invalid(text)
        assert f is None, str(f)
        return
    backends = tuple(meta.get("backends", "numpy,torch").split(","))
    rep = check_spec(text, json.loads(meta.get("sizes", "{}")), int(meta.get("length", "7")),
                     backends=backends)
    assert not rep.skipped, rep.skipped
    assert rep.ok, "\n".join(str(f) for f in rep.findings)
