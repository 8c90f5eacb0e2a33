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

from ... import __version__
from ...ir import functions as F
from ...ir import tables
from ...ir.graph import Graph
from ...ir.printer import dim_text

_UNARY = {
    "exp": "np.exp", "log": "np.log", "expm1": "np.expm1", "log1p": "np.log1p", "sqrt": "np.sqrt",
    "abs": "np.abs", "tanh": "np.tanh", "sigmoid": "rt.sigmoid", "relu": "rt.relu", "softplus": "rt.softplus",
    "inv_softplus": "rt.inv_softplus", "silu": "rt.silu", "re": "np.real", "im": "np.imag", "conj": "np.conj",
    "phi1": "rt.phi1", "expm": "rt.expm", "phi1m": "rt.phi1m",
}
_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}
_LEAVES = ("const", "dim", "param", "input", "state", "output", "recurrence")


def _tag(g: Graph, n: int) -> str:
    dims = list(g.fact(n, "dims"))
    if g.fact(n, "time") == "token":
        dims = ["B", "L"] + dims
    return "# [" + ", ".join(dims) + "]"


class _Printer:
    """Prints one node at a time as `name = expression`, tracking variable names."""

    def __init__(self, g: Graph):
        self.g = g
        self.num = {n: i for i, n in enumerate(g.topo())}
        self.names: dict[int, str] = {}
        decl_order = {name: i for i, (_, name, _) in enumerate(g.meta["decls"])}
        for name, n in sorted(g.meta["values"].items(), key=lambda kv: decl_order.get(kv[0], 0)):
            self.names.setdefault(n, name)
        self.convs = [n for n in g.topo() if g.op(n).kind == "conv"]

    def var(self, n: int) -> str:
        o = self.g.op(n)
        if o.kind == "const":
            return repr(o.get("value"))
        if o.kind == "dim":
            return o.get("name")
        if o.kind in ("param", "input", "state"):
            return o.get("name")
        if o.kind == "output":
            return self.var(self.g.operands(n)[0])
        return self.names.get(n) or f"_{self.num[n]}"

    def arg(self, n: int, target: tuple) -> str:
        """Operand n as an array whose named axes are exactly `target` (or broadcast to it)."""
        g = self.g
        dims = tuple(g.fact(n, "dims"))
        v = self.var(n)
        if dims == target:
            return v
        # Static values broadcast from the right; per-token ones lead with (batch, time).
        if g.fact(n, "time") != "token" and dims == target[len(target) - len(dims):]:
            return v
        return f"rt.align({v}, {dims!r}, {target!r})"

    def expr(self, n: int) -> str:
        g = self.g
        o = g.op(n)
        k = o.kind
        ins = g.operands(n)
        out = tuple(g.fact(n, "dims"))
        if k in _UNARY:
            return f"{_UNARY[k]}({self.var(ins[0])})"
        if k == "neg":
            return f"-{self.var(ins[0])}"
        if k in _BINARY:
            return f"{self.arg(ins[0], out)} {_BINARY[k]} {self.arg(ins[1], out)}"
        if k in ("sum", "mean"):
            src = tuple(g.fact(ins[0], "dims"))
            axes = tuple(src.index(d) - len(src) for d, _ in o.get("dims"))
            return f"np.{k}({self.var(ins[0])}, axis={axes!r})"
        if k == "arange":
            return f"np.arange({o.get('dim')[0]}, dtype=np.float64)"
        if k == "linear":
            src = tuple(g.fact(ins[0], "dims"))
            outs = "(" + "".join(f"{d}, " for d in out) + ")"
            bias = o.get("bias") or "None"
            return f"rt.linear({self.var(ins[0])}, {o.get('weight')}, {bias}, {len(src)}, {outs})"
        if k == "dplr":
            nd = out[-1]
            lead = out[:-2]
            lam, p, q = ins
            r = g.fact(p, "dims")[-1]
            rq = g.fact(q, "dims")[-1]
            return (f"rt.dplr({self.arg(lam, lead + (nd,))}, {self.arg(p, lead + (nd, r))}, "
                    f"{self.arg(q, lead + (nd, rq))})")
        if k == "eye":
            return f"np.eye({o.get('dim')})"
        if k == "solve":
            return f"rt.solve({self.arg(ins[0], out)}, {self.arg(ins[1], out)})"
        if k == "matvec":
            return f"rt.matvec({self.arg(ins[0], out[:-1] + (out[-1], out[-1]))}, {self.arg(ins[1], out)})"
        if k == "blockdiag":
            return f"rt.block_diagonal({self.var(ins[0])}, {o.get('blocks')})"
        if k == "family":
            return f"rt.init.{o.get('fn')}({o.get('dim')[0]})"
        if k == "random":
            p = g.op(g.meta["param_nodes"][o.get("param")])
            shape = "(" + "".join(f"{d}, " for d, _ in p.get("dims")) + ")"
            args = ", ".join(self.var(i) for i in ins)
            cplx = bool(p.get("complex"))
            extra = "" if o.get("dist") == "lru_ring" else f", complex={cplx}"
            return f"rt.init.{o.get('dist')}({shape}, {args}, generator=gen{extra})"
        raise AssertionError(f"numpy backend cannot print {k}")

    def line(self, n: int) -> str:
        g = self.g
        o = g.op(n)
        if o.kind == "conv":
            i = self.convs.index(n)
            (e,) = g.operands(n)
            bias = o.get("bias") or "None"
            return (f"{self.var(n)}, tails[{i}] = rt.causal_conv({self.var(e)}, {o.get('weight')}, {bias}, "
                    f"tails[{i}])  {_tag(g, n)}")
        return f"{self.var(n)} = {self.expr(n)}  {_tag(g, n)}"


def _dims_locals(g: Graph) -> str:
    names = [d for d, _, _ in g.meta["dims"]]
    return ", ".join(names) + (" = " if len(names) > 1 else ", = ") + ", ".join(f"d[{d!r}]" for d in names)


def _params_table(g: Graph) -> list[str]:
    return [f"({name!r}, {kind!r}, {info!r})," for name, kind, info in tables.parameters(g)]


def _param_names(g: Graph) -> list[str]:
    return [name for name, _, _ in tables.parameters(g)]


def render_class(g: Graph) -> str:
    meta = g.meta
    pr = _Printer(g)
    name = meta["name"]
    state = g.op(meta["state"])
    sname = state.get("name")
    sdims = tuple(meta["state_dims"])
    out_node = meta["output"]
    sysn = meta["system"]
    sys_op = g.op(sysn)
    abar, ebar = g.operands(sysn)
    structure = sys_op.get("structure")
    matrix = structure in F.MATRIX_STRUCTURES
    scan = {k: v for k, v in meta["scan"].items() if k != "span"}
    L = []
    w = L.append
    w(f"class {name}(rt.ReferenceModule):")
    w(f"    __doc__ = {meta['description']!r}" if meta["description"] else f"    __doc__ = {name!r}")
    w(f"    NAME = {name!r}")
    w(f"    DESCRIPTION = {meta['description']!r}")
    w(f"    SOURCE = {meta['source'].filename!r}")
    w("    # Each dim: its default, as an expression over earlier dims (data, never code).")
    w("    DIMS = (")
    for d, tree, _ in meta["dims"]:
        w(f"        ({d!r}, {tree!r}),  # {d} = {dim_text(tree)}")
    w("    )")
    inputs = tuple((g.op(i).get("name"), tuple(g.fact(i, "dims"))) for i in meta["inputs"])
    w(f"    INPUTS = {inputs!r}")
    w(f"    STATE = ({sname!r}, {sdims!r}, {bool(meta['state_complex'])!r})")
    w(f"    OUTPUT = ({g.op(out_node).get('name')!r}, {tuple(g.fact(out_node, 'dims'))!r})")
    w("    PARAMS = (")
    for row in _params_table(g):
        w("        " + row)
    w("    )")
    convs = tuple((g.op(n).get("weight"), tuple(g.fact(n, "dims")), g.op(n).get("width")[0]) for n in pr.convs)
    w(f"    CONVS = {convs!r}")
    w(f"    SCAN = {scan!r}")
    w(f"    ALGORITHM = {meta['algorithm']['name']!r}")
    # initializers
    init_roots = []
    for p in meta["params"]:
        o = g.op(p)
        (root,) = g.operands(p)
        sub = [n for n in g.topo() if n in g.ancestors(root) | {root}]
        w("")
        w(f"    def _init_{o.get('name')}(self, d, gen):")
        w(f"        {_dims_locals(g)}")
        for n in sub:
            if g.op(n).kind not in _LEAVES:
                w(f"        {pr.line(n)}")
        target = tuple(d for d, _ in o.get("dims"))
        w(f"        return {pr.arg(root, target) if g.fact(root, 'dims') else pr.var(root)}")
        init_roots.append(root)
    # the direction
    live = set()
    for k in (sysn, out_node):
        live |= g.ancestors(k)
    init_nodes = set()
    for p in meta["params"]:
        init_nodes |= g.ancestors(p)
    body = [n for n in g.topo() if n in live and n not in init_nodes and g.op(n).kind not in _LEAVES]
    after = [n for n in body if meta["state"] in g.ancestors(n)]
    before = [n for n in body if n not in after]
    static = [n for n in before if g.fact(n, "time") != "token"]
    token = [n for n in before if g.fact(n, "time") == "token"]
    w("")
    w("    def _direction(self, p, d, inputs, state):")
    w("        # One causal pass over the sequence (already reordered for this direction).")
    w(f"        {_dims_locals(g)}")
    for pname in _param_names(g):
        w(f"        {pname} = p[{pname!r}]")
    for iname, idims in inputs:
        w(f"        {iname} = inputs[{iname!r}]  # [" + ", ".join(("B", "L") + idims) + "]")
    first = inputs[0][0]
    w(f"        _B, _L = {first}.shape[0], {first}.shape[1]")
    dtype = "np.complex128" if meta["state_complex"] else "np.float64"
    shape = "(_B, " + "".join(f"{d}, " for d in sdims) + ")"
    w(f"        _x = state[0] if state is not None else np.zeros({shape}, dtype={dtype})")
    w(f"        tails = list(state[1:]) if state is not None else [None] * {len(pr.convs)}")
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
    w(f"        _xs = np.empty((_B, _L) + _x.shape[1:], dtype=np.result_type(_x, _Abar, _Ebar))")
    w("        for _t in range(_L):")
    if matrix:
        w(f"            _x = rt.matvec(_Abar{at}, _x) + _Ebar{et}")
    else:
        w(f"            _x = _Abar{at} * _x + _Ebar{et}")
    w("            _xs[:, _t] = _x")
    w(f"        {sname} = _xs  # [" + ", ".join(("B", "L") + sdims) + "]")
    if after:
        w("        # the readout, from the state after each token's update")
        for n in after:
            w(f"        {pr.line(n)}")
    w(f"        return {pr.var(out_node)}, (_x, *tails)")
    return "\n".join(L) + "\n"


def render(compiled) -> str:
    """Python source of a module holding one class per `ssm` block."""
    head = [
        f"# Generated by ssmc {__version__} from {compiled.source.filename!r} -- backend: numpy (float64 reference).",
        "# Regenerate with `ssmc compile SPEC --backend numpy -o FILE`; edits here are lost.",
        "import numpy as np",
        "import torch  # noqa: F401  (the classes are torch.nn.Modules)",
        "",
        "from ssmc import runtime as rt",
        "",
        f"__all__ = {[g.meta['name'] for g in compiled.graphs]!r}",
    ]
    parts = ["\n".join(head)]
    for g in compiled.graphs:
        parts.append(render_class(g))
    return "\n\n\n".join(parts)
