"""Structural invariants of the IR, checked between passes.

A failure here is a compiler bug, not a user error: it raises AssertionError naming
the pass that broke the invariant and the node.
"""
from __future__ import annotations

from .graph import Graph

# After which pass each fact must be on every node.
_FACT_AFTER = {"dims": "infer_shapes", "time": "infer_time"}
_ORDER = ("check_declarations", "resolve_names", "infer_shapes", "infer_time", "check_structure",
          "check_linearity", "discretize", "eliminate_common_subexpressions", "choose_algorithm")


def verify(g: Graph, after: str) -> None:
    done = set(_ORDER[: _ORDER.index(after) + 1]) if after in _ORDER else set(_ORDER)
    pred = g.nx.pred
    for n in g.nodes():
        # networkx re-creates an erased node, without its op, when an edge is added to it.
        assert "op" in g.nx.nodes[n], f"after {after}: node {n} has no op (an edge to an erased node)"
        o = g.op(n)
        slots = sorted(k for keys in pred[n].values() for k in keys)
        assert slots == list(range(len(slots))), f"after {after}: node {n} ({o.kind}) has operand slots {slots}"
        if "resolve_names" in done:
            assert o.kind != "ref", f"after {after}: unresolved ref {o.get('name')} at node {n}"
        for fact, pass_name in _FACT_AFTER.items():
            if pass_name in done:
                assert g.fact(n, fact) is not None, f"after {after}: node {n} ({o.kind}) lacks '{fact}'"
    if "discretize" in done:
        assert not g.find("dynamics"), f"after {after}: a dynamics node survived"
        assert g.op(g.meta["system"]).kind == "recurrence"
        for system in g.meta.get("systems") or ():
            assert g.op(system["system"]).kind == "recurrence", f"after {after}: a system is not a recurrence"
    for key in ("output", "state"):
        if g.meta.get(key) is not None:
            assert g.meta[key] in g.nx, f"after {after}: meta[{key}] points at a missing node"
