"""IR -> readable NumPy source: the float64 reference every other backend is checked against.

The generated class extends `ssmc.runtime.ReferenceModule` and contributes tables
(dims, inputs, state, params, scan) and two kinds of methods:
  `_init_<param>(d, gen)`   the param's initializer, evaluated once in float64;
  `_direction(p, d, inputs, state)`   one causal pass over the (already reordered)
      sequence: static values, per-token values, the recurrence as a plain loop over
      time, then the readout.
Values are arrays whose trailing axes are named dims (per-token ones lead with
batch and time); `rt.align` moves named axes wherever two operands' dims differ.
"""
from __future__ import annotations

from ...ir import functions as F
from ...ir.graph import Graph
from ...ir.systems import is_multi
from ..codegen_common import NumpyPrinter, bind_dims, reads_prev_state, class_header, direction_prologue, init_methods, module_header, \
    multi_prologue, multi_schedule, split_body


def _recurrence(g: Graph, pr: NumpyPrinter, system: dict, x: str) -> list[str]:
    """The sequential loop of one system: its state variable `x` in, the per-token states
    bound to the state's name out."""
    sname = g.op(system["state"]).get("name")
    sdims = tuple(system["state_dims"])
    sys_op = g.op(system["system"])
    abar, ebar = g.operands(system["system"])
    structure = sys_op.get("structure")
    matrix = structure in F.MATRIX_STRUCTURES
    L = []
    w = L.append
    rule = sys_op.get("rule") or (system.get("discretization") or {}).get("rule")
    w(f"        # the recurrence of {sname} ({(rule + ', ') if rule else ''}{structure}), one token at a time")
    atarget = sdims[:-1] + (sdims[-1], sdims[-1]) if matrix else sdims
    w(f"        _Abar = {pr.arg(abar, atarget)}  # [" + ", ".join(
        (("B", "L") if g.fact(abar, "time") == "token" else ()) + atarget) + "]")
    w(f"        _Ebar = {pr.arg(ebar, sdims)}  # [" + ", ".join(
        (("B", "L") if g.fact(ebar, "time") == "token" else ()) + sdims) + "]")
    at = "[:, _t]" if g.fact(abar, "time") == "token" else ""
    et = "[:, _t]" if g.fact(ebar, "time") == "token" else ""
    w(f"        _xs = np.empty((_B, _L) + {x}.shape[1:], dtype=np.result_type({x}, _Abar, _Ebar))")
    w("        for _t in range(_L):")
    if matrix:
        w(f"            {x} = rt.matvec(_Abar{at}, {x}) + _Ebar{et}")
    else:
        w(f"            {x} = _Abar{at} * {x} + _Ebar{et}")
    w(f"            _xs[:, _t] = {x}")
    w(f"        {sname} = _xs  # [" + ", ".join(("B", "L") + sdims) + "]")
    return L


def render_multi(g: Graph) -> str:
    """A block with several states: each system's loop after what it reads, then the readout."""
    meta = g.meta
    pr = NumpyPrinter(g)
    L = class_header(g, "rt.ReferenceModule")
    w = L.append
    L.extend(init_methods(g))
    L.extend(multi_prologue(g, pr, lambda shape, cplx: f"np.zeros({shape}, dtype="
                            + ("np.complex128" if cplx else "np.float64") + ")"))
    for kind, item in multi_schedule(g):
        if kind == "node":
            w(f"        {pr.line(item)}")
        else:
            L.extend(_recurrence(g, pr, meta["systems"][item], f"_x{item}"))
    finals = ", ".join(f"_x{i}" for i in range(len(meta["systems"])))
    w(f"        return {pr.var(meta['output'])}, ({finals}, *tails)")
    return "\n".join(bind_dims(g, L)) + "\n"


def render_class(g: Graph) -> str:
    if is_multi(g):
        return render_multi(g)
    meta = g.meta
    pr = NumpyPrinter(g)
    sname = g.op(meta["state"]).get("name")
    sdims = tuple(meta["state_dims"])
    out_node = meta["output"]
    sysn = meta["system"]
    sys_op = g.op(sysn)
    abar, ebar = g.operands(sysn)
    structure = sys_op.get("structure")
    matrix = structure in F.MATRIX_STRUCTURES
    L = class_header(g, "rt.ReferenceModule")
    w = L.append
    L.extend(init_methods(g))
    static, token, after = split_body(g)
    dtype = "np.complex128" if meta["state_complex"] else "np.float64"
    L.extend(direction_prologue(g, pr, "np.zeros({shape}, dtype=" + dtype + ")"))
    if static:
        w("        # static values")
        for n in static:
            w(f"        {pr.line(n)}")
    if token:
        w("        # per-token values")
        for n in token:
            w(f"        {pr.line(n)}")
    rule = sys_op.get("rule")
    w(f"        # the recurrence ({(rule + ', ') if rule else ''}{structure}), one token at a time")
    if matrix:
        w("        # x_t = Abar_t @ x_{t-1} + Ebar_t")
        atarget = sdims[:-1] + (sdims[-1], sdims[-1])
    else:
        w("        # x_t = Abar_t * x_{t-1} + Ebar_t")
        atarget = sdims
    w(f"        _Abar = {pr.arg(abar, atarget)}  # [" + ", ".join(
        (("B", "L") if g.fact(abar, "time") == "token" else ()) + atarget) + "]")
    w(f"        _Ebar = {pr.arg(ebar, sdims)}  # [" + ", ".join(
        (("B", "L") if g.fact(ebar, "time") == "token" else ()) + sdims) + "]")
    at = "[:, _t]" if g.fact(abar, "time") == "token" else ""
    et = "[:, _t]" if g.fact(ebar, "time") == "token" else ""
    w("        _xs = np.empty((_B, _L) + _x.shape[1:], dtype=np.result_type(_x, _Abar, _Ebar))")
    if reads_prev_state(g):
        w("        _x0 = _x  # the entering state, for prev(" + sname + ")")
    w("        for _t in range(_L):")
    if matrix:
        w(f"            _x = rt.matvec(_Abar{at}, _x) + _Ebar{et}")
    else:
        w(f"            _x = _Abar{at} * _x + _Ebar{et}")
    w("            _xs[:, _t] = _x")
    if meta["scan"]["order"] == "global":
        w("        # a global scan: every token's output reads the state after the whole sequence")
        w("        _xs[:] = _x[:, None]")
    w(f"        {sname} = _xs  # [" + ", ".join(("B", "L") + sdims) + "]")
    if after:
        w("        # the readout, from the state after each token's update"
          + (f" (prev({sname}): the state before it)" if reads_prev_state(g) else ""))
        for n in after:
            w(f"        {pr.line(n)}")
    w(f"        return {pr.var(out_node)}, (_x, *tails)")
    return "\n".join(bind_dims(g, L)) + "\n"


def render(compiled) -> str:
    """Python source of a module holding one class per `ssm` block."""
    parts = [module_header(compiled, "numpy", "float64 reference")]
    for g in compiled.graphs:
        parts.append(render_class(g))
    return "\n\n\n".join(parts)
