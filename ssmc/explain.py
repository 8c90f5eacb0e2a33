"""Human-readable views of an analysed graph: the `ssmc check` summary and the
`ssmc explain` equations."""
from __future__ import annotations

import math

from .ir import functions as F
from .ir import tables
from .ir.graph import Graph
from .ir.printer import dim_text
from .ir.systems import is_multi, order, view

_PREC = {"add": 1, "sub": 1, "mul": 2, "div": 2, "matvec": 2, "neg": 3, "pow": 4}
_SYM = {"add": " + ", "sub": " - ", "mul": " * ", "div": " / ", "pow": "**", "matvec": " @ "}


class _Infix:
    """IR -> infix text; named values print by name, per-token ones with a _t subscript."""

    def __init__(self, g: Graph, inline_names: bool = False):
        self.g = g
        self.names = {}
        for name, n in g.meta.get("values", {}).items():
            self.names.setdefault(n, name)
        self.inline_names = inline_names
        self.state = g.meta["state"]

    def sub(self, n: int) -> str:
        return "_t" if self.g.fact(n, "time") == "token" else ""

    def __call__(self, n: int, top: bool = False) -> str:
        return self.text(n, top)[0]

    def text(self, n: int, top: bool = False) -> tuple[str, int]:
        g, o = self.g, self.g.op(n)
        k = o.kind
        if not top and n in self.names and not self.inline_names:
            return self.names[n] + self.sub(n), 9
        if k == "const":
            v = o.get("value")
            if isinstance(v, complex):
                return (f"{v.imag:g}j" if v.real == 0 else repr(v)), 9
            return (f"{v:g}" if isinstance(v, float) else str(v)), 9
        if k in ("param", "dim"):
            return o.get("name"), 9
        if k == "input":
            return o.get("name") + "_t", 9
        if k == "state":
            return o.get("name") + "_t", 9
        ins = g.operands(n)
        if k in _SYM:
            p = _PREC[k]
            a, pa = self.text(ins[0])
            b, pb = self.text(ins[1])
            if pa < p:
                a = f"({a})"
            if pb < p or (pb == p and k in ("sub", "div")) or (k == "pow" and pb <= p):
                b = f"({b})"
            return a + _SYM[k] + b, p
        if k == "neg":
            a, pa = self.text(ins[0])
            return "-" + (f"({a})" if pa < 3 else a), 3
        if k in ("sum", "mean"):
            dims = ", ".join(d for d, _ in o.get("dims"))
            return f"{k}({self(ins[0])}, {dims})", 9
        if k == "linear":
            return f"{o.get('weight')}({self(ins[0])})", 9
        if k == "conv":
            return f"{o.get('weight')}*conv({self(ins[0])})", 9
        if k == "prev":
            # A name k tokens back reads as x_(t-k); a longer expression as prev(...).
            e = ins[0]
            name = g.op(e).get("name") if g.op(e).kind == "input" else (
                None if self.inline_names else self.names.get(e))
            if name is not None:
                return f"{name}_(t-{o.get('shift')})", 9
            return f"prev({self(e)}" + (f", {o.get('shift')})" if o.get("shift") != 1 else ")"), 9
        if k == "prev_state":
            return f"{g.op(ins[0]).get('name')}_(t-1)", 9
        if k == "arange":
            return f"arange({o.get('dim')[0]})", 9
        if k == "eye":
            return "I", 9
        if k == "solve":
            if g.op(ins[1]).kind == "eye":
                return f"({self(ins[0])})^-1", 9
            return f"({self(ins[0])})^-1 ({self(ins[1])})", 9
        if k == "blockdiag":
            return f"blockdiag({self(ins[0])}, {o.get('blocks')})", 9
        if k in ("family",):
            return f"{o.get('fn')}({o.get('dim')[0]})", 9
        args = ", ".join(self(i) for i in ins)
        return f"{k}({args})", 9


def _time_word(g: Graph, n: int) -> str:
    return "per-token" if g.fact(n, "time") == "token" else "static"


def summary(g: Graph) -> str:
    """One screen: dims, inputs, state, parameters with shapes and counts, class, algorithm."""
    if is_multi(g):
        # One state, system and algorithm line per state.
        parts = [_summary_one(view(g, i)).split("\n") for i in range(len(g.meta["systems"]))]
        out = []
        for k, line in enumerate(parts[0]):
            if line.startswith(("  state:", "  system:", "  algorithm:")):
                for i, p in enumerate(parts):
                    text = p[k]
                    if not line.startswith("  state:"):
                        sname = g.op(g.meta["systems"][i]["state"]).get("name")
                        text = text.replace(":", f" ({sname}):", 1)
                    out.append(text)
            else:
                out.append(line)
        return "\n".join(out)
    return _summary_one(g)


def _summary_one(g: Graph) -> str:
    meta = g.meta
    dims = tables.dim_values(g)
    out = [f"ssm {meta['name']}" + (f" -- {meta['description']}" if meta["description"] else "")]
    out.append("  dims:   " + ", ".join(
        f"{d} = {v}" + (f" ({dim_text(t)})" if t[0] != "num" else "") for d, t, v in meta["dims"]))
    ins = [f"{g.op(i).get('name')}[{', '.join(g.fact(i, 'dims'))}]" for i in meta["inputs"]]
    out.append("  inputs: " + ", ".join(ins) + "   (the first is primary)")
    st = g.op(meta["state"])
    out.append(f"  state:  {st.get('name')}[{', '.join(meta['state_dims'])}]"
               + (" complex" if meta["state_complex"] else " real"))
    out.append(f"  output: {g.op(meta['output']).get('name')}[{', '.join(g.fact(meta['output'], 'dims'))}]")
    copies = tables.directions(g)
    rows = []
    total = 0
    for name, kind, info in tables.parameters(g):
        shape = tables.param_shape(kind, info, dims)
        if copies > 1 and tables.is_separate(g, info):
            shape = (copies,) + shape
        count = math.prod(shape) * (2 if info.get("complex") else 1)
        total += count if not info.get("frozen") else 0
        flags = []
        if info.get("complex"):
            flags.append("complex")
        if info.get("frozen"):
            flags.append("frozen (buffer)")
        if kind != "param":
            flags.append(kind.replace("_", " "))
        if "separate" in info:
            flags.append("separate (one copy per direction)" if info["separate"] else "shared by the directions")
        rows.append((name, "(" + ", ".join(map(str, shape)) + ")", f"{count:,}", ", ".join(flags)))
    out.append("  parameters:" + (f"  (one copy per direction: {copies})" if copies > 1 else ""))
    w0 = max([len(r[0]) for r in rows] + [4])
    w1 = max([len(r[1]) for r in rows] + [5])
    w2 = max([len(r[2]) for r in rows] + [5])
    for r in rows:
        out.append(f"    {r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:>{w2}}  {r[3]}".rstrip())
    out.append(f"    {'total trainable':<{w0 + w1 + 2}}  {total:>{w2},}  (real numbers; complex counts twice)")
    cls = meta["classification"]
    per_token = [k for k in ("A", "step", "input_coef", "forcing", "readout") if cls.get(k) == "token"]
    words = {"A": "state matrix", "step": "step", "input_coef": "input coefficient", "forcing": "forcing term",
             "readout": "readout"}
    system = "LTI" if cls["lti"] else "selective (per-token: " + (", ".join(words[k] for k in per_token)
                                                               or "nonlinear readout") + ")"
    sysop = g.op(meta["system"])
    rule = sysop.get("rule")
    out.append(f"  system: {system}; structure {sysop.get('structure')}"
               + (f", discretized by {rule}" if rule else ", given as a discrete recurrence"))
    sc = meta["scan"]
    extra = ", ".join(f"{k} = {sc[k]}" for k in ("rows", "cols", "merge", "params") if sc.get(k)) \
        if len(sc["directions"]) > 1 else ""
    out.append(f"  scan:   {sc['order']}" + (f"({extra})" if extra else ""))
    out.append(f"  algorithm: {meta['algorithm']['name']}")
    return "\n".join(out)


_RULE_WORDS = {
    "zoh": "zero-order hold: Abar = exp(step A), Ebar = A^-1 (exp(step A) - I) E",
    "bilinear": "bilinear (Tustin): Abar = (I - step/2 A)^-1 (I + step/2 A), Ebar = (I - step/2 A)^-1 step E",
    "euler": "forward Euler: Abar = I + step A, Ebar = step E",
    "backward_euler": "backward Euler: Abar = (I - step A)^-1, Ebar = (I - step A)^-1 step E",
    "zoh_euler": "ZOH on A, Euler on the input (Mamba): Abar = exp(step A), Ebar = step E",
}


def explain(g: Graph) -> str:
    """The derived discrete-time equations, each value static or per-token, and the algorithm's reason."""
    if not is_multi(g):
        return _explain_one(g)
    # Several states: the values and the output once; each state's equations and its
    # classification and algorithm (one line per state), in the order the scans run.
    parts = {i: _explain_one(view(g, i)).split("\n") for i in order(g)}
    first = parts[order(g)[0]]

    def cut(lines, start, stop):
        a = next(k for k, line in enumerate(lines) if line.startswith(start))
        b = next(k for k, line in enumerate(lines) if (line.startswith(stop) if stop else line == "") and k > a)
        return lines[a:b]
    out = first[:first.index("")+1] + cut(first, "values", "") + [""]
    names = {i: g.op(g.meta["systems"][i]["state"]).get("name") for i in parts}
    out.append(f"states: {', '.join(names[i] for i in range(len(names)))} (scanned in the order "
               f"{', '.join(names[i] for i in order(g))}; the carried state is a tuple in declaration order)")
    for i, lines in parts.items():
        k = next(j for j, line in enumerate(lines) if line.startswith(("continuous time", "discrete time")))
        m = next(j for j, line in enumerate(lines) if line.startswith("output (from"))
        reads = [names[j] for j in (g.meta.get("reads") or [[]] * len(names))[i]]
        out.append(f"state {names[i]}" + (f" (reads {', '.join(reads)} after its update):" if reads else ":"))
        out += ["  " + line for line in lines[k:m]]
    m = next(j for j, line in enumerate(first) if line.startswith("output (from"))
    sc = next(j for j, line in enumerate(first) if line.startswith("scan:"))
    out += first[m:sc + 1]
    for i, lines in parts.items():
        sysl = next(j for j, line in enumerate(lines) if line.startswith("system:"))
        alg = next(j for j, line in enumerate(lines) if line.startswith("algorithm:"))
        out.append(f"{names[i]}: {lines[sysl]}")
        out += ["  " + line for line in lines[sysl + 1:alg]]
    for i, lines in parts.items():
        alg = next(j for j, line in enumerate(lines) if line.startswith("algorithm:"))
        out.append(f"algorithm ({names[i]}): {lines[alg][len('algorithm: '):]}")
    out.append("  (the NumPy reference backend always runs the sequential recurrences)")
    return "\n".join(out)


def _explain_one(g: Graph) -> str:
    meta = g.meta
    show = _Infix(g)
    st = g.op(meta["state"])
    x = st.get("name")
    sysop = g.op(meta["system"])
    structure = sysop.get("structure")
    matrix = structure in F.MATRIX_STRUCTURES
    abar, ebar = g.operands(meta["system"])
    out = [f"ssm {meta['name']}" + (f" -- {meta['description']}" if meta["description"] else "")]
    out.append("")
    out.append("values (t indexes tokens; static values have no subscript):")
    order = {n: i for i, n in enumerate(g.topo())}
    named = sorted(((n, name) for name, n in meta["values"].items()), key=lambda kv: order.get(kv[0], 0))
    w = max([len(name) + 2 for _, name in named] + [4])
    for n, name in named:
        lhs = name + show.sub(n)
        dims = ", ".join(g.fact(n, "dims"))
        out.append(f"  {lhs:<{w}} = {show(n, top=True)}    [{dims}] {_time_word(g, n)}"
                   + (" complex" if g.fact(n, "complex") else ""))
    roots = meta.get("roots", {})
    op_ = " @ " if matrix else " * "
    out.append("")
    if sysop.get("rule"):
        A, E, step = roots["A"], roots["E"], roots["step"]
        out.append(f"continuous time ({structure} state matrix):")
        out.append(f"  {x}'(t) = {show(A)}{op_}{x}(t) + {show(E)}")
        out.append(f"discretization: {_RULE_WORDS[sysop.get('rule')]}, step = {show(step)}")
        if sysop.get("rule") == "zoh":
            out.append("  phi1(z) = (exp(z) - 1) / z, with phi1(0) = 1 (the A -> 0 limit), so "
                       "Ebar = phi1(step A) step E")
    out.append("discrete time:")
    prev = f"{x}_(t-1)"
    out.append(f"  {x}_t = Abar{op_}{prev} + Ebar")
    inline = _Infix(g)
    out.append(f"  Abar{show.sub(abar)} = {inline(abar, top=True)}    [{', '.join(g.fact(abar, 'dims'))}] "
               f"{_time_word(g, abar)}")
    out.append(f"  Ebar{show.sub(ebar)} = {inline(ebar, top=True)}    [{', '.join(g.fact(ebar, 'dims'))}] "
               f"{_time_word(g, ebar)}")
    ssd = meta.get("ssd")
    if ssd and not (g.op(abar).kind == "exp" and g.operands(abar)[0] == ssd["z"]):
        # The decay is not written as exp(z): the SSD form runs on the logarithm it was given.
        z = ssd["z"]
        out.append(f"  log(Abar){show.sub(z)} = {inline(z, top=True)}    [{', '.join(g.fact(z, 'dims'))}] "
                   f"{_time_word(g, z)} (the SSD form's log-decay)")
    y = meta["output"]
    out.append("output (from the state after the whole sequence, x_L):" if meta["scan"]["order"] == "global"
               else "output (from the state after each token's update):")
    out.append(f"  {g.op(y).get('name')}_t = {show(g.operands(y)[0], top=True)}    [{', '.join(g.fact(y, 'dims'))}]")
    sc = meta["scan"]
    out.append("")
    orders = {
        "causal": "t = 1 .. L",
        "reverse": "t = L .. 1 (the same recurrence on the reversed sequence)",
        "global": "t = 1 .. L for the state; every token's output reads the state after the whole sequence",
        "bidirectional": f"a causal and a reverse scan, outputs merged by {sc['merge']}, "
                         f"{sc['params']} parameters",
        "cross2d": f"the sequence is a {sc['rows']} x {sc['cols']} image (row-major); four scans (rows forward, "
                   f"rows backward, columns forward, columns backward) merged by {sc['merge']}, "
                   f"{sc['params']} parameters",
    }
    # Tensors that set their own sharing (decision 19), named after the scan's default.
    own = [(name, info["separate"]) for name, _, info in tables.parameters(g) if "separate" in info]
    if own:
        parts = [f"{', '.join(n for n, s in own if s == want)} {word}"
                 for want, word in ((True, "separate"), (False, "shared")) if any(s == want for _, s in own)]
        orders[sc["order"]] += " (except " + "; ".join(parts) + ")"
    out.append(f"scan: {sc['order']}: {orders[sc['order']]}")
    cls = meta["classification"]
    out.append("system: " + ("LTI" if cls["lti"] else "selective"))
    # The forcing (a per-token term of E that does not multiply the input) only where there is one.
    for key, word in (("A", "state matrix"), ("step", "step"), ("input_coef", "input coefficient"),
                      ("forcing", "forcing term"), ("readout", "readout coefficient")):
        if cls.get(key) is not None:
            out.append(f"  {word:<20} {cls[key].replace('token', 'per-token')}")
    out.append(f"  {'readout':<20} {'linear' if cls['readout_linear'] else 'nonlinear'} in the state")
    out.append(f"algorithm: {meta['algorithm']['name']}: {meta['algorithm']['reason']}")
    out.append("  (the NumPy reference backend always runs the sequential recurrence)")
    return "\n".join(out)
