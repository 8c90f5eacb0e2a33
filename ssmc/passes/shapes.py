"""infer_shapes: the named dims of every value, broadcasting by name.

Rules (docs/language.md, "Named dimensions"):
  a[H] * b[N]      -> [H, N]   (left operand's dims, then the new ones of the right)
  sum(e[H, N], N)  -> [H]
  a[H] * M[N, N]   -> [H, N, N] (a square matrix keeps its repeated pair last)
  linear(e, R)     -> [R];  conv(e, K), prev(e) -> dims of e;  dplr(L[H,N], P[H,N,R], Q) -> [H, N, N]
                   dplr(a[H], b[H, N], c[N]) -> [H, N, N] (scalar Lambda, rank one)

Guarantees afterwards: every node has the fact `dims` (a tuple of dim names), and every
param's initializer has dims that broadcast into the param's declared dims.
"""
from __future__ import annotations

from ..errors import SpecError
from ..ir import functions as F
from ..ir.graph import Graph


def _err(g, msg, span, hint=None):
    return SpecError(msg, span, g.meta["source"], hint)


def fmt(dims) -> str:
    return "[" + ", ".join(dims) + "]"


def matrix_pair(dims) -> str | None:
    """The repeated dim if `dims` ends with a square-matrix pair, else None."""
    if len(dims) >= 2 and dims[-1] == dims[-2]:
        return dims[-1]
    return None


def broadcast(g: Graph, a, b, span, what="combine") -> tuple[str, ...]:
    pa, pb = matrix_pair(a), matrix_pair(b)
    if pa is None and pb is None:
        return tuple(a) + tuple(d for d in b if d not in a)
    pair = pa or pb
    if pa and pb and pa != pb:
        raise _err(g, f"cannot {what} a matrix over {fmt([pa, pa])} with one over {fmt([pb, pb])}", span)
    lead_a = a[:-2] if pa else a
    lead_b = b[:-2] if pb else b
    for lead, other in ((lead_a, a if not pa else None), (lead_b, b if not pb else None)):
        if other is not None and pair in other:
            raise _err(g, f"dims do not broadcast: a square matrix over {fmt([pair, pair])} "
                          f"with a value over {fmt(other)}", span,
                       hint=f"a matrix only broadcasts over dims other than {pair}; use a diagonal matrix or sum()")
    lead = tuple(lead_a) + tuple(d for d in lead_b if d not in lead_a)
    return lead + (pair, pair)


def shape_of(g: Graph, n: int) -> tuple[str, ...]:
    """The dims of node n from its operands' dims (which must be known)."""
    o = g.op(n)
    k = o.kind
    ins = [g.fact(i, "dims") for i in g.operands(n)]
    if k in ("const", "dim", "random"):
        if k == "random":
            p = g.meta["param_nodes"][o.get("param")]
            return tuple(d for d, _ in g.op(p).get("dims"))
        return ()
    if k in ("input", "state", "param"):
        return tuple(d for d, _ in o.get("dims"))
    if k == "arange":
        return (o.get("dim")[0],)
    if k == "family":
        d = o.get("dim")[0]
        return (d, d) if o.get("fn") in F.MATRIX_FAMILIES else (d,)
    if k in F.ELEMENTWISE or k in ("neg", "output", "conv", "prev", "prev_state", "expm", "phi1", "phi1m", "inv"):
        return ins[0]
    if k in ("add", "sub", "mul", "div", "pow") or k in F.PAIRWISE:
        return broadcast(g, ins[0], ins[1], o.span)
    if k in F.CLAMPS:
        # The bounds broadcast with the value by name, like min(max(e, lo), hi).
        out = ins[0]
        for other in ins[1:]:
            out = broadcast(g, out, other, o.span)
        return out
    if k in ("sum", "mean"):
        e = ins[0]
        pair = matrix_pair(e)
        out = list(e)
        seen = set()
        for d, span in o.get("dims"):
            if d in seen:
                raise _err(g, f"{k}() names {d} twice", span, hint=f"write {k}(..., {d}) once")
            seen.add(d)
            if d not in out:
                raise _err(g, f"{k}() over {d}, but the value has dims {fmt(e)}", span,
                           hint=("reduce over one of " + ", ".join(e)) if e else "the value is a scalar")
            if d == pair:
                raise _err(g, f"{k}() over {d} of a square matrix {fmt(e)} is ambiguous", span)
            out.remove(d)
        return tuple(out)
    if k == "linear":
        if matrix_pair(ins[0]):
            raise _err(g, f"linear() of a square matrix {fmt(ins[0])}", o.span)
        return tuple(d for d, _ in o.get("out_dims"))
    if k == "dplr":
        return _dplr_shape(g, n, o, ins)
    if k in ("matmul", "solve"):
        return broadcast(g, ins[0], ins[1], o.span)
    if k == "matvec":
        # The matrix's pair dim N ends up last, wherever the vector had it.
        nd = ins[0][-1]
        return broadcast(g, ins[0][:-2], tuple(d for d in ins[1] if d != nd), o.span) + (nd,)
    if k == "eye":
        d = o.get("dim")
        return (d, d)
    if k in ("blockdiag",):
        return ins[0]
    if k in ("dynamics", "recurrence"):
        return ()
    raise AssertionError(f"no shape rule for {k}")


def dplr_parts(g: Graph, lam, p, q, n: int | None = None) -> tuple[str, bool, str | None]:
    """How dplr(Lambda, P, Q) (node n) reads its operands' dims: (N, Lambda is a vector over N,
    the rank dim or None for rank one). N is the last dim of the state whose transition it
    is (the only state, or the one whose system reads n)."""
    from ..ir.systems import state_nodes, system_nodes

    states = state_nodes(g)
    lasts = [g.op(s).get("dims")[-1][0] for s in states if g.op(s).get("dims")]
    nd = lasts[0] if len(lasts) == 1 else None
    if nd is None and n is not None:
        for sysn, st in zip(system_nodes(g), states):
            if g.op(st).get("dims") and g.operands(sysn) and g.operands(sysn)[0] == n:
                nd = g.op(st).get("dims")[-1][0]
    if nd is None:
        nd = p[-1] if p and p[-1] in lasts else p[-2] if len(p) >= 2 else lam[-1] if lam else None
    rank = p[-1] if p and p[-1] != nd else None
    return nd, bool(lam) and lam[-1] == nd, rank


def _dplr_shape(g: Graph, n: int, o, ins) -> tuple[str, ...]:
    """dplr(Lambda, P, Q) (decision 6): Lambda [..., N] (a diagonal) or a scalar per some
    leading dims (no N: Lambda times the identity); P, Q [..., N, R] or [..., N] (rank one).
    The result is [..., N, N], N the state's last dim."""
    lam, p, q = ins
    nd, vector, rank = dplr_parts(g, lam, p, q, n)
    if nd is None:
        raise _err(g, "dplr(Lambda, P, Q): Lambda needs the state's last dim", o.span)
    if nd in lam and not vector:
        raise _err(g, f"dplr(Lambda, P, Q): Lambda has dims {fmt(lam)}, with {nd} not last", o.span,
                   hint=f"Lambda[..., {nd}] for a diagonal, or Lambda without {nd} for a scalar per head")
    if matrix_pair(lam):
        raise _err(g, f"dplr(Lambda, P, Q): Lambda is a square matrix {fmt(lam)}", o.span,
                   hint=f"Lambda is the diagonal [..., {nd}] or a scalar gate")
    lead = tuple(lam[:-1]) if vector else tuple(lam)
    for name, m in (("P", p), ("Q", q)):
        one = bool(m) and m[-1] == nd and nd not in m[:-1]
        full = len(m) >= 2 and m[-2] == nd and m[-1] != nd and nd not in m[:-2]
        if not (one if rank is None else full and m[-1] == rank):
            want = f"[..., {nd}]" if rank is None else f"[..., {nd}, {rank}]"
            sd = [d for d, _ in g.op(g.meta["state"]).get("dims")] if g.meta.get("state") is not None else []
            other = next((d for d in reversed(m) if d in sd and d != nd), None)
            if other is not None:
                # dplr(1, beta * k, k) with k over another state dim: the matrix acts on the last one
                order = [d for d in sd if d != other] + [other]
                hint = (f"a square matrix acts on the state's last dim {nd} (section 4); for one over {other}, "
                        f"put {other} last: state {g.op(g.meta['state']).get('name')}[{', '.join(order)}]")
            else:
                hint = (f"declare it like {name}[{', '.join(list(lead) + [nd, 'R'])}] or "
                        f"{name}[{', '.join(list(lead) + [nd])}]")
            what = (f"{name} has dims {fmt(m)}, over {other} where the state's last dim {nd} is expected"
                    if other is not None and nd not in m else f"{name} has dims {fmt(m)}, expected {want}")
            raise _err(g, f"dplr(Lambda, P, Q): {what} "
                          f"([..., {nd}] for rank one, [..., {nd}, R] for rank R, the same for P and Q)",
                       o.span, hint=hint)
        lead = lead + tuple(d for d in m[:(-1 if rank is None else -2)] if d not in lead)
    return lead + (nd, nd)


def annotate_shapes(g: Graph, nodes=None) -> None:
    """Fill `dims` for the given nodes (default: all), in topological order."""
    todo = set(nodes) if nodes is not None else None
    for n in g.topo():
        if todo is None or n in todo:
            g.set_fact(n, dims=shape_of(g, n))


def infer_shapes(g: Graph) -> Graph:
    """Every node gets its named dims; initializers must fit their params."""
    g = g.copy()
    g.meta["param_nodes"] = {g.op(p).get("name"): p for p in g.meta["params"]}
    annotate_shapes(g)
    for p in g.meta["params"]:
        (root,) = g.operands(p)
        have, want = g.fact(root, "dims"), g.fact(p, "dims")
        extra = [d for d in have if d not in want]
        if extra or (matrix_pair(have) and matrix_pair(have) != matrix_pair(want)):
            raise _err(g, f"the initializer of '{g.op(p).get('name')}' has dims {fmt(have)}, "
                          f"which do not fit the declared {fmt(want)}", g.op(root).span,
                       hint=f"declare {g.op(p).get('name')}[{', '.join(list(dict.fromkeys(list(want) + list(have))))}]"
                            " or reduce the initializer")
    return g
