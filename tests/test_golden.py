"""Every stage prints itself; these goldens are reviewed like code.

For each example: the AST dump, the IR after every pass, the `check` summary, the
`explain` equations and the generated NumPy module.
"""
from __future__ import annotations

import pytest

import ssmc
from ssmc.compiler import analyse
from ssmc.explain import explain, summary
from ssmc.frontend.ast import dump
from ssmc.frontend.parser import parse, read_source
from ssmc.ir.build import build
from ssmc.ir.printer import print_graph
from ssmc import passes

from .conftest import EXAMPLES, ROOT


def _rel(path):
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_ast(path, golden):
    golden(f"ast/{path.stem}.txt", dump(parse(read_source(_rel(path))).blocks) + "\n")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_ir_after_each_pass(path, golden):
    source = read_source(_rel(path))
    texts = []
    for block in parse(source).blocks:
        g = build(block, source)
        for p in passes.PIPELINE:
            g = p(g)
            texts.append(f"## after {p.__name__}\n{print_graph(g)}")
    golden(f"ir/{path.stem}.ssmir", "\n".join(texts))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_summary_and_explain(path, golden):
    compiled = analyse(read_source(_rel(path)))
    text = "\n\n".join(summary(g) + "\n\n" + explain(g) for g in compiled.graphs)
    golden(f"explain/{path.stem}.txt", text + "\n")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_generated_numpy(path, golden):
    golden(f"numpy/{path.stem}.py", ssmc.compile_source(read_source(_rel(path)), "numpy"))


def test_ir_printout_is_deterministic():
    path = _rel(EXAMPLES[0])
    a = [print_graph(g) for g in analyse(read_source(path)).graphs]
    b = [print_graph(g) for g in analyse(read_source(path)).graphs]
    assert a == b
