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
from ...ir.systems import is_multi
from ..codegen_common import BINARY, Printer, bind_dims, reads_prev_state, class_header, direction_prologue, init_methods, module_header, \
    multi_prologue, multi_schedule, split_body


class TorchPrinter(Printer):
    UNARY = {
        "exp": "torch.exp", "log": "torch.log", "expm1": "ops.expm1", "log1p": "torch.log1p", "sqrt": "torch.sqrt",
        "abs": "torch.abs", "tanh": "torch.tanh", "sigmoid": "ops.sigmoid", "relu": "ops.relu",
        "softplus": "ops.softplus", "inv_softplus": "ops.inv_softplus", "silu": "ops.silu", "re": "ops.real",
        "im": "ops.imag", "conj": "ops.conj", "phi1": "ops.phi1", "expm": "ops.expm", "phi1m": "ops.phi1m",
        "gelu": "ops.gelu", "gelu_tanh": "ops.gelu_tanh", "erf": "torch.erf",
    }
    SUM = "torch.{kind}({x}, dim={axes!r})"
    ARANGE = "torch.arange({dim}, dtype=_dt, device=_dev)"
    EYE = "torch.eye({dim}, dtype=_dt, device=_dev)"
    RT = "ops"

    def __init__(self, g: Graph):
        super().__init__(g)
        # The axis order each variable really has. Elementwise results take the state's
        # dim order (then any others), so state-sized tensors never need a transposed
        # copy before the scan; everything else keeps its dims' order.
        self.layout: dict[int, tuple] = {}
        # Operands renamed to views in their dims' order while one node is printed
        # (`_in_dims_order`), each with its variable before that renaming.
        self.unaligned: dict[int, str] = {}
        self.order = {d: i for i, d in enumerate(g.meta["state_dims"])}
        # A product read only by a sum over some of its dims is one contraction
        # (einsum): the product's full-size temporary is never made.
        self.fused: set[int] = set()
        sysn = g.meta["system"]
        for n in g.nodes():
            if g.op(n).kind != "sum":
                continue
            (m,) = g.operands(n)
            ops = g.operands(m) if g.op(m).kind == "mul" else ()
            if (ops and len(g.users(m)) == 1 and sysn not in [u for u, _ in g.users(m)]
                    and all(i not in self.numbers for i in ops)
                    and all(len(set(g.fact(i, "dims"))) == len(g.fact(i, "dims")) for i in ops)):
                self.fused.add(m)
        # A product read only by another product is folded into it, so the factors can be
        # multiplied small ones first: dt * (B * u) as (dt * u) * B saves a state-sized pass.
        # Only state-sized products fold (they live in the same region of the code).
        self.folded: set[int] = set()
        names = set(g.meta["values"].values())
        nstate = len(g.meta["state_dims"])
        for m in g.nodes():
            users = g.users(m)
            if (g.op(m).kind == "mul" and len(users) == 1 and g.op(users[0][0]).kind == "mul"
                    and m not in names and m not in self.fused and g.fact(m, "time") == "token"
                    # (a fused product's contraction reads its two operands as they are)
                    and users[0][0] not in self.fused
                    and len(g.fact(m, "dims")) >= nstate and len(set(g.fact(m, "dims"))) == len(g.fact(m, "dims"))):
                self.folded.add(m)

    def canonical(self, dims: tuple) -> tuple:
        known = sorted((d for d in dims if d in self.order), key=self.order.get)
        if len(set(dims)) != len(dims):
            return dims
        return tuple(known) + tuple(d for d in dims if d not in self.order)

    def lay(self, n: int) -> tuple:
        return self.layout.get(n, tuple(self.g.fact(n, "dims")))

    def tensor(self, n: int) -> str:
        # torch functions take tensors: a plain number (`sqrt(N)`, `exp(-1)`) becomes a 0-d one.
        if n in self.numbers and n not in self.renamed:
            return f"ops.as_tensor({self.var(n)}, _dt, _dev)"
        return self.var(n)

    def full(self, n: int, target: tuple) -> str:
        """Operand n as a tensor with exactly the named axes `target` (a static value
        over fewer dims, or a number, gets them as broadcast axes)."""
        if n in self.numbers:
            return f"ops.align({self.tensor(n)}, (), {target!r})"
        dims = self.lay(n)
        if dims == target or self.g.fact(n, "time") == "token":
            return self.arg(n, target)
        return f"{self.RT}.align({self.var(n)}, {dims!r}, {target!r})"

    def arg(self, n: int, target: tuple) -> str:
        dims = self.lay(n)
        # The variable in its layout `dims` (not a view `_in_dims_order` made in another order).
        v = self.unaligned.get(n) or self.var(n)
        if dims == target:
            return v
        if self.g.fact(n, "time") != "token" and dims == target[len(target) - len(dims):]:
            return v
        return f"{self.RT}.align({v}, {dims!r}, {target!r})"

    def expr(self, n: int) -> str:
        g = self.g
        k = g.op(n).kind
        ins = g.operands(n)
        dims = tuple(g.fact(n, "dims"))
        if k == "mul" and any(i in self.folded for i in ins):
            return self._product(n)
        if k in ("add", "sub", "mul", "div", "pow"):
            out = self.canonical(dims)
            self.layout[n] = out
            return f"{self.arg(ins[0], out)} {BINARY[k]} {self.arg(ins[1], out)}"
        if k in self.UNARY or k == "neg":
            self.layout[n] = self.lay(ins[0])
            return super().expr(n)
        if k in F.PAIRWISE or k in F.CLAMPS:
            # Like a binary operator, in the state's dim order; numbers as tensors (torch's
            # minimum and clamp take tensors).
            out = self.canonical(dims)
            self.layout[n] = out
            return self.bounded(k, [self.full(i, out) if i in self.numbers else self.arg(i, out) for i in ins])
        if k == "sum" and ins[0] in self.fused:
            a, b = g.operands(ins[0])
            la, lb = self.lay(a), self.lay(b)
            summed = [d for d, _ in g.op(n).get("dims")]
            out = tuple(d for d in self.canonical(tuple(g.fact(ins[0], "dims"))) if d not in summed)
            letters = {d: chr(ord("a") + i) for i, d in enumerate(dict.fromkeys(la + lb + out))}
            spec = "...{},...{}->...{}".format(*("".join(letters[d] for d in x) for x in (la, lb, out)))
            self.layout[n] = out
            return f"ops.contract({spec!r}, {self.var(a)}, {self.var(b)})"
        if k in ("sum", "mean"):
            src = self.lay(ins[0])
            axes = tuple(src.index(d) - len(src) for d, _ in g.op(n).get("dims"))
            self.layout[n] = tuple(d for d in src if d not in [x for x, _ in g.op(n).get("dims")])
            return self.SUM.format(kind=k, x=self.var(ins[0]), axes=axes)
        # Everything else reads its operands in their dims' order.
        return self._in_dims_order(n, lambda: super(TorchPrinter, self).expr(n))

    def _product(self, n: int) -> str:
        """A folded product tree, multiplied pairwise smallest union first."""
        g = self.g
        leaves, stack = [], [n]
        while stack:
            m = stack.pop()
            if m == n or m in self.folded:
                stack.extend(reversed(g.operands(m)))
            else:
                leaves.append(m)
        terms = [(self.var(m), self.lay(m), g.fact(m, "time") == "token") for m in leaves]
        while len(terms) > 1:
            best = min(((i, j) for i in range(len(terms)) for j in range(i + 1, len(terms))),
                       key=lambda ij: len(set(terms[ij[0]][1]) | set(terms[ij[1]][1])))
            (a, la, ta), (b, lb, tb) = terms[best[0]], terms[best[1]]
            out = self.canonical(tuple(dict.fromkeys(la + lb)))
            text = f"({self._aligned(a, la, ta, out)} * {self._aligned(b, lb, tb, out)})"
            terms = [t for k, t in enumerate(terms) if k not in best] + [(text, out, ta or tb)]
        text, lay, _ = terms[0]
        self.layout[n] = lay
        return text[1:-1] if text.startswith("(") and text.endswith(")") else text

    def _aligned(self, v: str, dims: tuple, token: bool, target: tuple) -> str:
        if dims == target or (not token and dims == target[len(target) - len(dims):]):
            return v
        return f"{self.RT}.align({v}, {dims!r}, {target!r})"

    def line(self, n: int) -> str:
        if n in self.fused or n in self.folded:
            return ""
        if self.g.op(n).kind in ("conv", "prev"):
            return self._in_dims_order(n, lambda: super(TorchPrinter, self).line(n))
        text = self.expr(n)
        dims = list(self.lay(n))
        if self.g.fact(n, "time") == "token":
            dims = ["B", "L"] + dims
        return f"{self.var(n)} = {text}  # [" + ", ".join(dims) + "]"

    def _in_dims_order(self, n: int, emit):
        g = self.g
        added = []
        for i in g.operands(n):
            dims = tuple(g.fact(i, "dims"))
            if self.lay(i) != dims and i not in self.renamed:
                self.unaligned[i] = self.var(i)
                self.renamed[i] = f"ops.align({self.var(i)}, {self.lay(i)!r}, {dims!r})"
                added.append(i)
        try:
            return emit()
        finally:
            for i in added:
                del self.renamed[i]
                del self.unaligned[i]


def render_class(g: Graph, fused_loop=None, ssd_fn: str = "ops.ssd_chunk", factors_fn: str = "ops.product") -> str:
    """The class for one block. `fused_loop(g, pr, needed, loop, exits)` may return lines that
    compute the loop's results some other way (a fused kernel); the chunk loop is then the
    `else:` branch (used where the fused path cannot run, e.g. when gradients are needed).
    `ssd_fn` names the function that runs the SSD form (same contract as ops.ssd_chunk),
    `factors_fn` the one that gives it the input term's factors (ops.product multiplies them)."""
    if is_multi(g):
        return render_multi(g, ssd_fn, factors_fn)
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
    # The SSD form reads its log-decay, which choose_algorithm may have added beside Abar.
    form = meta.get("ssd") or meta.get("delta")
    static, token, after = split_body(g, roots=(form["z"],) if form else ())
    pre, loop, exits, post = split_loop(g, pr, token + after)
    xdtype = "rt.torch_module.complex_of(_dt)" if meta["state_complex"] else "_dt"
    first = g.op(meta["inputs"][0]).get("name")
    L.extend(direction_prologue(g, pr, "torch.zeros({shape}, dtype=" + xdtype + ", device=_dev)",
                                (f"_dt, _dev = self._work_dtype({first}.dtype), {first}.device",)))
    if static:
        w("        # static values")
        for n in static:
            w(f"        {pr.line(n)}")
    if "lti_kernel" in meta:
        L.extend(_fft_branch(g, pr, abar, ebar, out_node))
    rule = sys_op.get("rule")
    ssd = meta.get("ssd")
    delta = meta.get("delta")
    state_node = meta["state"]
    # What reads the state, found once (the ancestors of every node are quadratic in long chains).
    reads_state = g.descendants(state_node)
    feeds = set()
    if ssd:
        feeds = {ssd["z"], ssd["c"], *ssd["xside"], *ssd["bside"]}
    elif delta:
        feeds = {delta["z"], delta["p"], delta["q"], delta["c"], *delta["xside"], *delta["kside"]}
    if form:
        # The SSD and delta-rule forms compute the readout's sum(C * x, N) themselves; the
        # discretized Abar and Ebar (for the delta rule, the per-token N x N matrices), the
        # product C * x and the per-token states are never made.
        ssd = form
        wanted = set(feeds)
        for f in feeds:
            wanted |= g.ancestors(f)
        skip = {ssd["product"], ssd["readout"]}
        after_state = {n for n in loop if n in reads_state and n not in skip}
        for n in list(after_state):
            wanted |= g.ancestors(n)
        loop = [n for n in loop if (n in wanted or n in after_state) and n not in skip]
        useful = set(feeds) | set(loop) | set(post) | {out_node}
        for n in list(useful):
            useful |= g.ancestors(n)
        pre = [n for n in pre if n in useful]
    if pre:
        w("        # per-token values over the whole sequence")
        for n in pre:
            w(f"        {pr.line(n)}")
    if delta:
        w(f"        # the recurrence ({(rule + ', ') if rule else ''}{structure}) in the chunked delta-rule form, "
          "a chunk of tokens at a time")
    elif ssd:
        w(f"        # the recurrence ({(rule + ', ') if rule else ''}{structure}) in the SSD form, a chunk of tokens at a time")
    else:
        w(f"        # the recurrence ({(rule + ', ') if rule else ''}{structure}) and everything of the state's size,")
        w("        # a chunk of tokens at a time")
    for n in exits:
        w(f"        _e{pr.num[n]} = []")
    chunk = "self._ssd_chunk(_L)" if ssd else "self._chunk(_B, _L, self.state_numel())"
    # Per-token values made before the loop and read inside it: this chunk's slice.
    inside = set(loop) | ({ssd["readout"]} if ssd else set())
    reads = {i for n in loop for i in g.operands(n)}
    reads |= (feeds if ssd
              else {ebar} | ({abar} if g.fact(abar, "time") == "token" else set()))
    needed = sorted({i for i in reads if i not in inside and g.fact(i, "time") == "token"
                     and g.op(i).kind != "state"}, key=pr.num.get)
    loop_start = len(L)
    w(f"        for _s in ops.chunks(_L, {chunk}):")
    for n in needed:
        name = f"_c_{pr.var(n)}"
        w(f"            {name} = {pr.var(n)}[:, _s]")
        pr.renamed[n] = name
    if matrix:
        atarget = sdims[:-1] + (sdims[-1], sdims[-1])
    else:
        atarget = sdims
    glob = meta["scan"]["order"] == "global"
    if glob:
        # The state's pass makes only what the update reads (the readout's values come later).
        feeds = g.ancestors(abar) | g.ancestors(ebar) | {abar, ebar}
        first_pass = [n for n in loop if n not in reads_state and n in feeds]
    else:
        first_pass = [n for n in loop if n not in reads_state]
    for n in first_pass:
        w(f"            {_chunk_line(pr, n)}")
    if delta:
        def factors(nodes):
            return _factors(pr, nodes)
        sign = "-" if delta["sign"] < 0 else ""
        w(f"            _X, _xd = ops.product({factors(delta['xside'])})")
        w(f"            _K, _kd = ops.product({factors(delta['kside'])})")
        y = delta["readout"]
        yd = pr.canonical(tuple(g.fact(y, "dims")))
        pr.layout[y] = yd
        z = delta["z"]
        zv = pr.tensor(z)
        args = ", ".join(f"{pr.tensor(n)}, {pr.lay(n)!r}" for n in (delta["p"], delta["q"]))
        w(f"            {pr.var(y)}, _x = ops.delta_chunk({zv}, {pr.lay(z)!r}, {args}, {sign}_X, _xd, _K, _kd, "
          f"{pr.tensor(delta['c'])}, {pr.lay(delta['c'])!r}, _x, {sdims!r}, {delta['rank']!r}, {yd!r}, "
          f"self.delta_block)  # [B, T, " + ", ".join(yd) + "]")
    elif ssd:
        def factors(nodes):
            return _factors(pr, nodes)
        sign = "-" if ssd["sign"] < 0 else ""
        w(f"            _X, _xd = {factors_fn}({factors(ssd['xside'])})")
        w(f"            _Bf, _bd = ops.product({factors(ssd['bside'])})")
        y = ssd["readout"]
        yd = pr.canonical(tuple(g.fact(y, "dims")))
        pr.layout[y] = yd
        z, c = ssd["z"], ssd["c"]
        zv = _ssd_decay(g, pr, z)
        w(f"            {pr.var(y)}, _x = {ssd_fn}({zv}, {pr.lay(z)!r}, {sign}_X, _xd, _Bf, _bd, "
          f"{pr.tensor(c)}, {pr.lay(c)!r}, _x, {sdims!r}, {yd!r}, self.ssd_block)  # [B, T, " + ", ".join(yd) + "]")
    elif glob and g.op(abar).kind == "const" and g.op(abar).get("value") == 1:
        # A global scan whose transition is the identity (VSSD): x_L is x_0 plus the sum
        # of the input terms, a chunk's sum at a time; no per-token states are made.
        w(f"            _x = _x + {pr.arg(ebar, sdims)}.sum(1)  # x_L = x_0 + sum_t Ebar_t: [B, "
          + ", ".join(sdims) + "]")
    else:
        a_tok = g.fact(abar, "time") == "token"
        w(f"            _Abar = {pr.tensor(abar) if abar in pr.numbers else pr.arg(abar, atarget)}  # ["
          + ", ".join((("B", "T") if a_tok else ()) + atarget) + "]")
        w(f"            _Ebar = {pr.arg(ebar, sdims)}  # [" + ", ".join(("B", "T") + sdims) + "]")
        scan = "matrix_scan" if matrix else "diag_scan"
        if reads_prev_state(g):
            w(f"            _x0 = _x  # the state entering the chunk, for prev({sname})")
        w(f"            {sname} = ops.{scan}(_Abar, _Ebar, _x)  # [" + ", ".join(("B", "T") + sdims) + "]")
        w(f"            _x = {sname}[:, -1]")
    if glob:
        # A global scan: the state's pass may run in a fused kernel (it hands over x_L alone).
        pr.renamed.clear()
        fused = fused_loop(g, pr, needed, first_pass, []) if fused_loop else None
        if fused:
            body = ["    " + line if line.strip() else line for line in L[loop_start:]]
            L[loop_start:] = ["        if self._fused_ready():", *fused, "        else:", *body]
        # Then the readout, a chunk at a time, from the state after the whole sequence
        # (x_L, a broadcast view: no per-token copies of it).
        w("        # every token's output reads the state after the whole sequence, x_L")
        w(f"        for _s in ops.chunks(_L, {chunk}):")
        for n in needed:
            name = f"_c_{pr.var(n)}"
            w(f"            {name} = {pr.var(n)}[:, _s]")
            pr.renamed[n] = name
        readout = [n for n in loop if n in reads_state]
        # The readout's per-token inputs, and every per-token value the loop hands out
        # (a skip `D * u` that a later value reads), are made again in this pass.
        handed = {n for n in exits if n not in reads_state}
        wanted = set(handed)
        for n in readout + sorted(handed, key=pr.num.get):
            wanted |= g.ancestors(n)
        for n in loop:
            if n not in reads_state and n in wanted:
                w(f"            {_chunk_line(pr, n)}")
        w(f"            {sname} = _x[:, None].expand((_x.shape[0], _s.stop - _s.start) + tuple(_x.shape[1:]))"
          "  # [" + ", ".join(("B", "T") + sdims) + "]")
    for n in [n for n in loop if n in reads_state]:
        w(f"            {_chunk_line(pr, n)}")
    for n in exits:
        w(f"            _e{pr.num[n]}.append({pr.var(n)})")
    pr.renamed.clear()
    # The fused alternative is generated after the loop, so it knows every layout the loop chose.
    fused = fused_loop(g, pr, needed, loop, exits) if fused_loop and not ssd and not glob else None
    if fused:
        body = ["    " + line if line.strip() else line for line in L[loop_start:]]
        L[loop_start:] = ["        if self._fused_ready():", *fused, "        else:", *body]
    for n in exits:
        # Tagged with the layout the loop gave it (the state's dims order), not its dims' order.
        w(f"        {pr.var(n)} = ops.cat_time(_e{pr.num[n]})  # [" + ", ".join(("B", "L") + pr.lay(n)) + "]")
    if post:
        w("        # per-token values after the scan, over the whole sequence")
        for n in post:
            w(f"        {pr.line(n)}")
    # The output in its declared dims' order (the loop may have laid it out in the state's).
    w(f"        return {pr.arg(g.operands(out_node)[0], tuple(g.fact(out_node, 'dims')))}, (_x, *tails)")
    return "\n".join(line for line in bind_dims(g, L) if line == "" or line.strip()) + "\n"


def render_multi(g: Graph, ssd_fn: str = "ops.ssd_chunk", factors_fn: str = "ops.product") -> str:
    """A block with several states. Values are computed over the whole sequence; each system
    runs after the values and states it reads, with its own algorithm: the SSD form (which
    gives its readout sum(C * x, N) directly, never the per-token states) or a chunked scan
    (whose per-token states the readout then reads); then the readout. The LTI convolution
    form is not used here (each system scans)."""
    meta = g.meta
    pr = TorchPrinter(g)
    systems = meta["systems"]
    ssds = {i: s["ssd"] for i, s in enumerate(systems) if s.get("ssd")}
    # The SSD form computes the product C * x and its sum itself, from its factors.
    skip = set()
    for f in ssds.values():
        skip |= {f["product"], f["readout"]}
    schedule = multi_schedule(g, {i: {f["z"], f["c"], *f["xside"], *f["bside"]} for i, f in ssds.items()}, skip)
    L = class_header(g, "rt.TorchModule")
    w = L.append
    L.extend(init_methods(g))
    first = g.op(meta["inputs"][0]).get("name")
    def zeros(shape, cplx):
        return f"torch.zeros({shape}, dtype={'rt.torch_module.complex_of(_dt)' if cplx else '_dt'}, device=_dev)"
    L.extend(multi_prologue(g, pr, zeros, (f"_dt, _dev = self._work_dtype({first}.dtype), {first}.device",)))
    for kind, item in schedule:
        if kind == "node":
            line = pr.line(item)
            if line:
                w(f"        {line}")
            continue
        i = item
        system = systems[i]
        sname = g.op(system["state"]).get("name")
        sdims = tuple(system["state_dims"])
        sysn = system["system"]
        abar, ebar = g.operands(sysn)
        structure = g.op(sysn).get("structure")
        x = f"_x{i}"
        f = ssds.get(i)
        if f:
            w(f"        # the recurrence of {sname} ({structure}) in the SSD form, a chunk of tokens at a time")
            y = f["readout"]
            yd = pr.canonical(tuple(g.fact(y, "dims")))
            w(f"        _ys = []")
            w(f"        for _s in ops.chunks(_L, self._ssd_chunk(_L)):")
            sliced = {}
            for n in sorted({f["z"], f["c"], *f["xside"], *f["bside"]}, key=pr.num.get):
                if g.fact(n, "time") == "token" and n not in pr.numbers:
                    sliced[n] = f"{pr.var(n)}[:, _s]"
            pr.renamed.update(sliced)

            def factors(nodes):
                return _factors(pr, nodes)
            sign = "-" if f["sign"] < 0 else ""
            w(f"            _X, _xd = {factors_fn}({factors(f['xside'])})")
            w(f"            _Bf, _bd = ops.product({factors(f['bside'])})")
            z, c = f["z"], f["c"]
            zv = _ssd_decay(g, pr, z)
            w(f"            _y, {x} = {ssd_fn}({zv}, {pr.lay(z)!r}, {sign}_X, _xd, _Bf, _bd, "
              f"{pr.tensor(c)}, {pr.lay(c)!r}, {x}, {sdims!r}, {yd!r}, self.ssd_block)")
            w("            _ys.append(_y)")
            for n in sliced:
                del pr.renamed[n]
            pr.layout[y] = yd
            w(f"        {pr.var(y)} = ops.cat_time(_ys)  # [" + ", ".join(("B", "L") + yd) + "]")
            continue
        matrix = structure in F.MATRIX_STRUCTURES
        atarget = sdims[:-1] + (sdims[-1], sdims[-1]) if matrix else sdims
        a_tok = g.fact(abar, "time") == "token"
        w(f"        # the recurrence of {sname} ({structure}), a chunk of tokens at a time")
        w(f"        _Abar = {pr.tensor(abar) if abar in pr.numbers else pr.full(abar, atarget) if not a_tok else pr.arg(abar, atarget)}  # ["
          + ", ".join((("B", "L") if a_tok else ()) + atarget) + "]")
        w(f"        _Ebar = {pr.arg(ebar, sdims)}  # [" + ", ".join(("B", "L") + sdims) + "]")
        numel = " * ".join(sdims)
        w(f"        _xs = []")
        w(f"        for _s in ops.chunks(_L, self._chunk(_B, _L, {numel})):")
        scan = "matrix_scan" if matrix else "diag_scan"
        at = "_Abar[:, _s]" if a_tok else "_Abar"
        w(f"            _xs.append(ops.{scan}({at}, _Ebar[:, _s], {x}))")
        w(f"            {x} = _xs[-1][:, -1]")
        w(f"        {sname} = ops.cat_time(_xs) if _xs else _Ebar[:, :0] + {x}[:, None]  # ["
          + ", ".join(("B", "L") + sdims) + "]")
        pr.layout[system["state"]] = sdims
    out = meta["output"]
    finals = ", ".join(f"_x{i}" for i in range(len(systems)))
    w(f"        return {pr.arg(g.operands(out)[0], tuple(g.fact(out, 'dims')))}, ({finals}, *tails)")
    return "\n".join(line for line in bind_dims(g, L) if line == "" or line.strip()) + "\n"


def _fft_branch(g: Graph, pr: TorchPrinter, abar: int, ebar: int, out_node: int) -> list[str]:
    """The LTI convolution form: y = K * u + readout(0, u), the kernel from unit inputs and states."""
    meta = g.meta
    form = meta["lti_kernel"]
    sdims = tuple(meta["state_dims"])
    y = g.operands(out_node)[0]
    u = meta["inputs"][0]
    uname = g.op(u).get("name")
    sname = g.op(meta["state"]).get("name")

    def token_nodes(root):
        sub = g.ancestors(root) | {root}
        return [n for n in g.topo() if n in sub and g.fact(n, "time") == "token"
                and g.op(n).kind not in ("input", "state", "output")]

    L = []
    w = L.append
    w("        if self._use_fft(state, need_final, _L):")
    w("            # LTI: y = K * u + readout(x = 0, u), the kernel K computed once (ops.lti_kernel)")
    w(f"            def _ebar({uname}):")
    for n in token_nodes(ebar):
        w(f"                {pr.line(n)}")
    w(f"                return {pr.arg(ebar, sdims)}")
    w(f"            def _readout({sname}, {uname}):")
    for n in token_nodes(y):
        w(f"                {pr.line(n)}")
    w(f"                return {pr.arg(y, tuple(form['Y']))}")
    atarget = sdims + (sdims[-1],) if form.get("matrix") else sdims
    # The kernel reads Abar over all the state's dims (a constant A gives a number).
    w(f"            _Abar = {pr.full(abar, atarget)}  # [" + ", ".join(atarget) + "]")
    args = f"d, {form['S']!r}, {form['U']!r}, {form['Y']!r}, {form['P']!r}"
    cplx = bool(meta["state_complex"])
    matrix = ", matrix=True" if form.get("matrix") else ""
    w(f"            _K = self._kernel(_L, _dt, lambda: ops.lti_kernel(_Abar, _ebar, _readout, {args}, _L, {cplx}, "
      f"_dt, _dev{matrix}, vandermonde=self._vandermonde))")
    zeros = "torch.zeros((1, 1) + _x.shape[1:], dtype=_x.dtype, device=_dev)"
    w(f"            return ops.fft_conv(_K, {uname}, d, {form['U']!r}, {form['Y']!r}, {form['P']!r}) "
      f"+ _readout({zeros}, {uname}), None")
    return L


def _factors(pr: TorchPrinter, nodes) -> str:
    """The factors handed to ops.product as `[(tensor, layout), ...]`: the SSD and
    delta-rule forms read tensors, so a factor that is a number (`C = N ** -0.5`) becomes one."""
    return "[" + ", ".join(f"({pr.tensor(n)}, {pr.lay(n)!r})" for n in nodes) + "]"


def _ssd_decay(g: Graph, pr: TorchPrinter, z: int) -> str:
    """The SSD form's log-decay as a tensor. One of numbers alone (`recurrence x = g x + ...`
    with g = 0.9) is a Python number; it becomes a tensor made in float64, so that it is not
    rounded before the cast to the working dtype."""
    if all(g.op(n).kind in ("const", "dim", "neg", "add", "sub", "mul", "div", "pow")
           for n in g.ancestors(z) | {z}):
        return f"torch.tensor({pr.var(z)}, dtype=torch.float64, device=_dev).to(_dt)"
    return pr.var(z)


def _chunk_line(pr: TorchPrinter, n: int) -> str:
    return pr.line(n).replace("# [B, L", "# [B, T")


def split_loop(g: Graph, pr: TorchPrinter, token: list[int]):
    """Split per-token computations around the chunk loop: (before, in the loop, the loop's
    results used after it, after).

    Values with at least as many dims as the state ("state-sized") live only inside the
    loop, one chunk at a time, as does anything computed from them, until a value
    leaves the loop: one that a `linear`/`conv`/`prev` (better over the whole sequence: one
    large matmul instead of many small ones) or the output reads.
    """
    meta = g.meta
    nstate = len(meta["state_dims"])
    whole = set()
    for c in pr.convs:
        whole |= {c} | g.ancestors(c)
    # A `linear` that does not read the state runs over the whole sequence before the
    # loop, so whatever it reads must be made before the loop too (even if state-sized).
    for n in token:
        if g.op(n).kind == "linear":
            anc = g.ancestors(n)
            if meta["state"] not in anc:
                whole |= anc
    sysn = meta["system"]
    loop: list[int] = []
    inside: set[int] = set()
    # Values made after the loop from its results (a linear of a state-sized value, and
    # whatever reads one): nothing in the loop may read them, however large it is.
    later: set[int] = set()
    for n in token:
        k = g.op(n).kind
        if k in ("linear", "conv", "prev") or n in whole or any(i in later for i in g.operands(n)):
            if meta["state"] in g.ancestors(n):
                later.add(n)
            continue
        big = len(g.fact(n, "dims")) >= nstate
        from_loop = any(i in inside or g.op(i).kind == "state" for i in g.operands(n))
        if big or from_loop:
            loop.append(n)
            inside.add(n)
    exits = [n for n in loop
             if n == g.operands(meta["output"])[0]
             or any(u not in inside and u != sysn and g.op(u).kind != "output" for u, _ in g.users(n))]
    # An output that is the bare state (`output y = x`) reads the per-token states, which
    # the loop makes one chunk at a time: they leave it as a loop result too.
    # So does a value made after the loop from the state itself (`output y = linear(x, H)`
    # taken by the scan: a nonlinear readout, or a sequence too short for the FFT form):
    # without it, it would read only the last chunk's states.
    if g.operands(meta["output"])[0] == meta["state"] \
            or any(meta["state"] in g.operands(n) for n in later):
        exits.append(meta["state"])
    pre = [n for n in token if n not in inside and not (g.ancestors(n) & (inside | {meta["state"]}))]
    post = [n for n in token if n not in inside and n not in pre]
    return pre, loop, exits, post


def render(compiled) -> str:
    """Python source of a module holding one class per `ssm` block."""
    parts = [module_header(compiled, "torch", "differentiable PyTorch",
                           ("from ssmc.runtime import torch_ops as ops",))]
    for g in compiled.graphs:
        parts.append(render_class(g))
    return "\n\n\n".join(parts)
