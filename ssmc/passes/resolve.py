"""resolve_names: every `ref` becomes an edge to what it names; every dim a call or a
declaration names exists; initializers use only dims and constants; no cycles.

Guarantees afterwards: no `ref` ops remain; meta["values"] maps each named value to
its node; a name that is a dim used as a value is a `dim` op (a static scalar); a block
with several states has meta["order"], the order its systems run in (passes/systems.py).

Example:  dt = exp(log_dt)   (ref log_dt) -> exp(param log_dt)
"""
from __future__ import annotations

import networkx as nx

from ..errors import SpecError
from ..ir import functions as F
from ..ir.graph import Graph, op
from .systems import order_systems


def _err(g, msg, span, hint=None):
    return SpecError(msg, span, g.meta["source"], hint)


def _check_dim(g: Graph, name: str, span, where: str) -> None:
    dims = g.meta["dim_spans"]
    if name not in dims:
        raise _err(g, f"unknown dim '{name}' in {where}", span,
                   hint=F.did_you_mean(name, dims, "dims") or "declare it in `dims`")


def _check_value_cycles(g: Graph, decl_span) -> None:
    """Reject `a = b + 1; b = a` by name, before linking, so the message names the whole loop."""
    values = g.meta["values"]
    order = {name: i for i, (_, name, _) in enumerate(g.meta["decls"])}
    deps = nx.DiGraph()
    for name in sorted(values, key=lambda v: order.get(v, 0)):
        root = values[name]
        deps.add_node(name)
        for n in sorted(g.ancestors(root) | {root}):
            o = g.op(n)
            if o.kind == "ref" and o.get("name") in values:
                deps.add_edge(name, o.get("name"))
    # Strongly connected components are linear time; find_cycle only inside a cyclic one.
    loops = [c for c in nx.strongly_connected_components(deps)
             if len(c) > 1 or any(deps.has_edge(v, v) for v in c)]
    if not loops:
        return
    loop = min(loops, key=lambda c: min(order.get(v, 0) for v in c))
    start = min(loop, key=lambda v: order.get(v, 0))
    cycle = nx.find_cycle(deps.subgraph(loop), source=start)
    names = [u for u, _ in cycle]
    first = min(range(len(names)), key=lambda i: order.get(names[i], 0))
    names = names[first:] + names[:first]
    raise _err(g, "cyclic definition: " + " -> ".join(names + [names[0]]), decl_span.get(names[0]),
               hint="values may not depend on themselves; only the state is recurrent")


def resolve_names(g: Graph) -> Graph:
    """Link names to their definitions, validate dim names, reject cycles."""
    g = g.copy()
    meta = g.meta
    symbols: dict[str, int] = {}
    for n in meta["inputs"] + meta["params"] + (meta.get("states") or [meta["state"]]):
        symbols[g.op(n).get("name")] = n
    symbols.update(meta["values"])
    output_name = g.op(meta["output"]).get("name")

    # Dims named by declarations and calls.
    for n in g.nodes():
        o = g.op(n)
        if o.kind in ("input", "state", "param"):
            for d, span in o.get("dims"):
                _check_dim(g, d, span, f"the dims of '{o.get('name')}'")
        elif o.kind in ("sum", "mean"):
            for d, span in o.get("dims"):
                _check_dim(g, d, span, f"{o.kind}()")
        elif o.kind in ("arange", "family"):
            d, span = o.get("dim")
            _check_dim(g, d, span, f"{o.get('fn', o.kind)}()")
        elif o.kind == "linear":
            for d, span in o.get("out_dims"):
                _check_dim(g, d, span, "linear()")
        elif o.kind == "conv":
            w, span = o.get("width")
            if isinstance(w, str):
                _check_dim(g, w, span, "conv()")
            elif w < 1:
                raise _err(g, "conv() width must be at least 1", span)

    init_nodes: set[int] = set()
    for p in meta["params"]:
        (root,) = g.operands(p)
        init_nodes |= g.ancestors(root) | {root}

    decl_span = {name: span for kind, name, span in meta["decls"]}
    _check_value_cycles(g, decl_span)

    def follow(name: str, chain: tuple[str, ...] = ()) -> int:
        # `A = B` makes A's root a ref to B: follow such chains to a real node.
        n = symbols[name]
        o = g.op(n)
        if o.kind == "ref" and o.get("name") in symbols:
            if o.get("name") in chain + (name,):
                loop = chain + (name, o.get("name"))
                raise _err(g, "cyclic definition: " + " -> ".join(loop), decl_span.get(loop[0], o.span),
                           hint="values may not depend on themselves; only the state is recurrent")
            n = follow(o.get("name"), chain + (name,))
        elif o.kind == "ref" and o.get("name") in meta["dim_spans"]:
            # `h = N`: the value is the dim's size. Refs to `h` will point at this node, so
            # it becomes the dim now (the loop below would erase it from under them).
            d = g.add(op("dim", o.span, name=o.get("name")))
            g.replace_all_uses(n, d)
            g.erase(n)
            n = d
        symbols[name] = n
        return n

    for name in list(meta["values"]):
        symbols[name] = follow(name)

    everything = sorted(set(symbols) | set(meta["dim_spans"]) | {output_name})
    links: dict[int, int] = {}
    for n in list(g.nodes()):
        o = g.op(n)
        if o.kind != "ref":
            continue
        name = o.get("name")
        if n in init_nodes:
            if name in meta["dim_spans"]:
                target = g.add(op("dim", o.span, name=name))
            elif name in symbols:
                raise _err(g, f"an initializer cannot use '{name}'", o.span,
                           hint="initializers use dims, numbers and functions, not other values")
            else:
                raise _err(g, f"unknown name '{name}'", o.span,
                           hint=F.did_you_mean(name, meta["dim_spans"], "dims") or None)
        elif name in symbols:
            target = symbols[name]
        elif name in meta["dim_spans"]:
            target = g.add(op("dim", o.span, name=name))
        elif name == output_name:
            raise _err(g, f"the output '{name}' cannot be used in an expression", o.span,
                       hint="name the expression as a value and use that")
        else:
            raise _err(g, f"unknown name '{name}'", o.span,
                       hint=F.did_you_mean(name, everything) or "declare it as a dim, input, param or value")
        links[n] = target
    # Every ref linked in one rewrite: per ref, the named tables would be scanned again.
    g.replace_uses(links)
    for n in links:
        g.erase(n)

    # A value defined as a bare name is that name's node (possibly a param or input).
    for name, n in list(meta["values"].items()):
        if n not in g.nx:
            raise AssertionError(f"lost value {name}")

    cycle = None
    if not nx.is_directed_acyclic_graph(g.nx):  # linear; find_cycle alone is slow on long chains
        try:
            cycle = nx.find_cycle(g.nx)
        except nx.NetworkXNoCycle:
            cycle = None
    if cycle:
        nodes = [u for u, _, *_ in cycle]
        names = {v: k for k, v in meta["values"].items()}
        named = [names[v] for v in nodes if v in names] or ["?"]
        first = meta["values"][named[0]] if named[0] in meta["values"] else nodes[0]
        span = decl_span.get(named[0], g.op(first).span)
        raise _err(g, "cyclic definition: " + " -> ".join(named + [named[0]]), span,
                   hint="values may not depend on themselves; only the state is recurrent")
    return order_systems(g)
