"""What every Python-emitting backend shares: a table-driven expression printer, the
class header (tables of dims, inputs, state, params, scan), the initializer methods,
and the split of the graph into static values, per-token values and the readout.

A backend subclasses `Printer` and fills its tables (`UNARY`, `CALLS`); what differs
beyond that (the recurrence) it writes itself.
"""
from __future__ import annotations

from .. import __version__
from ..ir import functions as F
from ..ir import tables
from ..ir.graph import Graph
from ..ir.printer import dim_text
from ..ir.systems import is_multi, order, state_nodes, system_nodes
from ..passes.shapes import dplr_parts

BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}
# Nodes that are names, not computations.
LEAVES = ("const", "dim", "param", "input", "state", "output", "recurrence")


def python_numbers(g: Graph) -> set[int]:
    """Nodes that are plain Python numbers at run time: numbers and dims combined by
    arithmetic alone (`N ** -0.5`, `1 / H`). A function of one (`sqrt(N)`) needs a
    tensor in torch, so a backend wraps them where a tensor is expected."""
    out: set[int] = set()
    for n in g.topo():
        k = g.op(n).kind
        if k in ("const", "dim") or ((k == "neg" or k in BINARY) and all(i in out for i in g.operands(n))):
            out.add(n)
    return out


def tag(g: Graph, n: int) -> str:
    dims = list(g.fact(n, "dims"))
    if g.fact(n, "time") == "token":
        dims = ["B", "L"] + dims
    return "# [" + ", ".join(dims) + "]"


class Printer:
    """Prints one node at a time as `name = expression`, tracking variable names.

    Subclasses give `UNARY` (kind -> function name) and `CALLS` (kind -> format with
    {0}, {1}, ... for operands and {attr} for attributes); `expr` handles the rest.
    """

    UNARY: dict[str, str] = {}
    SUM = "np.{kind}({x}, axis={axes!r})"
    ARANGE = "np.arange({dim}, dtype=np.float64)"
    EYE = "np.eye({dim})"
    RT = "rt"

    def __init__(self, g: Graph):
        self.g = g
        self.num = {n: i for i, n in enumerate(g.topo())}
        self.names: dict[int, str] = {}
        decl_order = {name: i for i, (_, name, _) in enumerate(g.meta["decls"])}
        for name, n in sorted(g.meta["values"].items(), key=lambda kv: decl_order.get(kv[0], 0)):
            self.names.setdefault(n, name)
        # What carries a tail in the state: conv calls and shifts (prev of a per-token value).
        self.convs = [n for n in g.topo() if g.op(n).kind in ("conv", "prev")]
        # Variables renamed in some region of the generated code (e.g. a chunk's slice).
        self.renamed: dict[int, str] = {}
        self.numbers = python_numbers(g)

    def tensor(self, n: int) -> str:
        """Operand n where an array function reads it (a backend may wrap plain numbers)."""
        return self.var(n)

    def var(self, n: int) -> str:
        if n in self.renamed:
            return self.renamed[n]
        o = self.g.op(n)
        if o.kind == "const":
            return repr(o.get("value"))
        if o.kind in ("dim", "param", "input", "state"):
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
        return f"{self.RT}.align({v}, {dims!r}, {target!r})"

    def expr(self, n: int) -> str:
        g = self.g
        o = g.op(n)
        k = o.kind
        ins = g.operands(n)
        out = tuple(g.fact(n, "dims"))
        rt = self.RT
        if k in self.UNARY:
            return f"{self.UNARY[k]}({self.tensor(ins[0])})"
        if k == "neg":
            return f"-{self.var(ins[0])}"
        if k in BINARY:
            return f"{self.arg(ins[0], out)} {BINARY[k]} {self.arg(ins[1], out)}"
        if k in F.PAIRWISE or k in F.CLAMPS:
            return self.bounded(k, [self.arg(i, out) for i in ins])
        if k in ("sum", "mean"):
            src = tuple(g.fact(ins[0], "dims"))
            axes = tuple(src.index(d) - len(src) for d, _ in o.get("dims"))
            return self.SUM.format(kind=k, x=self.var(ins[0]), axes=axes)
        if k == "arange":
            return self.ARANGE.format(dim=o.get("dim")[0])
        if k == "linear":
            src = tuple(g.fact(ins[0], "dims"))
            outs = "(" + "".join(f"{d}, " for d in out) + ")"
            bias = o.get("bias") or "None"
            return f"{rt}.linear({self.var(ins[0])}, {o.get('weight')}, {bias}, {len(src)}, {outs})"
        if k == "dplr":
            nd = out[-1]
            lead = out[:-2]
            lam, p, q = ins
            _, vector, rank = dplr_parts(g, g.fact(lam, "dims"), g.fact(p, "dims"), g.fact(q, "dims"), n)
            pq = lead + (nd, rank) if rank else lead + (nd,)
            # A scalar Lambda (no N) is Lambda times the identity; rank-one P, Q have no rank dim.
            extra = ("" if vector else ", diagonal=False") + ("" if rank else ", rank_one=True")
            return (f"{rt}.dplr({self.arg(lam, lead + (nd,) if vector else lead)}, {self.arg(p, pq)}, "
                    f"{self.arg(q, pq)}, {nd}{extra})")
        if k == "prev_state":
            # The state before each token's update: the entering state `_x0`, then the states.
            return f"{rt}.prev_state({self.var(ins[0])}, _x0)"
        if k == "eye":
            return self.EYE.format(dim=o.get("dim"))
        if k == "solve":
            return f"{rt}.solve({self.arg(ins[0], out)}, {self.arg(ins[1], out)})"
        if k == "matvec":
            return f"{rt}.matvec({self.arg(ins[0], out[:-1] + (out[-1], out[-1]))}, {self.arg(ins[1], out)})"
        if k == "blockdiag":
            return f"{rt}.block_diagonal({self.var(ins[0])}, {o.get('blocks')})"
        if k == "family":
            return f"rt.init.{o.get('fn')}({o.get('dim')[0]})"
        if k == "random":
            p = g.op(g.meta["param_nodes"][o.get("param")])
            shape = "(" + "".join(f"{d}, " for d, _ in p.get("dims")) + ")"
            args = ", ".join(self.var(i) for i in ins)
            cplx = bool(p.get("complex"))
            extra = "" if o.get("dist") == "lru_ring" else f", complex={cplx}"
            return f"rt.init.{o.get('dist')}({shape}, {args}, generator=gen{extra})"
        raise AssertionError(f"{type(self).__name__} cannot print {k}")

    def bounded(self, k: str, args: list[str]) -> str:
        """min/max/clamp of operands already printed in the result's dims."""
        if k in F.PAIRWISE:
            return f"{self.RT}.{'minimum' if k == 'min' else 'maximum'}({args[0]}, {args[1]})"
        names = {"min": "lo", "max": "hi"}
        bounds = ", ".join(f"{names[w]}={a}" for w, a in zip(F.CLAMPS[k], args[1:]))
        return f"{self.RT}.clamp({args[0]}, {bounds})"

    def line(self, n: int) -> str:
        g = self.g
        o = g.op(n)
        if o.kind == "conv":
            i = self.convs.index(n)
            (e,) = g.operands(n)
            bias = o.get("bias") or "None"
            return (f"{self.var(n)}, tails[{i}] = {self.RT}.causal_conv({self.var(e)}, {o.get('weight')}, {bias}, "
                    f"tails[{i}])  {tag(g, n)}")
        if o.kind == "prev":
            i = self.convs.index(n)
            (e,) = g.operands(n)
            return (f"{self.var(n)}, tails[{i}] = {self.RT}.shift({self.var(e)}, {o.get('shift')}, tails[{i}])  "
                    f"{tag(g, n)}")
        return f"{self.var(n)} = {self.expr(n)}  {tag(g, n)}"


class NumpyPrinter(Printer):
    """Initializers always run in float64 NumPy, whatever the backend."""

    UNARY = {
        "exp": "np.exp", "log": "np.log", "expm1": "np.expm1", "log1p": "np.log1p", "sqrt": "np.sqrt",
        "abs": "np.abs", "tanh": "np.tanh", "sigmoid": "rt.sigmoid", "relu": "rt.relu", "softplus": "rt.softplus",
        "inv_softplus": "rt.inv_softplus", "silu": "rt.silu", "re": "np.real", "im": "np.imag", "conj": "np.conj",
        "phi1": "rt.phi1", "expm": "rt.expm", "phi1m": "rt.phi1m", "gelu": "rt.gelu", "gelu_tanh": "rt.gelu_tanh",
        "erf": "rt.erf",
    }


_DIMS_MARK = "    __DIMS__"


def dims_locals(g: Graph) -> str:
    """A placeholder line: `bind_dims` replaces it with the dims the function really uses."""
    return _DIMS_MARK.strip()


def bind_dims(g: Graph, lines: list[str]) -> list[str]:
    """Replace each function's dims placeholder by `H, N = d['H'], d['N']` for the dims its
    body names (outside string literals), so generated code binds nothing it does not use."""
    import re
    names = [d for d, _, _ in g.meta["dims"]]
    out = list(lines)
    for i, line in enumerate(out):
        if line.strip() != _DIMS_MARK.strip():
            continue
        indent = line[: len(line) - len(line.lstrip())]
        body = []
        for later in out[i + 1:]:
            if later.startswith("    def ") or (later and not later.startswith(" ")):
                break
            body.append(re.sub(r"'[^']*'|\"[^\"]*\"", "", later.split("#", 1)[0]))
        text = "\n".join(body)
        used = [d for d in names if re.search(rf"\b{re.escape(d)}\b", text)]
        out[i] = (indent + ", ".join(used) + " = " + ", ".join(f"d[{d!r}]" for d in used)) if used else ""
    return [line for k, line in enumerate(out) if line != "" or lines[k] == ""]


def param_names(g: Graph) -> list[str]:
    return [name for name, _, _ in tables.parameters(g)]


def module_header(compiled, backend: str, what: str, extra_imports: tuple[str, ...] = ()) -> str:
    head = [
        f"# Generated by ssmc {__version__} from {compiled.source.filename!r} -- backend: {backend} ({what}).",
        f"# Regenerate with `ssmc compile SPEC --backend {backend} -o FILE`; edits here are lost.",
        "import numpy as np",
        "import torch  # noqa: F401  (the classes are torch.nn.Modules)",
        "",
        "from ssmc import runtime as rt",
        *extra_imports,
        "",
        f"__all__ = {[g.meta['name'] for g in compiled.graphs]!r}",
    ]
    return "\n".join(head)


def class_header(g: Graph, base: str) -> list[str]:
    """The class line and its tables (data, never code from the spec)."""
    meta = g.meta
    name = meta["name"]
    out_node = meta["output"]
    state = g.op(meta["state"])
    scan = {k: v for k, v in meta["scan"].items() if k != "span"}
    L = [f"class {name}({base}):"]
    w = L.append
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
    cplx_inputs = tuple(g.op(i).get("name") for i in meta["inputs"] if g.op(i).get("complex"))
    if cplx_inputs:
        w(f"    COMPLEX_INPUTS = {cplx_inputs!r}  # complex64 / complex128 tensors")
    w(f"    STATE = ({state.get('name')!r}, {tuple(meta['state_dims'])!r}, {bool(meta['state_complex'])!r})")
    w(f"    OUTPUT = ({g.op(out_node).get('name')!r}, {tuple(g.fact(out_node, 'dims'))!r})")
    w("    PARAMS = (")
    for pname, kind, info in tables.parameters(g):
        w(f"        ({pname!r}, {kind!r}, {info!r}),")
    w("    )")
    # The tails the state carries, in call order: (name, channel dims, K) with K - 1 values kept
    # (a conv of width K; prev(e, k) keeps k, as a conv of width k + 1 would), and True after
    # them for the tail of a complex value.
    def tail(n):
        o = g.op(n)
        if o.kind == "conv":
            return (o.get("weight"), tuple(g.fact(n, "dims")), o.get("width")[0])
        return (o.get("tail"), tuple(g.fact(n, "dims")), o.get("shift") + 1) + ((True,) if g.fact(n, "complex") else ())
    convs = tuple(tail(n) for n in g.topo() if g.op(n).kind in ("conv", "prev"))
    w(f"    CONVS = {convs!r}")
    if reads_prev_state(g):
        w("    READS_PREV_STATE = True  # the readout reads prev(x), the state before each update")
    if is_multi(g):
        # Several states: the carried state is a tuple of them, in declaration order.
        states = tuple((g.op(s["state"]).get("name"), tuple(s["state_dims"]), bool(s["state_complex"]))
                       for s in meta["systems"])
        w(f"    STATES = {states!r}")
    blocks = tuple((s["state_dims"][-1], g.op(s["system"]).get("blocks"))
                   for s in (meta["systems"] if is_multi(g) else (meta,))
                   if g.op(s["system"]).get("structure") == "block_diagonal")
    if blocks:
        # (dim, block count: a number or a dim): checked when the dims are given at construction.
        w(f"    BLOCKS = {blocks!r}")
    w(f"    SCAN = {scan!r}")
    w(f"    ALGORITHM = {meta['algorithm']['name']!r}")
    return L


def reads_prev_state(g: Graph) -> bool:
    return any(g.op(n).kind == "prev_state" for n in g.nodes())


def init_methods(g: Graph) -> list[str]:
    """`_init_<param>(d, gen)`: each param's initializer, in float64 NumPy."""
    pr = NumpyPrinter(g)
    L = []
    w = L.append
    # Each initializer's nodes in graph order, sorted by their place in it (not found by a
    # walk over the whole graph per param: quadratic with many params).
    order = {n: i for i, n in enumerate(g.topo())}
    for p in g.meta["params"]:
        o = g.op(p)
        (root,) = g.operands(p)
        sub = sorted(g.ancestors(root) | {root}, key=order.__getitem__)
        w("")
        w(f"    def _init_{o.get('name')}(self, d, gen):")
        w(f"        {dims_locals(g)}")
        for n in sub:
            if g.op(n).kind not in LEAVES:
                w(f"        {pr.line(n)}")
        target = tuple(d for d, _ in o.get("dims"))
        w(f"        return {pr.arg(root, target) if g.fact(root, 'dims') else pr.var(root)}")
    return L


def split_body(g: Graph, roots: tuple = ()) -> tuple[list[int], list[int], list[int]]:
    """The direction's computations: (static, per-token before the scan, after the scan);
    `roots` are further values a backend reads besides the system and the output."""
    meta = g.meta
    # What the system and the output read, not looking into the params' initializers
    # (those run once, in `_init_<param>`): a node both read is computed in both places.
    live: set[int] = set(roots)
    stack = [meta["system"], meta["output"], *roots, *system_nodes(g)]
    while stack:
        for i in g.operands(stack.pop()):
            if i not in live:
                live.add(i)
                if g.op(i).kind != "param":
                    stack.append(i)
    body = [n for n in g.topo() if n in live and g.op(n).kind not in LEAVES]
    # What reads the state, found once (not the ancestors of every node: quadratic in long chains).
    reads_state = g.descendants(meta["state"])
    after = [n for n in body if n in reads_state]
    before = [n for n in body if n not in reads_state]
    static = [n for n in before if g.fact(n, "time") != "token"]
    token = [n for n in before if g.fact(n, "time") == "token"]
    return static, token, after


def direction_prologue(g: Graph, pr: Printer, zeros: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The start of `_direction`: dims, params and inputs as locals, the entering state.

    `zeros` formats the zero state from `{shape}` and `{complex}` (whether the state is
    complex); `extra` lines follow the batch and length.
    """
    meta = g.meta
    sdims = tuple(meta["state_dims"])
    inputs = tuple((g.op(i).get("name"), tuple(g.fact(i, "dims"))) for i in meta["inputs"])
    L = ["", "    def _direction(self, p, d, inputs, state, need_final=True):",
         "        # One causal pass over the sequence (already reordered for this direction).",
         f"        {dims_locals(g)}"]
    L += [f"        {name} = p[{name!r}]" for name in param_names(g)]
    L += [f"        {name} = inputs[{name!r}]  # [" + ", ".join(("B", "L") + dims) + "]" for name, dims in inputs]
    first = inputs[0][0]
    L.append(f"        _B, _L = {first}.shape[0], {first}.shape[1]")
    L += [f"        {line}" for line in extra]
    shape = "(_B, " + "".join(f"{d}, " for d in sdims) + ")"
    L.append("        _x = state[0] if state is not None else "
             + zeros.format(shape=shape, complex=bool(meta["state_complex"])))
    L.append(f"        tails = list(state[1:]) if state is not None else [None] * {len(pr.convs)}")
    return L


def multi_prologue(g: Graph, pr: Printer, zeros, extra: tuple[str, ...] = ()) -> list[str]:
    """`direction_prologue` for a block with several states: `_x0, _x1, ...` are the entering
    states (declaration order), `tails` the conv and prev tails after them. `zeros(shape,
    complex)` is the text of a zero state of that shape."""
    L = direction_prologue(g, pr, "{shape}", extra)
    k = len(g.meta["systems"])
    L = L[:-2]
    for i, s in enumerate(g.meta["systems"]):
        shape = "(_B, " + "".join(f"{d}, " for d in s["state_dims"]) + ")"
        L.append(f"        _x{i} = state[{i}] if state is not None else " + zeros(shape, bool(s["state_complex"])))
    L.append(f"        tails = list(state[{k}:]) if state is not None else [None] * {len(pr.convs)}")
    return L


def multi_schedule(g: Graph, reads: dict | None = None, skip=frozenset()) -> list:
    """A block with several states, in the order it is computed: items ("node", n) (a value)
    and ("system", i) (the whole scan of system i), each system after the values and the
    states it reads, the rest (the readout) last. `reads[i]` replaces what system i reads
    (its transition, step and input term) where a backend computes it otherwise (the SSD
    form reads its factors); nodes in `skip` are computed by a system itself."""
    meta = g.meta
    reads = reads or {}
    needs = {}
    for i, system in enumerate(meta["systems"]):
        needs[i] = set(reads[i]) if i in reads else set(g.operands(system["system"]))
    live: set[int] = set()
    stack = [meta["output"]] + [n for need in needs.values() for n in need]
    live |= set(stack)
    while stack:
        n = stack.pop()
        if n in skip or g.op(n).kind == "param":
            continue
        for i in g.operands(n):
            if i not in live:
                live.add(i)
                stack.append(i)
    body = [n for n in g.topo() if n in live and n not in skip and g.op(n).kind not in LEAVES]
    done: set[int] = set()
    out: list = []
    for i in order(g):
        need = set()
        for n in needs[i]:
            need |= g.ancestors(n) | {n}
        for n in body:
            if n in need and n not in done:
                out.append(("node", n))
                done.add(n)
        out.append(("system", i))
    out += [("node", n) for n in body if n not in done]
    return out
