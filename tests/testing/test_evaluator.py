"""The tester's evaluator against the oracles written from the papers.

`ssmc.testing.evaluator` is the oracle of the differential tester, so it is itself
checked against `tests/oracles/papers.py` (S4D, S4D-Real, LSSL, S5, LRU, Mamba,
Mamba-2, reverse and bidirectional scans), which never go through ssmc: both read
the same parameters, and must agree to 1e-12. Also: the evaluator is not blind
(perturbing one of its rules is caught by the harness), and it evaluates dims and
broadcasting exactly as the language page says.
"""
from __future__ import annotations

import numpy as np
import pytest

from ssmc.frontend.parser import parse
from ssmc.testing import evaluator as ev
from ssmc.testing.harness import check_spec
from tests.oracles import test_oracles as O

CASE_DIMS = [p for p in O.ALL_CASE_DIMS]


@pytest.mark.parametrize("Bsz,L", [(1, 1), (2, 7), (1, 13)])
@pytest.mark.parametrize("name,i", CASE_DIMS)
def test_evaluator_matches_paper_oracles(name, i, Bsz, L):
    c = O.CASES[name]
    layer, P = O.layer_and_params(name, i)
    u = O.make_input(name, i, Bsz, L, seed=7 + L)
    block = parse(c.spec).blocks[0]
    sizes = ev.eval_dims(block, dict(c.dims[i]))
    prim = [s for s in block.body if type(s).__name__ == "InputDecl"][0].name
    if c.scan in ("causal", "reverse"):
        x0 = O.make_state(name, i, Bsz, seed=3)
        y, x = ev.evaluate(block, sizes, P, {prim: u}, initial_state=x0, return_state=True)
        y_ref, x_ref = c.oracle(P, u, x0, reverse=(c.scan == "reverse"))
        assert O.rel(x, x_ref) <= 1e-12
    else:
        y = ev.evaluate(block, sizes, P, {prim: u})
        y_ref, _ = c.reference(P, u)
    assert O.rel(y, y_ref) <= 1e-12


def test_dims_are_evaluated_exactly():
    block = parse("ssm T { dims H = 6, R = ceil(H / 4), E = 2 * H, M = min(H, 4), F = floor(7 / 2) ** 2\n"
                  "input u[H]\nstate x[H]\nA = -1 : diagonal\nrecurrence x = A x + u\nscan causal\n"
                  "output y = x }").blocks[0]
    assert ev.eval_dims(block, {}) == dict(H=6, R=2, E=12, M=4, F=9)
    assert ev.eval_dims(block, {"H": 9}) == dict(H=9, R=3, E=18, M=4, F=9)


def test_broadcasting_by_name_left_first():
    a = ev.V(np.arange(2.0), ("H",))
    b = ev.V(np.arange(6.0).reshape(2, 3), ("H", "N"))
    r = ev.binop("*", a, b)
    assert r.dims == ("H", "N") and np.array_equal(r.a, a.a[:, None] * b.a)
    r = ev.binop("*", ev.V(np.arange(3.0), ("N",)), a)
    assert r.dims == ("N", "H") and np.array_equal(r.a, np.arange(3.0)[:, None] * a.a[None, :])
    # a square matrix over the state's last dim keeps its pair last (decision 4)
    m = ev.V(np.ones((3, 3)), ("N", "N" + ev.COL))
    assert ev.binop("*", m, a).dims == ("H", "N", "N" + ev.COL)


@pytest.mark.parametrize("example,sizes", [("mamba", {"H": 3, "N": 2}), ("s4d", {"H": 2, "N": 3}),
                                           ("lssl", {"H": 2, "N": 3})])
def test_a_wrong_rule_in_the_evaluator_is_caught(monkeypatch, example, sizes):
    """The harness is not blind: a 0.1% error in the evaluator's discretization shows."""
    text = open(f"{O.__file__.rsplit('/tests/', 1)[0]}/examples/{example}.ssm").read()
    assert check_spec(text, sizes, 5, backends=("numpy",)).ok
    el, mx = ev.elementwise, ev.matrix
    monkeypatch.setattr(ev, "elementwise", lambda *a: (lambda ab, eb: (ab, eb * 1.001))(*el(*a)))
    monkeypatch.setattr(ev, "matrix", lambda *a: (lambda ab, eb: (ab, eb * 1.001))(*mx(*a)))
    rep = check_spec(text, sizes, 5, backends=("numpy",))
    assert any(f.kind == "mismatch" and f.check == "forward" for f in rep.findings)
