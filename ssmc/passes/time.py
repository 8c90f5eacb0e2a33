"""infer_time: per value, static or per-token, and real or complex.

A value is per-token ("token") if it depends on an input or on the state; values
inside a param's initializer are "init" (evaluated once, at construction); the
rest are "static". Complexity flows from complex params, the state, complex
constants (1j) and the complex initializer families; re(), im() and abs() are real.

Guarantees afterwards: every node has the facts `time` and `complex`; functions that
need a real argument (softplus, silu, ...) have one; `conv` is applied to a per-token
value; a real param has a real initializer. `prev(e)` of a per-token value that does not
read the state stays `prev` (a shift along time, with a carried tail); `prev(x)` of the
state itself becomes `prev_state` (the state before the token's update, no tail).

Example:  dt = softplus(linear(u, H))  -> token, real;   A = -exp(A_log) -> static, real
"""
from __future__ import annotations

from ..errors import SpecError
from ..ir import functions as F
from ..ir.graph import Graph, Op
from ..ir.systems import state_nodes

REAL_ONLY = F.REAL_ONLY
RANK = {"static": 0, "init": 0, "token": 1}


def _err(g, msg, span, hint=None):
    return SpecError(msg, span, g.meta["source"], hint)


def time_of(g: Graph, n: int, init_nodes) -> tuple[str, bool]:
    o = g.op(n)
    k = o.kind
    ins = g.operands(n)
    if n in init_nodes:
        time = "init"
    elif k in ("input", "state"):
        time = "token"
    elif k in ("const", "dim", "arange", "family", "param", "eye"):
        time = "static"
    else:
        time = "token" if any(g.fact(i, "time") == "token" for i in ins) else "static"
    if k == "const":
        cplx = isinstance(o.get("value"), complex)
    elif k in ("state", "param"):
        cplx = bool(o.get("complex"))
    elif k == "input":
        cplx = bool(o.get("complex"))
    elif k == "family":
        cplx = o.get("fn") in F.COMPLEX_FAMILIES
    elif k == "random":
        cplx = o.get("dist") == "lru_ring" or bool(g.op(g.meta["param_nodes"][o.get("param")]).get("complex")) \
            and o.get("dist") == "normal"
    elif k in ("re", "im", "abs", "arange", "dim", "eye"):
        cplx = False
    else:
        cplx = any(g.fact(i, "complex") for i in ins)
    if k in REAL_ONLY and cplx:
        raise _err(g, f"{k}() needs a real argument, but this one is complex" if len(ins) == 1 else
                   f"{'clamp' if k in F.CLAMPS else k}() needs real arguments, but one is complex", o.span,
                   hint="take re(...) or abs(...) first")
    if k == "conv" and g.fact(ins[0], "time") != "token":
        raise _err(g, "conv() runs along time, so its argument must be per-token", o.span,
                   hint="apply it to an expression of an input")
    if k == "prev" and time != "token":
        raise _err(g, "prev() looks at the previous token, so its argument must be per-token", o.span,
                   hint="a static value is the same at every token: write it without prev()")
    return time, cplx


def _check_prev(g: Graph) -> None:
    """prev(x) of the state becomes `prev_state`; prev of anything else that reads the
    state is refused (zero before the first token would contradict prev(x), which is
    the initial state there): the readout is written with prev(x) inside instead."""
    state = g.meta["state"]
    states = state_nodes(g)
    for n in g.topo():
        o = g.op(n)
        if o.kind != "prev":
            continue
        (e,) = g.operands(n)
        sname = g.op(state).get("name")
        if len(states) > 1 and any(s == e or s in g.ancestors(e) for s in states):
            raise _err(g, "prev() of a state, or of a value that reads one, in a block with several states "
                          "is not supported yet", o.span,
                       hint="read the states after their update, or keep prev(x) to a block with one state")
        if e == state:
            if o.get("shift") != 1:
                raise _err(g, f"prev({sname}, {o.get('shift')}): the state is only kept one token back", o.span,
                           hint=f"prev({sname}) is the state before the current token's update")
            if g.meta["scan"]["order"] == "global":
                # Every output of a global scan reads x_L, the state after the whole sequence:
                # no token has a state of its own before its update.
                raise _err(g, f"prev({sname}) under `scan global`: every output reads the state after the "
                              f"whole sequence, not one before a token's update", o.span,
                           hint=f"read {sname} (x_L), or scan causal to read prev({sname})")
            g.replace_op(n, Op("prev_state", (), o.span))
        elif state in g.ancestors(e):
            raise _err(g, f"prev() of a value that reads the state '{sname}'", o.span,
                       hint=f"write prev({sname}) inside the expression, e.g. sum(C * prev({sname}), N)")
    # The tails' names: <owner>_prev, <owner>_prev2, ... in textual order per owner.
    shifts = sorted((n for n in g.nodes() if g.op(n).kind == "prev"),
                    key=lambda n: (g.op(n).get("owner"), g.op(n).get("seq")))
    count: dict = {}
    for n in shifts:
        o = g.op(n)
        owner = o.get("owner")
        count[owner] = count.get(owner, 0) + 1
        name = f"{owner}_prev" + (str(count[owner]) if count[owner] > 1 else "")
        g.replace_op(n, Op("prev", (("shift", o.get("shift")), ("tail", name)), o.span))


def init_nodes_of(g: Graph) -> set[int]:
    out: set[int] = set()
    for p in g.meta["params"]:
        (root,) = g.operands(p)
        out |= g.ancestors(root) | {root}
    return out


def annotate_time(g: Graph, nodes=None) -> None:
    todo = set(nodes) if nodes is not None else None
    inits = init_nodes_of(g)
    for n in g.topo():
        if todo is None or n in todo:
            t, c = time_of(g, n, inits)
            g.set_fact(n, time=t, complex=c)


def infer_time(g: Graph) -> Graph:
    """Tag every node static / token / init and real / complex."""
    g = g.copy()
    annotate_time(g)
    if g.meta["scan"]["order"] == "global" and len(state_nodes(g)) > 1:
        raise _err(g, "`scan global` in a block with several states is not supported yet", g.meta["scan"]["span"],
                   hint="one state per block with scan global")
    _check_prev(g)
    for p in g.meta["params"]:
        o = g.op(p)
        (root,) = g.operands(p)
        if g.fact(root, "complex") and not o.get("complex"):
            raise _err(g, f"'{o.get('name')}' is a real param but its initializer is complex", g.op(root).span,
                       hint=f"declare it complex: param {o.get('name')}[...] complex = ...")
    return g
