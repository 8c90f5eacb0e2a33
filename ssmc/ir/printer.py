"""Canonical text of an IR graph (`.ssmir`), used by golden tests and `--dump-ir`.

Nodes are renumbered %0..%n in deterministic topological order, so the text is stable
when passes add or remove nodes. One line per node:

    %4 = mul(%2, %3) : [H, N] token real    # dt
"""
from __future__ import annotations

from .graph import Graph


def _attr(v) -> str:
    if isinstance(v, tuple) and v and isinstance(v[0], tuple) and len(v[0]) == 2 and hasattr(v[0][1], "line"):
        return "[" + ", ".join(str(x[0]) for x in v) + "]"
    if isinstance(v, tuple) and len(v) == 2 and hasattr(v[1], "line"):
        return str(v[0])
    return repr(v)


def dim_text(tree, top: bool = True) -> str:
    """A dims expression tree as source text: ceil(H / 16)."""
    k = tree[0]
    if k == "num":
        return str(tree[1])
    if k == "dim":
        return tree[1]
    if k == "neg":
        return f"-{dim_text(tree[1], False)}"
    sym = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}
    if k in sym:
        text = f"{dim_text(tree[1], False)} {sym[k]} {dim_text(tree[2], False)}"
        return text if top else f"({text})"
    return f"{k}(" + ", ".join(dim_text(t) for t in tree[1:]) + ")"


def print_graph(g: Graph) -> str:
    meta = g.meta
    order = g.topo()
    num = {n: i for i, n in enumerate(order)}
    names: dict[int, list[str]] = {}
    for name, n in sorted(meta.get("values", {}).items()):
        names.setdefault(n, []).append(name)
    lines = [f"ssm {meta['name']}"]
    if "dims" in meta:
        lines.append("dims " + ", ".join(f"{d} = {dim_text(t)}" if t[0] != "num" else f"{d} = {v}"
                                         for d, t, v in meta["dims"]))
    if isinstance(meta.get("scan"), dict):
        sc = meta["scan"]
        extra = "".join(f" {k}={sc[k]}" for k in ("merge", "params", "rows", "cols") if sc.get(k))
        lines.append(f"scan {sc['order']}{extra}")
    # A block with several states: one system line and one algorithm line per state.
    systems = meta.get("systems") or [meta]
    for system in systems:
        who = f" {g.op(system['state']).get('name')}:" if meta.get("systems") else ""
        c = system.get("classification")
        if c:
            lines.append("system" + who + " " + ("LTI" if c["lti"] else "selective") + " " +
                         " ".join(f"{k}={c[k]}" for k in ("A", "step", "input_coef", "readout", "readout_linear"))
                         + (f" forcing={c['forcing']}" if c.get("forcing") else ""))
    for system in systems:
        who = f" {g.op(system['state']).get('name')}:" if meta.get("systems") else ""
        if system.get("algorithm"):
            lines.append(f"algorithm{who} {system['algorithm']['name']}")
    for n in order:
        o = g.op(n)
        attrs = ", ".join(f"{k}={_attr(v)}" for k, v in o.attrs if v is not None)
        args = ", ".join(f"%{num[i]}" for i in g.operands(n))
        head = o.kind + (f"[{attrs}]" if attrs else "") + f"({args})"
        facts = []
        if g.fact(n, "dims") is not None:
            facts.append("[" + ", ".join(g.fact(n, "dims")) + "]")
        if g.fact(n, "time") is not None:
            facts.append(g.fact(n, "time"))
            facts.append("complex" if g.fact(n, "complex") else "real")
        line = f"%{num[n]} = {head}" + (" : " + " ".join(facts) if facts else "")
        if n in names:
            line += "    # " + ", ".join(names[n])
        lines.append(line)
    return "\n".join(lines) + "\n"
