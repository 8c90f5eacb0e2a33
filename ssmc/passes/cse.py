"""eliminate_common_subexpressions: one node per distinct computation.

Two nodes merge when they have the same kind, attributes and operands, and (numbers
and dims aside) both or neither are part of a param's initializer. Nodes that
own something (params, inputs, the state, linear/conv weights, prev tails, random draws) or
stand for the system never merge. Nodes that nothing reads any more, other than
params (they stay module parameters), are removed.

Example: y = exp(a) * exp(a)   ->  %1 = exp(a); %2 = mul(%1, %1)
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.systems import state_nodes, system_nodes

NEVER = ("param", "input", "state", "linear", "conv", "prev", "random", "recurrence", "dynamics", "output")


def eliminate_common_subexpressions(g: Graph) -> Graph:
    """Merge structurally equal nodes; drop dead ones."""
    g = g.copy()
    seen: dict[tuple, int] = {}
    # Merged nodes are rewired in one rewrite at the end (per node, the named tables would be
    # scanned again); until then an operand is read as the node it merged into.
    merged: dict[int, int] = {}
    for n in g.topo():
        o = g.op(n)
        if o.kind in NEVER:
            continue
        # An initializer's computations run once, in `_init_<param>`, the forward's at every
        # call: they stay apart, so the forward never reads a value only an initializer
        # computes. Numbers and dims are names in the generated code, so they may be shared.
        init = g.fact(n, "time") == "init" and o.kind not in ("const", "dim")
        key = (o.kind, tuple((k, repr(v)) for k, v in o.attrs), tuple(merged.get(i, i) for i in g.operands(n)),
               init)
        if key in seen:
            merged[n] = seen[key]
        else:
            seen[key] = n
    g.replace_uses(merged)
    for n in merged:
        g.erase(n)
    keep = {g.meta["system"], g.meta["output"], *g.meta["params"], *g.meta["inputs"], g.meta["state"],
            *system_nodes(g), *state_nodes(g)}
    live = set(keep)
    for k in keep:
        live |= g.ancestors(k)
    for n in list(g.nodes()):
        if n not in live:
            g.erase(n)
    g.meta["values"] = {k: v for k, v in g.meta["values"].items() if v in g.nx}
    return g
