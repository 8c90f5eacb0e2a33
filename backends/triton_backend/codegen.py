"""IR -> Triton: the recurrence and the values of the state's size fused into one kernel.

The module is the PyTorch backend's (per-token values that are not state-sized, such
as projections and convs, run in torch before), plus, per block, one generated
`@triton.jit` kernel that replaces the chunk loop: each program owns one batch element
and a [BLOCK_P, BLOCK_N] tile of the state (the state's leading dims flattened into rows,
its last dim as columns) and walks the sequence with the state in registers, computing
the discretization, the update, the readout and whatever else the loop computed, from
expressions printed off the IR. No per-step state is written to memory.

Scope today (others fall back to the PyTorch backend with a notice, or are an error
with strict=True): diagonal and scalar state matrices (scalar systems in the scan
form, not yet SSD), real states, the elementwise functions below, reductions over the
state's last dim. Forward only: where gradients are needed the module runs its
PyTorch path. Everything else of the module (scan orders, chaining, cu_seqlens) is
shared with the PyTorch backend.
"""
from __future__ import annotations

from ...errors import SsmcError
from ...ir.graph import Graph
from ..codegen_common import module_header
from ..torch_backend.codegen import TorchPrinter, render_class

_UNARY = {
    "exp": "tl.exp({0})", "log": "tl.log({0})", "sqrt": "tl.sqrt({0})", "abs": "tl.abs({0})",
    "neg": "-({0})", "sigmoid": "1.0 / (1.0 + tl.exp(-({0})))", "silu": "({0}) / (1.0 + tl.exp(-({0})))",
    "relu": "tl.maximum({0}, 0.0)", "re": "{0}", "conj": "{0}",
    "softplus": "tl.where({0} > 20.0, {0}, tl.log(1.0 + tl.exp({0})))",
    # (exp(z) - 1) / z with its series where z is small (Triton has no expm1).
    "phi1": "tl.where(tl.abs({0}) < 1e-4, 1.0 + ({0}) * (0.5 + ({0}) / 6.0), (tl.exp({0}) - 1.0) / ({0}))",
}
_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


class Unsupported(SsmcError):
    """The spec uses something the Triton backend does not generate yet."""


def _plan(g: Graph, loop: list[int]):
    """Check the loop can be one kernel; return (state dims, row dims, column dim)."""
    meta = g.meta
    sysn = meta["system"]
    structure = g.op(sysn).get("structure")
    if structure not in ("diagonal", "scalar"):
        raise Unsupported(f"a {structure} state matrix")
    if meta["state_complex"]:
        raise Unsupported("a complex state (complex values as pairs of real registers are not generated yet)")
    sdims = tuple(meta["state_dims"])
    for n in loop:
        o = g.op(n)
        if g.fact(n, "complex"):
            raise Unsupported(f"a complex value ({o.kind})")
        if o.kind not in _UNARY and o.kind not in _BINARY and o.kind not in ("sum", "mean", "pow"):
            raise Unsupported(f"{o.kind}() inside the recurrence")
        if o.kind in ("sum", "mean") and [d for d, _ in o.get("dims")] != [sdims[-1]]:
            raise Unsupported(f"{o.kind}() over dims other than the state's last")
        if not set(g.fact(n, "dims")) <= set(sdims):
            raise Unsupported("a value inside the recurrence with dims outside the state's")
    return sdims, sdims[:-1], sdims[-1]


def supports(compiled) -> tuple[bool, str]:
    """Whether every block can be generated; otherwise why not."""
    from ..torch_backend.codegen import split_loop
    from ..codegen_common import split_body
    for g in compiled.graphs:
        if "ssd" in g.meta:
            return False, f"{g.meta['name']}: the SSD kernel family (scalar A) is not generated yet"
        pr = TorchPrinter(g)
        static, token, after = split_body(g)
        _, loop, exits, _ = split_loop(g, pr, token + after)
        try:
            sdims, rows, col = _plan(g, loop)
        except Unsupported as e:
            return False, f"{g.meta['name']}: {e}"
        for n in exits:
            if not set(rows) <= set(g.fact(n, "dims")):
                return False, f"{g.meta['name']}: a loop result without all the state's leading dims"
    return True, ""


class _Kernel:
    """Builds the kernel text for one block."""

    def __init__(self, g: Graph, pr: TorchPrinter, needed, loop, exits):
        self.g, self.pr = g, pr
        self.sdims, self.rows, self.col = _plan(g, loop)
        self.needed, self.loop, self.exits = needed, loop, exits
        self.name = f"_{g.meta['name']}_loop"
        self.tile: dict[int, str] = {}
        # Static tensors the loop reads (params and values computed once in torch).
        reads = {i for n in loop for i in g.operands(n)} | set(g.operands(g.meta["system"]))
        self.statics = sorted({i for i in reads
                               if g.fact(i, "time") != "token" and g.op(i).kind not in ("const", "dim")},
                              key=pr.num.get)

    def index(self, dims: tuple) -> str:
        """Offset of a tile over `dims` in a contiguous tensor laid out in that order."""
        if not dims:
            return "0"
        terms = []
        for k, d in enumerate(dims):
            stride = " * ".join(f"s_{e}" for e in dims[k + 1:])
            terms.append(f"i_{d}" + (f" * {stride}" if stride else ""))
        return " + ".join(terms)

    def mask(self, dims: tuple) -> str:
        parts = []
        if set(dims) & set(self.rows):
            parts.append("m_rows")
        if self.col in dims:
            parts.append("m_cols")
        return " & ".join(parts) or "True"

    def numel(self, dims: tuple) -> str:
        return " * ".join(f"s_{d}" for d in dims) or "1"

    def expr(self, n: int) -> str:
        g = self.g
        o = g.op(n)
        ins = [self.ref(i) for i in g.operands(n)]
        if o.kind in _UNARY:
            return _UNARY[o.kind].format(ins[0])
        if o.kind in _BINARY:
            return f"{ins[0]} {_BINARY[o.kind]} {ins[1]}"
        if o.kind == "pow":
            (_, e) = g.operands(n)
            if g.op(e).kind == "const" and g.op(e).get("value") == 2:
                return f"{ins[0]} * {ins[0]}"
            return f"tl.exp({ins[1]} * tl.log({ins[0]}))"
        total = f"tl.sum({ins[0]}, axis=1)[:, None]"
        return total if o.kind == "sum" else f"{total} / s_{self.col}"

    def ref(self, n: int) -> str:
        o = self.g.op(n)
        if o.kind == "const":
            return repr(float(o.get("value")))
        if o.kind == "dim":
            return f"s_{o.get('name')}"
        return self.tile[n]

    def source(self) -> tuple[list[str], list[str]]:
        """(kernel lines at module level, launch lines inside _direction)."""
        g, pr = self.g, self.pr
        meta = g.meta
        state = meta["state"]
        abar, ebar = g.operands(meta["system"])
        sizes = sorted({d for n in self.needed + self.statics + self.exits + self.loop for d in pr.lay(n)}
                       | set(self.sdims))
        ins = [f"in{k}" for k in range(len(self.needed))]
        sts = [f"st{k}" for k in range(len(self.statics))]
        outs = [f"out{k}" for k in range(len(self.exits))]
        K = []
        k = K.append
        k("@triton.jit")
        k(f"def {self.name}(")
        k("    x0, xf,  # the state entering and leaving: [B, " + ", ".join(self.sdims) + "]")
        for name, n in zip(ins, self.needed):
            k(f"    {name},  # {pr.var(n)}: [B, L, " + ", ".join(pr.lay(n)) + "]")
        for name, n in zip(sts, self.statics):
            k(f"    {name},  # {pr.var(n)}: [" + ", ".join(pr.lay(n)) + "]")
        for name, n in zip(outs, self.exits):
            k(f"    {name},  # {pr.var(n)}: [B, L, " + ", ".join(pr.lay(n)) + "]")
        k("    L, " + ", ".join(f"s_{d}" for d in sizes) + ",")
        k("    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,")
        k("):")
        k("    b = tl.program_id(0)")
        k("    rows = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)[:, None]  # the state's leading dims, flat")
        k(f"    i_{self.col} = tl.arange(0, BLOCK_N)[None, :]")
        k(f"    m_rows = rows < {self.numel(self.rows)}")
        k(f"    m_cols = i_{self.col} < s_{self.col}")
        for j, d in enumerate(self.rows):
            inner = " * ".join(f"s_{e}" for e in self.rows[j + 1:])
            k(f"    i_{d} = " + (f"(rows // ({inner})) % s_{d}" if inner else f"rows % s_{d}"))
        both = self.mask(self.sdims)
        k(f"    x = tl.load(x0 + b * {self.numel(self.sdims)} + {self.index(self.sdims)}, mask={both}, other=0.0)")
        for name, n in zip(sts, self.statics):
            self.tile[n] = f"{name}_v"
            lay = pr.lay(n)
            k(f"    {name}_v = tl.load({name} + {self.index(lay)}, mask={self.mask(lay)}, other=0.0)")
        k("    for t in range(L):")
        for name, n in zip(ins, self.needed):
            lay = pr.lay(n)
            self.tile[n] = f"{name}_t"
            k(f"        {name}_t = tl.load({name} + (b * L + t) * {self.numel(lay)} + {self.index(lay)}, "
              f"mask={self.mask(lay)}, other=0.0)")
        before = [n for n in self.loop if state not in g.ancestors(n)]
        after = [n for n in self.loop if state in g.ancestors(n)]
        for n in before:
            self.tile[n] = f"v{pr.num[n]}"
            k(f"        v{pr.num[n]} = {self.expr(n)}  # {pr.var(n)} [" + ", ".join(g.fact(n, 'dims')) + "]")
        k(f"        x = {self.ref(abar)} * x + {self.ref(ebar)}  # the update, in registers")
        self.tile[state] = "x"
        for n in after:
            self.tile[n] = f"v{pr.num[n]}"
            k(f"        v{pr.num[n]} = {self.expr(n)}  # {pr.var(n)} [" + ", ".join(g.fact(n, 'dims')) + "]")
        for name, n in zip(outs, self.exits):
            lay = pr.lay(n)
            k(f"        tl.store({name} + (b * L + t) * {self.numel(lay)} + {self.index(lay)}, {self.tile[n]}, "
              f"mask={self.mask(lay)})")
        k(f"    tl.store(xf + b * {self.numel(self.sdims)} + {self.index(self.sdims)}, x, mask={both})")
        # The launch, inside _direction.
        H = []
        h = H.append
        h("            # the recurrence fused into one Triton kernel, the state in registers")
        for n in self.exits:
            shape = "(_B, _L, " + "".join(f"{d}, " for d in pr.lay(n)) + ")"
            h(f"            _e{pr.num[n]} = [torch.empty({shape}, dtype=_dt, device=_dev)]")
        h("            _xf = torch.empty_like(_x)")
        rows = " * ".join(self.rows) or "1"
        tensors = ["_x", "_xf"] + [pr.var(n) for n in self.needed] \
            + [f"ops.as_tensor({pr.var(n)}, _dt, _dev)" for n in self.statics] + [f"_e{pr.num[n]}[0]" for n in self.exits]
        h(f"            self._launch({self.name}, _B, {rows}, {self.col}, [{', '.join(tensors)}], "
          f"[_L, {', '.join(sizes)}])")
        h("            _x = _xf")
        return K, H


def render(compiled) -> str:
    """Python source: the PyTorch module, plus a fused Triton kernel per block."""
    ok, why = supports(compiled)
    if not ok:
        raise Unsupported(f"the Triton backend cannot generate {why}")
    kernels: list[str] = []

    def fused(g, pr, needed, loop, exits):
        kern, launch = _Kernel(g, pr, needed, loop, exits).source()
        kernels.append("\n".join(kern))
        return launch

    classes = [render_class(g, fused_loop=fused).replace("(rt.TorchModule):", "(rt.triton_module.TritonModule):", 1)
               for g in compiled.graphs]
    head = module_header(compiled, "triton", "fused Triton kernels; PyTorch for gradients",
                         ("from ssmc.runtime import torch_ops as ops", "import ssmc.runtime.triton_module",
                          "import triton", "import triton.language as tl"))
    return "\n\n\n".join([head, *kernels, *classes])
