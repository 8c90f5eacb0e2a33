"""IR -> PyTorch source: differentiable modules for CPU and GPU.

Same shape as the NumPy reference (tables, `_init_<param>`, `_direction`), but values
are torch tensors in autograd, and the recurrence runs a chunk of tokens at a time:
everything with the state's size (the discretized Abar and Ebar, the states, the
readout) exists for one chunk only, never for the whole sequence. Values that feed a
`conv` (which needs the whole sequence and its tail) are computed before the loop;
per-token values used inside the loop are sliced.

Inside a chunk the recurrence is a scan whose backward is a reverse scan
(`ops.diag_scan` for diagonal and scalar structures, `ops.matrix_scan` for dense,
DPLR and block-diagonal).
"""
from __future__ import annotations

from ...ir import functions as F
from ...ir.graph import Graph
from ..codegen_common import Printer, class_header, dims_locals, init_methods, module_header, param_names, \
    split_body, tag


class TorchPrinter(Printer):
    UNARY = {
        "exp": "torch.exp", "log": "torch.log", "expm1": "ops.expm1", "log1p": "torch.log1p", "sqrt": "torch.sqrt",
        "abs": "torch.abs", "tanh": "torch.tanh", "sigmoid": "ops.sigmoid", "relu": "ops.relu",
        "softplus": "ops.softplus", "inv_softplus": "ops.inv_softplus", "silu": "ops.silu", "re": "ops.real",
        "im": "ops.imag", "conj": "ops.conj", "phi1": "ops.phi1", "expm": "ops.expm", "phi1m": "ops.phi1m",
    }
    SUM = "torch.{kind}({x}, dim={axes!r})"
    ARANGE = "torch.arange({dim}, dtype=_dt, device=_dev)"
    EYE = "torch.eye({dim}, dtype=_dt, device=_dev)"
    RT = "ops"


def render_class(g: Graph) -> str:
    meta = g.meta
    pr = TorchPrinter(g)
    sname = g.op(meta["state"]).get("name")
    sdims = tuple(meta["state_dims"])
    out_node = meta["output"]
    sysn = meta["system"]
    sys_op = g.op(sysn)
    abar, ebar = g.operands(sysn)
    structure = sys_op.get("structure")
    matrix = structure in F.MATRIX_STRUCTURES
    L = class_header(g, "rt.TorchModule")
    w = L.append
    L.extend(init_methods(g))
    static, token, after = split_body(g)
    # Per-token values feeding a conv need the whole sequence: compute them first.
    whole = set()
    for c in pr.convs:
        whole |= {c} | {n for n in g.ancestors(c) if g.fact(n, "time") == "token"}
    before_loop = [n for n in token if n in whole]
    in_loop = [n for n in token if n not in whole] + after
    inputs = tuple((g.op(i).get("name"), tuple(g.fact(i, "dims"))) for i in meta["inputs"])
    w("")
    w("    def _direction(self, p, d, inputs, state):")
    w("        # One causal pass over the sequence (already reordered for this direction).")
    w(f"        {dims_locals(g)}")
    for pname in param_names(g):
        w(f"        {pname} = p[{pname!r}]")
    for iname, idims in inputs:
        w(f"        {iname} = inputs[{iname!r}]  # [" + ", ".join(("B", "L") + idims) + "]")
    first = inputs[0][0]
    w(f"        _B, _L = {first}.shape[0], {first}.shape[1]")
    w(f"        _dt, _dev = {first}.dtype, {first}.device")
    xdtype = "rt.torch_module.complex_of(_dt)" if meta["state_complex"] else "_dt"
    shape = "(_B, " + "".join(f"{d}, " for d in sdims) + ")"
    w(f"        _x = state[0] if state is not None else torch.zeros({shape}, dtype={xdtype}, device=_dev)")
    w(f"        tails = list(state[1:]) if state is not None else [None] * {len(pr.convs)}")
    if static:
        w("        # static values")
        for n in static:
            w(f"        {pr.line(n)}")
    if before_loop:
        w("        # per-token values over the whole sequence (they feed a causal conv)")
        for n in before_loop:
            w(f"        {pr.line(n)}")
    rule = sys_op.get("rule")
    w(f"        # the recurrence ({(rule + ', ') if rule else ''}{structure}) and everything of the state's size,")
    w("        # a chunk of tokens at a time")
    w("        _ys = []")
    w(f"        for _s in ops.chunks(_L, self._chunk(_B, _L, self.state_numel())):")
    # Per-token values made outside the loop and read inside it: this chunk's slice.
    outside_token = set(before_loop) | set(meta["inputs"])
    needed = sorted({i for n in in_loop + [abar, ebar] for i in g.operands(n) if i in outside_token}
                    | ({abar} & outside_token) | ({ebar} & outside_token), key=pr.num.get)
    for n in needed:
        name = f"_c_{pr.var(n)}"
        w(f"            {name} = {pr.var(n)}[:, _s]")
        pr.renamed[n] = name
    loop_before = [n for n in in_loop if n not in after]
    for n in loop_before:
        w(f"            {pr.line(n).replace('# [B, L', '# [B, T')}")
    if matrix:
        atarget = sdims[:-1] + (sdims[-1], sdims[-1])
    else:
        atarget = sdims
    a_tok = g.fact(abar, "time") == "token"
    w(f"            _Abar = {pr.arg(abar, atarget)}  # [" + ", ".join((("B", "T") if a_tok else ()) + atarget) + "]")
    w(f"            _Ebar = {pr.arg(ebar, sdims)}  # [" + ", ".join(("B", "T") + sdims) + "]")
    if matrix:
        w(f"            {sname} = ops.matrix_scan(_Abar, _Ebar, _x)  # [" + ", ".join(("B", "T") + sdims) + "]")
    else:
        w(f"            {sname} = ops.diag_scan(_Abar, _Ebar, _x)  # [" + ", ".join(("B", "T") + sdims) + "]")
    w(f"            _x = {sname}[:, -1]")
    for n in after:
        w(f"            {pr.line(n).replace('# [B, L', '# [B, T')}")
    w(f"            _ys.append({pr.var(out_node)})")
    w(f"        return torch.cat(_ys, dim=1), (_x, *tails)")
    return "\n".join(L) + "\n"


def render(compiled) -> str:
    """Python source of a module holding one class per `ssm` block."""
    parts = [module_header(compiled, "torch", "differentiable PyTorch",
                           ("from ssmc.runtime import torch_ops as ops",))]
    for g in compiled.graphs:
        parts.append(render_class(g))
    return "\n\n\n".join(parts)
