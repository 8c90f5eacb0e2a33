"""A symbol per reduction: the linearity check may not cancel values that are not equal.

The check used to write a linear reduction such as sum(e, H) as a marker times e, with the
state (or the input) one scalar symbol. A ratio of two reductions of the same variable then
cancelled: `r / sum(r, H)` (r = sum(C * x, N)) became 1 / marker, a readout "linear and
static", so an LTI system ran its FFT form and was silently wrong; `u / sum(u, H)` in the
input term became a constant coefficient (not linear in u at all). Each reduction of a
state- or input-dependent value is now a symbol of its own.
"""
from __future__ import annotations

import pytest

from ssmc.testing.harness import check_spec
from tests.regressions.test_linearity_algorithm import _graph, agree, selective, spec_error


def _readout(output: str, extra: str = "") -> str:
    text = selective("W_B", "B * u").replace("y = sum(C * x, N)", f"y = {output}\n  r = sum(C * x, N)")
    return text.replace("  B  = W_B", "  B  = W_B" + extra)


NONLINEAR_READOUTS = [
    "r / sum(r, H)",
    "r * sum(r, H)",
    "r / mean(r, H)",
    "sum(C * x, N) / sum(sum(C * x, N), H)",
    "r / (1 + sum(r * r, H))",
    "sum(x / sum(x, N), N)",
    "linear(x, H) * linear(x, H)",                      # linear(...) of the state was an opaque
    "silu(linear(x, H))",                               # coefficient free of the state
]


@pytest.mark.parametrize("output", NONLINEAR_READOUTS)
def test_a_ratio_of_linear_readouts_is_not_linear(output):
    text = _readout(output)
    cls = _graph(text).meta["classification"]
    assert not cls["readout_linear"] and not cls["lti"], cls
    assert agree(text, length=40) == "chunked_scan"


def test_a_ratio_against_the_evaluator():
    rep = check_spec(_readout("r / sum(r, H)"), length=9)
    assert rep.ok, rep.summary() if hasattr(rep, "summary") else rep.findings


@pytest.mark.parametrize("output", [
    "sum(C * x, N) + 2 * sum(C * x, N)",
    "r + sum(r, H) - mean(r, H)",
    "2 * re(sum(C * x, N))",
])
def test_linear_readouts_stay_linear(output):
    text = _readout(output)
    cls = _graph(text).meta["classification"]
    assert cls["readout_linear"] and cls["lti"], cls
    assert agree(text, length=40) == "fft_conv"


@pytest.mark.parametrize("term", ["u / sum(u, H) * W_B", "sum(u, H) * u * W_B", "W_B * u / mean(u, H)"])
def test_a_ratio_in_the_input_term_is_not_linear(term):
    text = selective("W_B", term)
    err = spec_error(text)
    assert "not linear in the input" in str(err)


def _s4d(output: str) -> str:
    from tests.regressions.test_linearity_algorithm import S4D
    return (S4D.replace("STATE", "x[H, N]").replace("TERM", "B * u")
            .replace("y = OUTPUT", f"y = {output}\n  z = sum(C * x, N)"))


@pytest.mark.parametrize("output, linear", [
    ("re(z) / abs(z)", False),
    ("re(z) * im(z)", False),
    ("re(z) / (1 + re(sum(z, H)))", False),
    ("re(z) - 2 * im(z) + D * u", True),
], ids=["re-over-abs", "re-times-im", "over-sum", "re-minus-im"])
def test_complex_readouts(output, linear):
    text = _s4d(output)
    cls = _graph(text).meta["classification"]
    assert cls["readout_linear"] == linear and cls["lti"] == linear, cls
    assert agree(text, length=40) == ("fft_conv" if linear else "chunked_scan")


def test_a_readout_that_cancels_to_a_constant_is_not_linear():
    """`r / r` is 1 where defined: it reads the state but is no linear map of it, so no FFT form."""
    text = _readout("sum(C * x, N) / sum(C * x, N)")
    cls = _graph(text).meta["classification"]
    assert not cls["readout_linear"] and not cls["lti"], cls


def test_a_selective_ratio_readout_against_the_evaluator():
    text = selective("linear(u, N)", "B * u").replace("y = sum(C * x, N)", "y = r / (2 + sum(r * r, H))\n  r = sum(C * x, N)")
    assert _graph(text).meta["classification"]["readout"] == "static"
    assert not _graph(text).meta["classification"]["readout_linear"]
    rep = check_spec(text, length=9)
    assert rep.ok, rep.findings


@pytest.mark.parametrize("output", ["silu(linear(x, H))", "linear(x, H) / (1 + sum(r * r, H))"])
def test_a_scanned_readout_of_a_linear_map_of_the_state(output):
    """Found with this fix: such a readout (now scanned, no longer taken for an FFT-able
    one) read only the last chunk's states in the torch module (4 tokens out of 40)."""
    text = _readout(output)
    assert not _graph(text).meta["classification"]["lti"]
    assert agree(text, length=40) == "chunked_scan"
    rep = check_spec(text, length=9)
    assert rep.ok, rep.findings
