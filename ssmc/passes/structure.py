"""check_structure: the state matrix, input term and step fit the state and the
declared structure.

  diagonal        A broadcasts to the state's dims          A[H, N] with x[H, N]
  scalar          A has some leading dims of the state      A[Hd] with x[Hd, P, N]
  dense           A is [..., N, N], N the state's last dim   A[N, N] with x[H, N]
  dplr            A = dplr(Lambda, P, Q)                     Lambda[H, N], P[H, N, R];
                                                             or Lambda[H] / a number, P[H, N] (rank one)
  block_diagonal  like dense, N divisible by the block count

The input term's dims and the step's dims must be among the state's dims; a complex
A or input term needs a complex state; the step is real.

Guarantees afterwards: meta["state_dims"], meta["state_complex"] are set, and the
system node's operands have shapes the discretization can use as they are.
"""
from __future__ import annotations

from ..errors import SpecError
from ..ir.graph import Graph
from .shapes import fmt, matrix_pair


def _err(g, msg, span, hint=None):
    return SpecError(msg, span, g.meta["source"], hint)


def check_structure(g: Graph) -> Graph:
    """Reject a state matrix, input term or step that does not fit the state."""
    g = g.copy()
    meta = g.meta
    st = g.op(meta["state"])
    sdims = g.fact(meta["state"], "dims")
    scomplex = bool(st.get("complex"))
    meta["state_dims"], meta["state_complex"] = sdims, scomplex
    if not sdims:
        raise _err(g, f"the state '{st.get('name')}' needs at least one dim", st.span, hint="state x[N]")
    sysn = meta["system"]
    info = meta["system_info"]
    structure = info["structure"]
    tr = meta["transition"]
    ops = g.operands(sysn)
    a, e = ops[0], ops[1]
    adims = g.fact(a, "dims")
    aspan = tr["matrix_span"]
    name = info["matrix"]
    last = sdims[-1]
    pair = matrix_pair(adims)
    sname = st.get("name")
    if structure == "diagonal":
        if pair or any(d not in sdims for d in adims):
            raise _err(g, f"a diagonal state matrix broadcasts to the state's dims {fmt(sdims)}, "
                          f"but '{name}' has {fmt(adims)}", aspan,
                       hint="use `: dense` for a full matrix" if pair else "drop the extra dims")
    elif structure == "scalar":
        if pair or any(d not in sdims[:-1] for d in adims):
            raise _err(g, f"a scalar state matrix has some leading dims of the state {fmt(sdims)} "
                          f"(not {last}), but '{name}' has {fmt(adims)}", aspan,
                       hint=f"e.g. {name}[{sdims[0]}]" if len(sdims) > 1 else "use `: diagonal`")
    else:
        # `1 - beta * k * k` over [..., N] is elementwise (a diagonal), not I - beta k k^T: a
        # vector times a vector over N never makes a matrix (decision 4), so say how to write one.
        rank_one = (f"; for an identity plus rank one such as the delta rule's I - beta k k^T, write "
                    f"{name} = dplr(1, beta * k, k) : dplr") if not pair and last in adims else ""
        if pair != last or any(d not in sdims[:-1] for d in adims[:-2]):
            raise _err(g, f"a {structure} state matrix has dims [..., {last}, {last}] over the state "
                          f"{fmt(sdims)}, but '{name}' has {fmt(adims)}", aspan,
                       hint=(f"declare it like M[{last}, {last}]" if structure != "dplr" else
                             f"A = dplr(Lambda, P, Q) with Lambda[..., {last}] or a scalar, and P, Q [..., {last}] "
                             f"or [..., {last}, R]") + rank_one)
        if structure == "dplr" and g.op(a).kind != "dplr":
            raise _err(g, f"a dplr state matrix is written {name} = dplr(Lambda, P, Q) : dplr", aspan,
                       hint=f"e.g. the delta rule's I - beta k k^T is dplr(1, beta * k, k)")
        if structure == "block_diagonal":
            blocks = info["blocks"]
            k = blocks if isinstance(blocks, int) else dict((d, v) for d, _, v in meta["dims"])[blocks]
            size = dict((d, v) for d, _, v in meta["dims"])[last]
            if size % k:
                raise _err(g, f"block_diagonal(blocks = {blocks}): {last} = {size} is not divisible by {k}",
                           info["span"], hint=f"choose a block count that divides {last}")
    if g.fact(a, "complex") and not scomplex:
        raise _err(g, f"'{name}' is complex but the state '{sname}' is real", aspan,
                   hint=f"declare the state complex: state {sname}[{', '.join(sdims)}] complex")
    edims = g.fact(e, "dims")
    # Where the term and the step are written (a bare name's node carries its declaration's span).
    espan = tr.get("term_span") or g.op(e).span
    if matrix_pair(edims) or any(d not in sdims for d in edims):
        extra = [d for d in edims if d not in sdims]
        raise _err(g, f"the input term has dims {fmt(edims)}, but the state '{sname}' has {fmt(sdims)}", espan,
                   hint=(f"reduce the extra dims, e.g. sum(..., {', '.join(extra)})" if extra else
                         f"it must broadcast to the state's dims {fmt(sdims)}; reduce the matrix with sum(...)"))
    if g.fact(e, "complex") and not scomplex:
        raise _err(g, f"the input term is complex but the state '{sname}' is real", espan,
                   hint="declare the state complex or take re(...)")
    if g.op(sysn).kind == "dynamics":
        step = ops[2]
        sd = g.fact(step, "dims")
        sspan = (meta.get("discretize") or {}).get("step_span") or g.op(step).span
        if matrix_pair(sd) or any(d not in sdims for d in sd):
            raise _err(g, f"the step has dims {fmt(sd)}, but it must broadcast to the state's dims {fmt(sdims)}",
                       sspan, hint=f"give the step some of the state's dims, e.g. [{sdims[0]}], or none")
        if structure in ("dense", "dplr", "block_diagonal") and last in sd:
            raise _err(g, f"the step of a {structure} system cannot vary along {last}", sspan,
                       hint=f"a matrix exponential needs one step per {last} x {last} block")
        if g.fact(step, "complex"):
            raise _err(g, "the step must be real", sspan, hint="take re(...) or abs(...)")
    out = meta["output"]
    # With several states, a state may instead be read by another state's system (which the
    # output reads in turn: order_systems ran them in order).
    readers = [out] + [s["system"] for s in meta.get("systems") or () if s["state"] != meta["state"]]
    if not any(meta["state"] in g.ancestors(r) for r in readers):
        raise _err(g, f"the output does not read the state '{sname}'", g.op(out).span,
                   hint=f"e.g. output y = sum(C * {sname}, {last})")
    if matrix_pair(g.fact(out, "dims")):
        raise _err(g, "the output is a square matrix", g.op(out).span, hint="reduce it with sum()")
    return g
