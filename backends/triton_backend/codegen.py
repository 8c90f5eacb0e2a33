"""IR -> Triton: the recurrence and the values of the state's size fused into one kernel.

The module is the PyTorch backend's (per-token values that are not state-sized, such
as projections and convs, run in torch before), plus, per block, one generated
`@triton.jit` kernel that replaces the chunk loop: each program owns one batch element
and a [BLOCK_P, BLOCK_N] tile of the state (the state's leading dims flattened into rows,
its last dim as columns) and walks the sequence with the state in registers, computing
the discretization, the update, the readout and whatever else the loop computed, from
expressions printed off the IR. No per-step state is written to memory. Elementwise
structures take BLOCK_T tokens per iteration: every per-token value is a [BLOCK_T,
BLOCK_P, BLOCK_N] tile, the chunk's affine maps x -> Abar_t x + Ebar_t are composed by
`tl.associative_scan` and applied to the state entering the chunk (loads are whole
chunks, and the sequential dependence is one step per chunk, not per token); BLOCK_P
and BLOCK_T are tuned together. Matrix structures take one token per iteration.

Systems the compiler put in the SSD form (Mamba-2 class) run the SSD kernel family
instead (`ssmc/runtime/triton_ssd.py`: chunk-local tl.dot matmuls, the state carried
across chunks in registers), fed with the factors torch computes from the spec.

Scope of the scan kernel (others fall back to the PyTorch backend with a notice, or
are an error with strict=True): every structure (diagonal and scalar elementwise;
dense, DPLR and block-diagonal as a matrix-vector update on a [BLOCK_P, BLOCK_N,
BLOCK_N] tile, their discretized matrices made in torch), real or complex states, the
elementwise functions of derivatives.py and powers, as numpy computes them (on complex
values: arithmetic, exp, phi1, re, im, conj, abs, powers by integer constants), reductions over one state dim (the tile's columns). Values over dims
beyond the state's, and reductions the tile cannot make (over several state dims, or over
different ones in one loop), are computed in torch: before the launch when they do not
read the state (S5's sum(B * u, H)); otherwise the kernel hands over every state and torch
reads them out (so does a readout of prev(x), the state before each update). Non-causal scan orders are index maps over time (step t reads and writes
token tmap[t]).

Gradients, for elementwise structures: a generated backward kernel, the autograd of the
`ssmc::fused_scan` op. The forward saves the state every CK = 64 tokens; the backward
walks those intervals in reverse, recomputes the state entering each chunk of BLOCK_T
tokens, then walks the chunks in reverse: their states again, the adjoints of the
readout side, the state's adjoint c_t = dx_t + conj(Abar_(t+1)) c_(t+1) by a reverse
associative scan, then the adjoints of the discretization side. Derivatives of real ops
come from sympy (derivatives.py); complex ones follow G * conj(f'(z)) per op (`cvjp`).
Matrix structures run the module's PyTorch path when gradients are needed. Everything
else of the module (chaining, cu_seqlens) is shared with the PyTorch backend. Complex
values are pairs of real registers (`_r`, `_i`); complex tensors travel as their real
views (interleaved real and imaginary parts).
"""
from __future__ import annotations

import re

from ...errors import SsmcError
from ...ir.graph import Graph
from ..codegen_common import module_header, reads_prev_state
from .derivatives import NARY, UNARY, VJP
from ...ir.systems import is_multi
from ..torch_backend.codegen import TorchPrinter, render_class

# Per-op forward formulas ({0} the operand) and reverse-mode derivatives per operand
# ({G} the result's gradient, {a} and {b} the operands, {r} the result), printed from one
# sympy definition per op (derivatives.py).
_UNARY = {k: v for k, v in UNARY.items() if k != "square"}
_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
# min, max and clamp: `{0}`, `{1}`, `{2}` the operands (derivatives.py).
_NARY = NARY
_VJP = VJP
_HOST_KINDS = ("solve", "expm", "phi1m", "matvec", "dplr", "blockdiag", "eye", "linear", "conv")
# What complex values (pairs of real registers) support, forward and backward (Kernel.cvjp).
_COMPLEX_OK = ("add", "sub", "mul", "div", "neg", "exp", "phi1", "re", "im", "conj", "abs", "sum", "mean")


class Unsupported(SsmcError):
    """The spec uses something the Triton backend does not generate yet."""


_FOLD = {"neg": lambda a: -a, "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
         "mul": lambda a, b: a * b, "div": lambda a, b: a / b}


def _constant(g: Graph, n: int) -> float | None:
    """The value of a real compile-time constant (`2`, `-1`, `1 / 2`: the IR keeps `-1` as
    neg(1), computed in torch), or None."""
    o = g.op(n)
    if o.kind == "const":
        v = o.get("value")
        return None if isinstance(v, complex) else float(v)
    if o.kind not in _FOLD:
        return None
    vals = [_constant(g, i) for i in g.operands(n)]
    if any(v is None for v in vals):
        return None
    try:
        return float(_FOLD[o.kind](*vals))
    except (ZeroDivisionError, OverflowError):
        return None


# Integer powers up to this are written as products (exact, like numpy's); above, as a
# magnitude exp(c log|x|) with the sign of x^c.
_PRODUCT_POWER = 8


def _power(x: str, c: float, name: str) -> tuple[list[str], str]:
    """(lines, expression) for x ** c with a compile-time exponent c, as numpy computes it:
    an integer c as products (a negative x is fine; exp(c log x) would be nan), halves by
    tl.sqrt, other c by exp(c log x) (nan for a negative x, as numpy's)."""
    if c == 0:
        # 1 everywhere, x's tile shape (x ** 0 == 1 for every x, nan and inf included).
        return [], f"tl.where({x} == {x}, 1.0, 1.0)"
    if c == int(c):
        m = abs(int(c))
        if m <= _PRODUCT_POWER:
            text = " * ".join([x] * m)
        else:
            mag = f"tl.exp({float(m)!r} * tl.log(tl.abs({x})))"
            text = f"tl.where({x} < 0.0, -{mag}, {mag})" if m % 2 else mag
            lines = [f"{name}_p = {text}"]
            return lines, (f"1.0 / {name}_p" if c < 0 else f"{name}_p")
        return [], ((f"1.0 / ({text})" if " " in text else f"1.0 / {text}") if c < 0 else text)
    if abs(c) == 0.5:
        return [], (f"tl.sqrt({x})" if c > 0 else f"1.0 / tl.sqrt({x})")
    return [], f"tl.exp({c!r} * tl.log({x}))"


def _complex_power(g: Graph, n: int) -> int | None:
    """The exponent of a power of a complex value the kernel computes (an integer constant
    up to _PRODUCT_POWER in size, by products; the exponent itself real), or None."""
    base, ex = g.operands(n)
    c = _constant(g, ex)
    if g.fact(ex, "complex") or c is None or c != int(c) or abs(c) > _PRODUCT_POWER:
        return None
    return int(c)


def _cpower(ar: str, ai: str, c: int, name: str) -> tuple[list[str], tuple[str, str]]:
    """(lines, (real, imaginary)) for z ** c, z = ar + i ai, c an integer: products, then
    the reciprocal for c < 0."""
    if c == 0:
        return [], (f"tl.where({ar} == {ar}, 1.0, 1.0)", f"0.0 * {ar}")
    r, i = f"{name}_pr", f"{name}_pi"
    lines = [f"{r}, {i} = {ar} + 0.0 * {ai}, {ai} + 0.0 * {ar}"]
    for _ in range(abs(c) - 1):
        lines.append(f"{r}, {i} = {r} * {ar} - {i} * {ai}, {r} * {ai} + {i} * {ar}")
    if c > 0:
        return lines, (r, i)
    lines.append(f"{name}_q = {r} * {r} + {i} * {i}")
    return lines, (f"{r} / {name}_q", f"-{i} / {name}_q")


def _power_runtime(x: str, e: str, name: str) -> tuple[list[str], str]:
    """(lines, expression) for x ** e with an exponent known only at run time: |x|^e with
    the sign (-1)^e where x < 0 and e is an integer, nan where x < 0 and it is not
    (numpy's), and x ** 0 == 1."""
    lines = [f"{name}_m = tl.exp({e} * tl.log(tl.abs({x})))",
             f"{name}_n = {e} == tl.floor({e})  # an integer exponent: defined for a negative base",
             f"{name}_o = ({e} - 2.0 * tl.floor(0.5 * {e})) == 1.0  # odd",
             f"{name}_s = tl.where({name}_n, tl.where({name}_o, -{name}_m, {name}_m), tl.exp({e} * tl.log({x})))"]
    return lines, f"tl.where({e} == 0.0, 1.0, tl.where({x} < 0.0, {name}_s, {name}_m))"


def _host_side(g: Graph, loop: list[int]) -> set[int]:
    """Loop values the kernel cannot hold in its state-shaped tile (dims outside the state's,
    as S5's B * u over [P, H] before sum(.., H)): torch computes them, and what they need,
    over the whole sequence before the launch. They must not depend on the state."""
    sdims_order = tuple(g.meta["state_dims"])
    sdims = set(sdims_order)
    state = g.meta["state"]
    inside = set(loop)
    host: set[int] = set()
    for n in loop:
        dims = g.fact(n, "dims")
        # Square matrices and matrix functions (dense, DPLR, block-diagonal systems) are made in torch.
        matrix = len(set(dims)) != len(dims) or g.op(n).kind in _HOST_KINDS
        if matrix and state not in g.ancestors(n):
            host.add(n)
            host |= {a for a in g.ancestors(n) if a in inside}
            continue
        if not set(dims) <= sdims:
            if state in g.ancestors(n):
                # A readout that mixes beyond the state's dims (S5's sum(C * x, P) with C[H, P]):
                # the kernel hands over every state and torch reads them out.
                host |= {m for m in loop if state in g.ancestors(m)}
                continue
            host.add(n)
            host |= {a for a in g.ancestors(n) if a in inside}
    # Reductions the tile cannot make (over several state dims, or over different state dims
    # in one loop: the program's rows are split across programs) and results without the
    # rows' dims (sum(x, P) for a row dim P): torch makes them too, from every state the
    # kernel hands over, or before the launch when they do not read the state.
    readers = {m for m in loop if state in g.ancestors(m)}
    matrix = g.op(g.meta["system"]).get("structure") in ("dense", "dplr", "block_diagonal")

    def reduced_dims(n):
        return [d for d, _ in g.op(n).get("dims")] if g.op(n).kind in ("sum", "mean") else []

    def to_host(n):
        if n in readers:
            host.update(readers)
        else:
            host.add(n)
            host.update(a for a in g.ancestors(n) if a in inside)

    for n in loop:
        if n not in host and len(reduced_dims(n)) > 1:
            to_host(n)
    sums = [n for n in loop if n not in host and reduced_dims(n)]
    cols = {reduced_dims(n)[0] for n in sums}
    if len(cols) > 1 or (matrix and cols - {sdims_order[-1]}):
        for n in sums:
            to_host(n)
    cols = {reduced_dims(n)[0] for n in loop if n not in host and reduced_dims(n)}
    col = next(iter(cols)) if len(cols) == 1 else sdims_order[-1]
    rows = set(sdims) - {col}
    exits = [n for n in loop if any(u not in inside for u, _ in g.users(n))]
    for n in exits:
        if n not in host and n in readers and not rows <= set(g.fact(n, "dims")):
            to_host(n)
    if any(g.op(m).kind == "prev_state" for m in readers):
        # prev(x), the state before each update: torch reads it off the states the kernel
        # hands over (shifted one token, the entering state first), with the whole readout.
        host.update(readers)
    if host & readers:
        # The kernel then hands over only the state: the other results are torch's, and so
        # is every value the readout in torch reads besides the state.
        for n in exits:
            if n not in host:
                to_host(n)
        for n in [m for m in loop if m in readers]:
            for i in g.operands(n):
                if i in inside and i not in host and i not in readers:
                    to_host(i)
    # What reads only host values and not the state can be computed there too.
    for n in loop:
        if n not in host and state not in g.ancestors(n) and g.operands(n) \
                and all(i in host or i not in inside for i in g.operands(n)) \
                and any(i in host for i in g.operands(n)):
            host.add(n)
    return host


def _plan(g: Graph, loop: list[int]):
    """Check the loop can be one kernel; return (state dims, row dims, column dim, the
    values computed in torch around it).

    The column axis of the tile is the state dim the loop reduces over (the readout's
    sum(C * x, N)), so every reduction stays inside one program; the matrix dim of a
    matrix structure; else the state's last dim. The other state dims are the rows.
    """
    meta = g.meta
    sdims = tuple(meta["state_dims"])
    host = _host_side(g, loop)
    reduced = set()
    for n in [n for n in loop if n not in host]:
        o = g.op(n)
        complex_in = any(g.fact(i, "complex") for i in g.operands(n))
        if complex_in and o.kind == "pow" and _complex_power(g, n) is None:
            raise Unsupported("a power of a complex value other than by an integer constant")
        if complex_in and o.kind not in _COMPLEX_OK and o.kind != "pow":
            raise Unsupported(f"{o.kind}() of a complex value")
        if o.kind not in _UNARY and o.kind not in _BINARY and o.kind not in _NARY \
                and o.kind not in ("sum", "mean", "pow") \
                and not (complex_in and o.kind in _COMPLEX_OK):
            raise Unsupported(f"{o.kind}() inside the recurrence")
        if o.kind in ("sum", "mean"):
            dims = [d for d, _ in o.get("dims")]
            if len(dims) != 1:
                raise Unsupported(f"{o.kind}() over more than one state dim")
            reduced.add(dims[0])
    matrix = g.op(meta["system"]).get("structure") in ("dense", "dplr", "block_diagonal")
    if len(reduced) > 1 or (matrix and reduced - {sdims[-1]}):
        raise Unsupported("sums inside the recurrence over different state dims")
    col = next(iter(reduced)) if reduced else sdims[-1]
    return sdims, tuple(d for d in sdims if d != col), col, host


def supports(compiled) -> tuple[bool, str]:
    """Whether every block can be generated; otherwise why not."""
    from ..torch_backend.codegen import split_loop
    from ..codegen_common import split_body
    for g in compiled.graphs:
        if is_multi(g):
            # Several states: the SSD systems run the SSD kernel family, the others the
            # PyTorch chunked scan (render_multi); nothing to plan for a fused scan kernel.
            continue
        pr = TorchPrinter(g)
        static, token, after = split_body(g)
        _, loop, exits, _ = split_loop(g, pr, token + after)
        try:
            sdims, rows, col, host = _plan(g, loop)
        except Unsupported as e:
            return False, f"{g.meta['name']}: {e}"
        state = g.meta["state"]
        # With the readout in torch the kernel's one result is the state.
        readout_in_torch = any(state in g.ancestors(n) for n in host)
        for n in exits:
            if not readout_in_torch and not set(rows) <= set(g.fact(n, "dims")):
                return False, f"{g.meta['name']}: a loop result without all the state's leading dims"
    return True, ""


class _Kernel:
    """Builds the kernel text for one block.

    The only names from the spec in a kernel are its dims', as `s_<dim>` (the size) and
    `i_<dim>` (the tile's index along it), and no other kernel name starts with `s_` or
    `i_`: a dim may be called anything (`k3`, `rows`, `L`, `BLOCK_T`). Values are
    `v<node>`, inputs `in<k>`, `st<k>`, `out<k>`; Triton itself is `_triton` / `_tl`
    (`_namespaced`), so a block called `tl` or `triton` shadows nothing.
    """

    def __init__(self, g: Graph, pr: TorchPrinter, needed, loop, exits):
        self.g, self.pr = g, pr
        self.sdims, self.rows, self.col, host = _plan(g, loop)
        self.matrix = g.op(g.meta["system"]).get("structure") in ("dense", "dplr", "block_diagonal")
        state = g.meta["state"]
        # Values computed in torch before the launch, and (readout on the host) after it.
        self.host = [n for n in loop if n in host and state not in g.ancestors(n)]
        self.host_after = [n for n in loop if n in host and state in g.ancestors(n)]
        loop = [n for n in loop if n not in host]
        self.orig_exits = exits
        if self.host_after:
            exits = [state]
        sysn = g.meta["system"]
        reads = {i for n in loop for i in g.operands(n)} | set(g.operands(sysn))
        # The kernel reads only what its own loop and the update read.
        needed = sorted({n for n in set(needed) | set(self.host) if n in reads and g.fact(n, "time") == "token"},
                        key=pr.num.get)
        self.needed, self.loop, self.exits = needed, loop, exits
        self.name = f"_{g.meta['name']}_loop"
        # Elementwise structures run a chunk of BLOCK_T tokens at a time ([BLOCK_T, BLOCK_P,
        # BLOCK_N] tiles, the recurrence as an associative scan over the chunk); matrix
        # structures one token at a time. The backward kernel is per token.
        self.chunked = not self.matrix
        self.tile: dict[int, str] = {}
        # Static tensors the loop reads (params and values computed once in torch).
        reads = {i for n in loop for i in g.operands(n)} | set(g.operands(g.meta["system"]))
        self.statics = sorted({i for i in reads
                               if g.fact(i, "time") != "token" and g.op(i).kind not in ("const", "dim")},
                              key=pr.num.get)

    def program_indices(self) -> list[str]:
        """A kernel's first lines: the program's batch element, its rows of the state (the
        leading dims, flattened) and columns, their masks and each row dim's index. Tiles
        are [BLOCK_P, BLOCK_N] (one token) or, chunked, [BLOCK_T, BLOCK_P, BLOCK_N]."""
        lead = "None, " if self.chunked else ""
        # int64 indices: every offset is a product of them with sizes, which passes 2^31 on
        # large tensors (32-bit offsets would wrap silently); the AOT check (ssmc.aot) looks
        # for 32-bit products in the addresses.
        lines = ["    b = tl.program_id(0).to(tl.int64)",
                 f"    rows = (tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)[{lead}:, None]).to(tl.int64)  "
                 "# the state's leading dims, flat",
                 f"    i_{self.col} = tl.arange(0, BLOCK_N)[{lead}None, :].to(tl.int64)",
                 f"    m_rows = rows < {self.numel(self.rows)}",
                 f"    m_cols = i_{self.col} < s_{self.col}"]
        for j, d in enumerate(self.rows):
            inner = " * ".join(f"s_{e}" for e in self.rows[j + 1:])
            lines.append(f"    i_{d} = " + (f"(rows // ({inner})) % s_{d}" if inner else f"rows % s_{d}"))
        return lines

    def colsum(self, expr: str) -> str:
        """A sum over the tile's columns (the reduced state dim), kept as an axis of size 1.
        Padding columns (BLOCK_N > the dim's size) are left out: they hold a value of
        zeros (x ** 0, 1 + x, exp(x) of a masked 0 are not 0)."""
        if self.chunked:
            return f"tl.sum(tl.where(m_cols, {expr}, 0.0), axis=2)[:, :, None]"
        return f"tl.sum(tl.where(m_cols, {expr}, 0.0), axis=1)[:, None]"

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

    def is_matrix(self, n: int) -> bool:
        dims = self.g.fact(n, "dims")
        return len(set(dims)) != len(dims)

    def lay(self, n: int) -> tuple:
        return tuple(self.sdims) if n == self.g.meta["state"] else self.pr.lay(n)

    def cplx(self, n: int) -> bool:
        return bool(self.g.fact(n, "complex"))

    def emit(self, n: int, name: str) -> list[str]:
        """Assignments computing node n into `name` (or `name_r`, `name_i` if complex)."""
        g = self.g
        o = g.op(n)
        k = o.kind
        ops_ = g.operands(n)
        if not self.cplx(n) and not any(self.cplx(i) for i in ops_):
            self.tile[n] = name
            if k == "pow":
                lines, text = self.power(n, name)
                return lines + [f"{name} = {text}"]
            return [f"{name} = {self.real_expr(n)}"]
        a = [self.ref(i) for i in ops_]
        parts = [x if isinstance(x, tuple) else (x, None) for x in a]
        if not self.cplx(n):
            # Complex in, real out.
            (ar, ai), = parts[:1]
            self.tile[n] = name
            text = {"re": ar, "im": ai or "0.0", "abs": f"tl.sqrt({ar} * {ar} + {ai} * {ai})"}[k]
            return [f"{name} = {text}"]
        r, i = f"{name}_r", f"{name}_i"
        self.tile[n] = (r, i)
        if k in ("add", "sub"):
            (ar, ai), (br, bi) = parts
            op = "+" if k == "add" else "-"
            im = f"{ai or '0.0'} {op} {bi or '0.0'}"
            return [f"{r} = {ar} {op} {br}", f"{i} = {im}"]
        if k == "mul":
            (ar, ai), (br, bi) = parts
            if ai is None or bi is None:
                s_, (cr, ci) = (ar, (br, bi)) if ai is None else (br, (ar, ai))
                return [f"{r} = {s_} * {cr}", f"{i} = {s_} * {ci}"]
            return [f"{r} = {ar} * {br} - {ai} * {bi}", f"{i} = {ar} * {bi} + {ai} * {br}"]
        if k == "div":
            (ar, ai), (br, bi) = parts
            if bi is None:
                return [f"{r} = {ar} / {br}", f"{i} = {ai} / {br}"]
            ai = ai or "0.0"
            return [f"{name}_d = {br} * {br} + {bi} * {bi}",
                    f"{r} = ({ar} * {br} + {ai} * {bi}) / {name}_d", f"{i} = ({ai} * {br} - {ar} * {bi}) / {name}_d"]
        (ar, ai) = parts[0]
        ai = ai or "0.0"
        if k == "neg":
            return [f"{r} = -{ar}", f"{i} = -{ai}"]
        if k == "conj":
            return [f"{r} = {ar}", f"{i} = -{ai}"]
        if k == "exp":
            return [f"{name}_m = tl.exp({ar})", f"{r} = {name}_m * tl.cos({ai})", f"{i} = {name}_m * tl.sin({ai})"]
        if k == "phi1":
            # (exp(z) - 1) / z; where |z| < 0.1 its series sum z^k / (k + 1)!, k <= 6, by
            # Horner (in float32 exp(z) - 1 cancels to ~eps / |z| for small |z|; the
            # series' truncation is ~|z|^7 / 8! <= 2.5e-12 there), as derivatives.py does
            # for real values.
            lines = [f"{name}_m = tl.exp({ar})",
                     f"{name}_er = {name}_m * tl.cos({ai}) - 1.0", f"{name}_ei = {name}_m * tl.sin({ai})",
                     f"{name}_d = {ar} * {ar} + {ai} * {ai}",
                     f"{name}_small = {name}_d < 0.01",
                     f"{name}_q = tl.where({name}_small, 1.0, {name}_d)",
                     f"{name}_sr = {1.0 / 5040.0!r} + 0.0 * {ar}", f"{name}_si = 0.0 * {ar}"]
            for c in (720, 120, 24, 6, 2, 1):
                lines.append(f"{name}_sr, {name}_si = {name}_sr * {ar} - {name}_si * {ai} + {1.0 / c!r}, "
                             f"{name}_sr * {ai} + {name}_si * {ar}")
            return lines + [f"{r} = tl.where({name}_small, {name}_sr, ({name}_er * {ar} + {name}_ei * {ai}) / {name}_q)",
                            f"{i} = tl.where({name}_small, {name}_si, ({name}_ei * {ar} - {name}_er * {ai}) / {name}_q)"]
        if k in ("sum", "mean"):
            div = "" if k == "sum" else f" / s_{self.col}"
            return [f"{r} = {self.colsum(ar)}{div}", f"{i} = {self.colsum(ai)}{div}"]
        if k == "pow":
            lines, (pr_, pi_) = _cpower(ar, ai, _complex_power(g, n), name)
            return lines + [f"{r} = {pr_}", f"{i} = {pi_}"]
        raise Unsupported(f"{k}() of a complex value")

    def real_expr(self, n: int) -> str:
        g = self.g
        o = g.op(n)
        ins = [self.ref(i) for i in g.operands(n)]
        if o.kind in ("im",):
            return "0.0"
        if o.kind in _UNARY:
            return _UNARY[o.kind].format(ins[0])
        if o.kind in _BINARY:
            return f"{ins[0]} {_BINARY[o.kind]} {ins[1]}"
        if o.kind in _NARY:
            return _NARY[o.kind].format(*ins)
        total = self.colsum(ins[0])
        return total if o.kind == "sum" else f"{total} / s_{self.col}"

    def power(self, n: int, name: str, minus_one: bool = False) -> tuple[list[str], str]:
        """(lines, expression) for the real power node n (`x ** c`), or with `minus_one` for
        x ** (c - 1), its derivative's power."""
        x, e, c = self.pow_operands(n)
        if c is not None:
            return _power(x, c - 1 if minus_one else c, name)
        return _power_runtime(x, f"({e} - 1.0)" if minus_one else e, name)

    def pow_operands(self, n: int) -> tuple[str, str, float | None]:
        """(base, exponent, the exponent's value if it is a compile-time constant) of the
        power node n, as float tiles where the exponent is known only at run time."""
        base, ex = self.g.operands(n)
        x, e = self.ref(base), self.ref(ex)
        c = _constant(self.g, ex)
        if c is None:
            if self.g.op(ex).kind == "dim":
                # A dim's size is an integer argument: the power's functions take floats.
                e = f"({e} + 0.0)"
            if _constant(self.g, base) is not None or self.g.op(base).kind == "dim":
                # A number as the base (`2 ** v`, `N ** v`): a tile of the exponent's shape.
                x = f"({x} + 0.0 * {e})"
        return x, e, c

    def ref(self, n: int):
        o = self.g.op(n)
        if o.kind == "const":
            v = o.get("value")
            return (repr(float(v.real)), repr(float(v.imag))) if isinstance(v, complex) else repr(float(v))
        if o.kind == "dim":
            return f"s_{o.get('name')}"
        return self.tile[n]

    def matrix_load(self, ptr: str, base: str, name: str, n: int) -> list[str]:
        """A square matrix over the state's last dim as a [BLOCK_P, BLOCK_N, BLOCK_N] tile."""
        lay = self.lay(n)
        lead = lay[:-2]
        col = self.col
        terms = []
        for j, d in enumerate(lead):
            stride = " * ".join([f"s_{e}" for e in lead[j + 1:]] + [f"s_{col}", f"s_{col}"])
            terms.append(f"i_{d}[:, :, None] * {stride}")
        terms += [f"i_{col}[:, :, None] * s_{col}", "k_in"]
        offset = f"{base} + " + " + ".join(terms)
        mask = ("m_rows[:, :, None] & " if lead else "") + f"m_cols[:, :, None] & (k_in < s_{col})"
        if self.cplx(n):
            self.tile[n] = (f"{name}_r", f"{name}_i")
            return [f"{name}_r = tl.load({ptr} + 2 * ({offset}), mask={mask}, other=0.0)",
                    f"{name}_i = tl.load({ptr} + 2 * ({offset}) + 1, mask={mask}, other=0.0)"]
        self.tile[n] = name
        return [f"{name} = tl.load({ptr} + {offset}, mask={mask}, other=0.0)"]

    def load(self, ptr: str, offset: str, mask: str, name: str, n: int, token: bool = False) -> list[str]:
        """Lines loading node n's tile; a per-token input (`token`) may be stored in half
        precision and is widened to the state's dtype on load."""
        if self.cplx(n):
            self.tile[n] = (f"{name}_r", f"{name}_i")
            return [f"{name}_r = tl.load({ptr} + 2 * ({offset}), mask={mask}, other=0.0)",
                    f"{name}_i = tl.load({ptr} + 2 * ({offset}) + 1, mask={mask}, other=0.0)"]
        self.tile[n] = name
        widen = ".to(x0.dtype.element_ty)" if token else ""
        return [f"{name} = tl.load({ptr} + {offset}, mask={mask}, other=0.0){widen}"]

    def store(self, ptr: str, offset: str, value, mask: str) -> list[str]:
        if isinstance(value, tuple):
            return [f"tl.store({ptr} + 2 * ({offset}), {value[0]}, mask={mask})",
                    f"tl.store({ptr} + 2 * ({offset}) + 1, {value[1]}, mask={mask})"]
        return [f"tl.store({ptr} + {offset}, {value}, mask={mask})"]

    def differentiable(self) -> bool:
        """Whether the backward kernel can be generated: an elementwise structure (the chunked
        form; matrix structures take the PyTorch path for gradients) and every loop op with a
        derivative (the table for real values, `cvjp` for complex ones)."""
        g = self.g
        if self.matrix:
            return False
        for n in self.loop:
            kind = g.op(n).kind
            if self.cplx(n) or any(self.cplx(i) for i in g.operands(n)):
                if kind not in _COMPLEX_OK and kind != "pow":
                    return False
            elif kind not in _VJP and kind != "pow":
                return False
        return True

    def cls(self, n: int) -> tuple[bool, bool]:
        """(has rows, has the column) of node n's tile."""
        dims = set(self.g.fact(n, "dims"))
        return bool(dims & set(self.rows)), self.col in dims

    def reduce(self, expr: str, have: tuple[bool, bool], want: tuple[bool, bool]) -> str:
        """A gradient tile shaped `have`, summed down to the broadcast shape `want` (never over
        a chunk's time axis)."""
        if have[1] and not want[1]:
            expr = (f"tl.sum(tl.where(m_cols, {expr}, 0.0), axis=2)[:, :, None]" if self.chunked
                    else f"tl.sum(tl.where(m_cols, {expr}, 0.0), axis=1)[:, None]")
        if have[0] and not want[0]:
            expr = (f"tl.sum(tl.where(m_rows, {expr}, 0.0), axis=1)[:, None, :]" if self.chunked
                    else f"tl.sum(tl.where(m_rows, {expr}, 0.0), axis=0)[None, :]")
        return expr

    def vjp(self, n: int, gname: str) -> list[tuple[int, str]]:
        """(operand, contribution) pairs: the derivative of node n, given its gradient."""
        g = self.g
        k = g.op(n).kind
        ops_ = g.operands(n)
        a = [self.ref(i) for i in ops_]
        res = self.tile[n]
        fields = dict(G=gname, a=a[0], b=a[1] if len(a) > 1 else None, c=a[2] if len(a) > 2 else None, r=res,
                      col=self.col)
        out = [f.format(**fields) for f in _VJP[k]]
        return [(i, c) for i, c in zip(ops_, out) if c is not None and g.op(i).kind not in ("const", "dim")]

    def pow_vjp(self, n: int, G: str, tmp: str) -> tuple[list[str], list[tuple[int, str]]]:
        """(lines, [(operand, contribution)]) for the real power r = x ** e: dx = G e x^(e-1);
        de = G r log(x), 0 where x == 0 and e >= 0 (torch's), none for a constant e."""
        g = self.g
        xn, en = g.operands(n)
        x, e, c = self.pow_operands(n)
        wanted = lambda i: g.op(i).kind not in ("const", "dim")  # noqa: E731
        lines, out = [], []
        if c != 0 and wanted(xn):
            lines, p = self.power(n, f"{tmp}_d", minus_one=True)
            out.append((xn, f"({G}) * {e if c is None else repr(c)} * ({p})"))
        if c is None and wanted(en):
            rlog = f"{self.tile[n]} * tl.log({x})"
            lines.append(f"{tmp}_l = tl.where({x} == 0.0, tl.where({e} >= 0.0, 0.0, {rlog}), {rlog})")
            out.append((en, f"({G}) * {tmp}_l"))
        return lines, out

    def cvjp(self, n: int, G, tmp: str) -> tuple[list[str], list[tuple[int, object]]]:
        """(lines, [(operand, contribution)]): the derivative of node n given its gradient G,
        where n or an operand is complex. Complex values are pairs of real registers and a
        complex gradient is the pair (dL/d re, dL/d im), as torch's: for a holomorphic op
        the operand's gradient is G * conj(f'(a)); a real operand of a complex op gets the
        real part of its complex gradient."""
        g = self.g
        k = g.op(n).kind
        ops_ = g.operands(n)
        refs = [self.ref(i) for i in ops_]
        pair = [x if isinstance(x, tuple) else (x, None) for x in refs]
        res = self.tile[n]
        Gr, Gi = G if isinstance(G, tuple) else (G, None)
        lines: list[str] = []

        def cmul_conj(xr, xi, yr, yi):
            """x * conj(y), either side possibly real (imaginary part None)."""
            if xi is None and yi is None:
                return (f"{xr} * {yr}", None)
            if yi is None:
                return (f"{xr} * {yr}", f"{xi} * {yr}")
            if xi is None:
                return (f"{xr} * {yr}", f"-{xr} * {yi}")
            return (f"{xr} * {yr} + {xi} * {yi}", f"{xi} * {yr} - {xr} * {yi}")

        def fit(i, c):
            """A contribution shaped for operand i: the real part for a real operand."""
            cr, ci = c
            if self.cplx(i):
                return (cr, ci if ci is not None else "0.0")
            return cr

        out: list[tuple[int, object]] = []
        if k in ("add", "sub"):
            for j, i in enumerate(ops_):
                neg = "-" if (k == "sub" and j == 1) else ""
                out.append((i, fit(i, (f"{neg}({Gr})", f"{neg}({Gi})" if Gi is not None else None))))
        elif k == "neg":
            out.append((ops_[0], fit(ops_[0], (f"-({Gr})", f"-({Gi})" if Gi is not None else None))))
        elif k == "mul":
            (ar, ai), (br, bi) = pair
            out.append((ops_[0], fit(ops_[0], cmul_conj(Gr, Gi, br, bi))))
            out.append((ops_[1], fit(ops_[1], cmul_conj(Gr, Gi, ar, ai))))
        elif k == "div":
            (ar, ai), (br, bi) = pair
            rr, ri = res if isinstance(res, tuple) else (res, None)
            # d(a / b)/da = 1 / b; d(a / b)/db = -r / b.
            lines.append(f"{tmp}_q = {br} * {br} + {bi or '0.0'} * {bi or '0.0'}")
            ib = (f"{br} / {tmp}_q", f"-({bi or '0.0'}) / {tmp}_q")
            lines.append(f"{tmp}_ir, {tmp}_ii = {ib[0]}, {ib[1]}")
            ga = cmul_conj(Gr, Gi, f"{tmp}_ir", f"{tmp}_ii")
            out.append((ops_[0], fit(ops_[0], ga)))
            rb = cmul_conj(rr, ri, f"{tmp}_ir", f"-{tmp}_ii")  # r * (1 / b) = r * conj(conj(1 / b))
            lines.append(f"{tmp}_rbr, {tmp}_rbi = {rb[0]}, {rb[1] or '0.0'}")
            gb = cmul_conj(Gr, Gi, f"{tmp}_rbr", f"{tmp}_rbi")
            out.append((ops_[1], fit(ops_[1], (f"-({gb[0]})", f"-({gb[1]})" if gb[1] is not None else None))))
        elif k == "exp":
            rr, ri = res
            out.append((ops_[0], fit(ops_[0], cmul_conj(Gr, Gi, rr, ri))))
        elif k == "phi1":
            (ar, ai), = pair
            ai = ai or "0.0"
            rr, ri = res
            # phi1'(z) = (r z + 1 - r) / z; where |z| < 0.1 its series sum k z^(k-1) / (k+1)!.
            lines += [f"{tmp}_d = {ar} * {ar} + {ai} * {ai}",
                      f"{tmp}_small = {tmp}_d < 0.01",
                      f"{tmp}_q = tl.where({tmp}_small, 1.0, {tmp}_d)",
                      f"{tmp}_nr = {rr} * {ar} - {ri} * {ai} + 1.0 - {rr}",
                      f"{tmp}_ni = {rr} * {ai} + {ri} * {ar} - {ri}",
                      f"{tmp}_sr = {7.0 / 40320.0!r} + 0.0 * {ar}", f"{tmp}_si = 0.0 * {ar}"]
            for c in (6.0 / 5040.0, 5.0 / 720.0, 4.0 / 120.0, 3.0 / 24.0, 2.0 / 6.0, 1.0 / 2.0):
                lines.append(f"{tmp}_sr, {tmp}_si = {tmp}_sr * {ar} - {tmp}_si * {ai} + {c!r}, "
                             f"{tmp}_sr * {ai} + {tmp}_si * {ar}")
            lines += [f"{tmp}_fr = tl.where({tmp}_small, {tmp}_sr, ({tmp}_nr * {ar} + {tmp}_ni * {ai}) / {tmp}_q)",
                      f"{tmp}_fi = tl.where({tmp}_small, {tmp}_si, ({tmp}_ni * {ar} - {tmp}_nr * {ai}) / {tmp}_q)"]
            out.append((ops_[0], fit(ops_[0], cmul_conj(Gr, Gi, f"{tmp}_fr", f"{tmp}_fi"))))
        elif k == "re":
            out.append((ops_[0], fit(ops_[0], (Gr, "0.0"))))
        elif k == "im":
            out.append((ops_[0], fit(ops_[0], ("0.0", Gr))))
        elif k == "conj":
            out.append((ops_[0], fit(ops_[0], (Gr, f"-({Gi})" if Gi is not None else None))))
        elif k == "abs":
            (ar, ai), = pair
            lines.append(f"{tmp}_m = tl.where({res} > 0.0, {res}, 1.0)")
            out.append((ops_[0], fit(ops_[0], (f"{Gr} * {ar} / {tmp}_m", f"{Gr} * {ai or '0.0'} / {tmp}_m"))))
        elif k in ("sum", "mean"):
            div = "" if k == "sum" else f" / s_{self.col}"
            out.append((ops_[0], fit(ops_[0], (f"{Gr}{div}", f"{Gi}{div}" if Gi is not None else None))))
        elif k == "pow":
            # d z^c = c z^(c-1): the gradient G * conj(c z^(c-1)); none for the constant c.
            c = _complex_power(g, n)
            (ar, ai) = pair[0]
            more, (dr, di) = _cpower(ar, ai or "0.0", c - 1, f"{tmp}_d")
            lines += more + [f"{tmp}_fr, {tmp}_fi = {float(c)!r} * ({dr}), {float(c)!r} * ({di})"]
            out.append((ops_[0], fit(ops_[0], cmul_conj(Gr, Gi, f"{tmp}_fr", f"{tmp}_fi"))))
        else:
            raise Unsupported(f"the derivative of {k}() of a complex value")
        return lines, [(i, c) for i, c in out if g.op(i).kind not in ("const", "dim")]

    def backward_source(self, sizes, ins, sts, outs) -> list[str]:
        """The backward kernel of the chunked forward: the checkpoint intervals in reverse; in
        each, a forward pass over its chunks of BLOCK_T tokens saves the state entering
        every chunk, then the chunks in reverse: the chunk's states again (associative
        scan), the adjoints of the readout side per token, the state's adjoint
        c_t = dx_t + conj(Abar_(t+1)) c_(t+1) as a reverse associative scan, then the
        adjoints of the discretization side. Token inputs' gradients are added atomically
        per token, statics' summed over time and added at the end. Complex values are
        pairs of real registers, their gradients pairs too."""
        g, pr = self.g, self.pr
        meta = g.meta
        state = meta["state"]
        abar, ebar = g.operands(meta["system"])
        name = f"{self.name}_bwd"
        self.chunked = True
        xc = bool(meta["state_complex"])
        sx = self.numel(self.sdims)
        both = self.mask(self.sdims)
        xidx = self.index(self.sdims)
        K = []
        k = K.append
        k("@triton.jit")
        k(f"def {name}(")
        k("    x0, states, scratch, gxf, gx0, tmap,  # the entering state, the checkpoints, a chunk's states, "
          "gradients, the time map")
        k("    " + "".join(f"{v}, " for v in ins) + "# token inputs")
        k("    " + "".join(f"{v}, " for v in sts) + "# static inputs")
        k("    " + "".join(f"g{v}, " for v in outs) + "# gradients of the per-token results")
        k("    " + "".join(f"g{v}, " for v in ins + sts) + "# gradients of the inputs (zeroed)")
        k("    L, " + ", ".join(f"s_{d}" for d in sizes) + ",")
        k("    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, CK: tl.constexpr, MAP: tl.constexpr, "
          "BLOCK_T: tl.constexpr,")
        k("):")
        K.extend(self.program_indices())
        k("    s = tl.arange(0, BLOCK_T)[:, None, None]  # a chunk's steps")
        k("    Z = tl.zeros((BLOCK_T, BLOCK_P, BLOCK_N), dtype=x0.dtype.element_ty)")
        k("    Z1 = tl.zeros((1, BLOCK_P, BLOCK_N), dtype=x0.dtype.element_ty)")
        k("    prev = tl.maximum(s - 1, 0) + Z.to(tl.int32)  # step t - 1, for gathers along the chunk")
        k("    nxt = tl.minimum(s + 1, BLOCK_T - 1) + Z.to(tl.int32)  # step t + 1")
        self.tile = {}
        for v, n in zip(sts, self.statics):
            lay = pr.lay(n)
            for line in self.load(v, self.index(lay), self.mask(lay), f"{v}_v", n):
                k("    " + line)
            if self.cplx(n):
                k(f"    g{v}_acc_r = Z1")
                k(f"    g{v}_acc_i = Z1")
            else:
                k(f"    g{v}_acc = Z1")
        statics_tiles = dict(self.tile)

        def load_pair(ptr: str, off: str, mask: str, complex_: bool, extra: str = "") -> object:
            if complex_:
                return (f"tl.load({ptr} + 2 * ({off}), mask={mask}, other=0.0){extra}",
                        f"tl.load({ptr} + 2 * ({off}) + 1, mask={mask}, other=0.0){extra}")
            return f"tl.load({ptr} + {off}, mask={mask}, other=0.0){extra}"

        def assign(names, values) -> None:
            if isinstance(names, tuple):
                k(f"{ind}{names[0]} = {values[0]}")
                k(f"{ind}{names[1]} = {values[1]}")
            else:
                k(f"{ind}{names} = {values}")

        xn = ("x_in_r", "x_in_i") if xc else "x_in"
        ind = "    "
        assign(("carry_r", "carry_i") if xc else "carry", load_pair("gxf", f"b * {sx} + {xidx}", both, xc, " + Z1"))
        k("    NC = (L + CK - 1) // CK + 1  # checkpoints: the state entering every interval of CK tokens")
        k("    SUB = CK // BLOCK_T")
        before = [n for n in self.loop if state not in g.ancestors(n)]
        after = [n for n in self.loop if state in g.ancestors(n)]

        def chunk_values() -> None:
            """Load a chunk's inputs, compute the discretization side and the chunk's states."""
            k(ind + "t = start + j * BLOCK_T + s")
            k(ind + "m_t = t < L")
            k(ind + "tp = t")
            k(ind + "if MAP:  # the direction's order, by an index map over time")
            k(ind + "    tp = tl.load(tmap + t, mask=m_t, other=0)")
            for v, n in zip(ins, self.needed):
                lay = pr.lay(n)
                m = self.mask(lay)
                for line in self.load(v, f"(b * L + tp) * {self.numel(lay)} + {self.index(lay)}",
                                      f"({m}) & m_t" if m != "True" else "m_t", f"{v}_t", n, token=True):
                    k(ind + line)
            for n in before:
                for line in self.emit(n, f"v{pr.num[n]}"):
                    k(ind + line)
            a, e = self.ref(abar), self.ref(ebar)
            if xc:
                a_r, a_i = a if isinstance(a, tuple) else (a, "0.0")
                e_r, e_i = e if isinstance(e, tuple) else (e, "0.0")
                k(ind + f"A_r = tl.where(m_t, {a_r} + Z, 1.0)")
                k(ind + f"A_i = tl.where(m_t, {a_i} + Z, 0.0)")
                k(ind + f"E_r = tl.where(m_t, {e_r} + Z, 0.0)")
                k(ind + f"E_i = tl.where(m_t, {e_i} + Z, 0.0)")
                k(ind + "Ac_r, Ac_i, Ec_r, Ec_i = tl.associative_scan((A_r, A_i, E_r, E_i), 0, _ssmc_compose_complex)")
                k(ind + "xs_r = Ac_r * x_in_r - Ac_i * x_in_i + Ec_r  # the chunk's states")
                k(ind + "xs_i = Ac_r * x_in_i + Ac_i * x_in_r + Ec_i")
            else:
                k(ind + f"A = tl.where(m_t, {a} + Z, 1.0)")
                k(ind + f"E = tl.where(m_t, {e} + Z, 0.0)")
                k(ind + "Ac, Ec = tl.associative_scan((A, E), 0, _ssmc_compose)")
                k(ind + "xs = Ac * x_in + Ec  # the chunk's states")

        def last(v: str) -> str:
            return f"tl.sum(tl.where(s == BLOCK_T - 1, {v}, 0.0), axis=0)[None, :, :]"

        k("    for kk in range(NC - 1):")
        k("        kc = NC - 2 - kk")
        k("        start = kc * CK")
        ind = "        "
        assign(xn, load_pair("states", f"(b * NC + kc) * {sx} + {xidx}", both, xc, " + Z1"))
        k("        # the state entering each chunk of the interval, recomputed from its checkpoint")
        k("        for j in range(SUB):")
        ind = "            "
        if not xc:
            k(ind + f"tl.store(scratch + (b * CK + j) * {sx} + {xidx}, x_in, mask={both})")
        else:
            k(ind + f"tl.store(scratch + 2 * ((b * CK + j) * {sx} + {xidx}), x_in_r, mask={both})")
            k(ind + f"tl.store(scratch + 2 * ((b * CK + j) * {sx} + {xidx}) + 1, x_in_i, mask={both})")
        self.tile = dict(statics_tiles)
        chunk_values()
        if xc:
            k(ind + f"x_in_r, x_in_i = {last('xs_r')}, {last('xs_i')}")
        else:
            k(ind + f"x_in = {last('xs')}")
        k("        tl.debug_barrier()")
        k("        for jj in range(SUB):")
        k("            j = SUB - 1 - jj")
        assign(xn, load_pair("scratch", f"(b * CK + j) * {sx} + {xidx}", both, xc, " + Z1"))
        chunk_values()
        if xc:
            k(ind + "xp_r = tl.where(s == 0, x_in_r, tl.gather(xs_r, prev, 0))  # x_(t-1)")
            k(ind + "xp_i = tl.where(s == 0, x_in_i, tl.gather(xs_i, prev, 0))")
            self.tile[state] = ("xs_r", "xs_i")
        else:
            k(ind + "x_prev = tl.where(s == 0, x_in, tl.gather(xs, prev, 0))")
            self.tile[state] = "xs"
        for n in after:
            for line in self.emit(n, f"v{pr.num[n]}"):
                k(ind + line)
        grads: dict[int, object] = {}

        def add(n: int, expr, have: tuple[bool, bool]) -> None:
            want = (True, True) if n == state else self.cls(n)
            var = f"g_{pr.num[n]}" if n != state else "gx"
            if isinstance(expr, tuple):
                names = (f"{var}_r", f"{var}_i")
                parts = [self.reduce(e_, have, want) for e_ in expr]
                if n in grads:
                    k(ind + f"{names[0]} = {names[0]} + {parts[0]}")
                    k(ind + f"{names[1]} = {names[1]} + {parts[1]}")
                else:
                    k(ind + f"{names[0]} = {parts[0]}")
                    k(ind + f"{names[1]} = {parts[1]}")
                    grads[n] = names
                return
            expr = self.reduce(expr, have, want)
            if n in grads:
                k(ind + f"{var} = {var} + {expr}")
            else:
                k(ind + f"{var} = {expr}")
                grads[n] = var

        def backprop(n: int) -> None:
            G = grads[n]
            complex_ = self.cplx(n) or any(self.cplx(i) for i in g.operands(n))
            if complex_ or g.op(n).kind == "pow":
                lines, contribs = (self.cvjp if complex_ else self.pow_vjp)(n, G, f"d{pr.num[n]}")
                for line in lines:
                    k(ind + line)
            else:
                contribs = self.vjp(n, G)
            for op_, c in contribs:
                add(op_, c, self.cls(n))

        for v, n in zip(outs, self.exits):
            lay = self.lay(n)
            m = self.mask(lay)
            k(ind + f"# the gradient of {pr.var(n)} at the chunk's tokens")
            add(n, load_pair(f"g{v}", f"(b * L + tp) * {self.numel(lay)} + {self.index(lay)}",
                             f"({m}) & m_t" if m != "True" else "m_t", self.cplx(n)), self.cls(n))
        for n in reversed(after):
            if n in grads:
                backprop(n)
        gx = grads.pop(state, ("0.0", "0.0") if xc else "0.0")
        k(ind + "# the state's adjoint c_t = dx_t + conj(Abar_(t+1)) c_(t+1), the chunk after's as c at its end")
        if xc:
            k(ind + f"gd_r = tl.where(m_t & {both}, {gx[0]} + Z, 0.0)")
            k(ind + f"gd_i = tl.where(m_t & {both}, {gx[1]} + Z, 0.0)")
            k(ind + "al_r = tl.where(s == BLOCK_T - 1, 1.0, tl.gather(A_r, nxt, 0))")
            k(ind + "al_i = tl.where(s == BLOCK_T - 1, 0.0, -tl.gather(A_i, nxt, 0))")
            k(ind + "Ca_r, Ca_i, Cb_r, Cb_i = tl.associative_scan((al_r, al_i, gd_r, gd_i), 0, _ssmc_compose_complex, "
              "reverse=True)")
            k(ind + "c_r = Ca_r * carry_r - Ca_i * carry_i + Cb_r")
            k(ind + "c_i = Ca_r * carry_i + Ca_i * carry_r + Cb_i")
            # The adjoint of the state entering the chunk: conj(Abar_0) c_0.
            k(ind + "carry_r = tl.sum(tl.where(s == 0, A_r * c_r + A_i * c_i, 0.0), axis=0)[None, :, :]")
            k(ind + "carry_i = tl.sum(tl.where(s == 0, A_r * c_i - A_i * c_r, 0.0), axis=0)[None, :, :]")
            k(ind + "gt_r = tl.where(m_t, c_r, 0.0)")
            k(ind + "gt_i = tl.where(m_t, c_i, 0.0)")
            # gAbar = c * conj(x_(t-1)), gEbar = c (real parts where they are real).
            ga = ("gt_r * xp_r + gt_i * xp_i", "gt_i * xp_r - gt_r * xp_i")
            add(abar, ga if self.cplx(abar) else ga[0], (True, True))
            add(ebar, ("gt_r", "gt_i") if self.cplx(ebar) else "gt_r", (True, True))
        else:
            k(ind + f"gd = tl.where(m_t & {both}, {gx} + Z, 0.0)")
            k(ind + "alpha = tl.where(s == BLOCK_T - 1, 1.0, tl.gather(A, nxt, 0))")
            k(ind + "Ca, Cb = tl.associative_scan((alpha, gd), 0, _ssmc_compose, reverse=True)")
            k(ind + "gtot = tl.where(m_t, Ca * carry + Cb, 0.0)")
            k(ind + "carry = tl.sum(tl.where(s == 0, A * (Ca * carry + Cb), 0.0), axis=0)[None, :, :]")
            add(abar, "gtot * x_prev", (True, True))
            add(ebar, "gtot", (True, True))
        for n in reversed(before):
            if n in grads:
                backprop(n)
        for v, n in zip(ins, self.needed):
            if n in grads:
                lay = pr.lay(n)
                off = f"(b * L + tp) * {self.numel(lay)} + {self.index(lay)}"
                mask = f"({self.mask(lay)}) & m_t & (Z == 0.0){self.first_only(n)}"
                gv = grads[n]
                if isinstance(gv, tuple):
                    k(ind + f"tl.atomic_add(g{v} + 2 * ({off}) + Z.to(tl.int32), {gv[0]} + Z, mask={mask})")
                    k(ind + f"tl.atomic_add(g{v} + 2 * ({off}) + 1 + Z.to(tl.int32), {gv[1]} + Z, mask={mask})")
                else:
                    k(ind + f"tl.atomic_add(g{v} + {off} + Z.to(tl.int32), {gv} + Z, mask={mask})")
        for v, n in zip(sts, self.statics):
            if n in grads:
                gv = grads[n]
                # Padding steps may hold inf or nan (log of a masked 0): left out of the sum.
                for acc, part in ((zip((f"g{v}_acc_r", f"g{v}_acc_i"), gv)) if isinstance(gv, tuple)
                                  else ((f"g{v}_acc", gv),)):
                    k(ind + f"{acc} = {acc} + tl.sum(tl.where(m_t, {part} + Z, 0.0), axis=0)[None, :, :]")
        k("        tl.debug_barrier()")
        if xc:
            k(f"    tl.store(gx0 + 2 * (b * {sx} + {xidx}), carry_r, mask={both})")
            k(f"    tl.store(gx0 + 2 * (b * {sx} + {xidx}) + 1, carry_i, mask={both})")
        else:
            k(f"    tl.store(gx0 + b * {sx} + {xidx}, carry, mask={both})")
        for v, n in zip(sts, self.statics):
            lay = pr.lay(n)
            off = self.index(lay)
            # Every contribution was summed down to the static's own shape as it was added
            # (`add`), so the accumulator's other rows and columns are broadcast copies:
            # one program's first row and column (first_only) adds it, summed no further.
            mask = f"({self.mask(lay)}) & (Z1 == 0.0){self.first_only(n)}"
            if self.cplx(n):
                for part, plus in (("_r", ""), ("_i", " + 1")):
                    k(f"    tl.atomic_add(g{v} + 2 * ({off}){plus} + Z1.to(tl.int32), g{v}_acc{part} + Z1, mask={mask})")
            else:
                k(f"    tl.atomic_add(g{v} + {off} + Z1.to(tl.int32), g{v}_acc + Z1, mask={mask})")
        return K

    def first_only(self, n: int) -> str:
        """A static value without rows (or columns) is one value per program: add it once."""
        has_rows, has_col = self.cls(n)
        cond = ""
        if not has_rows:
            cond += " & (rows == tl.program_id(1) * BLOCK_P)"
        if not has_col:
            cond += f" & (i_{self.col} == 0)"
        return cond

    def host_line(self, n: int) -> str:
        """The torch line of a value computed before the launch. The torch printer folds a
        product read by another product (or by a sum) into its reader's expression; when that
        reader runs in the kernel, the kernel reads the product as a tensor of its own."""
        pr = self.pr
        if n in self.needed and (n in pr.folded or n in pr.fused):
            was = (n in pr.folded, n in pr.fused)
            pr.folded.discard(n)
            pr.fused.discard(n)
            try:
                return pr.line(n)
            finally:
                if was[0]:
                    pr.folded.add(n)
                if was[1]:
                    pr.fused.add(n)
        return pr.line(n)

    def source(self) -> tuple[list[str], list[str]]:
        """(kernel lines at module level, launch lines inside _direction)."""
        g, pr = self.g, self.pr
        meta = g.meta
        state = meta["state"]
        abar, ebar = g.operands(meta["system"])
        # Printed before the kernel, which reads their layouts.
        host_lines = [line for n in self.host for line in [self.host_line(n)] if line]
        # Dims read as numbers inside the kernel (`u * Q`, with Q no dim of any tile) are
        # kernel arguments too.
        as_numbers = {g.op(i).get("name") for n in self.loop for i in g.operands(n) if g.op(i).kind == "dim"}
        sizes = sorted({d for n in self.needed + self.statics + self.exits + self.loop for d in self.lay(n)}
                       | set(self.sdims) | as_numbers)
        ins = [f"in{k}" for k in range(len(self.needed))]
        sts = [f"st{k}" for k in range(len(self.statics))]
        outs = [f"out{k}" for k in range(len(self.exits))]
        K = []
        k = K.append
        k("@triton.jit")
        k(f"def {self.name}(")
        k("    x0, xf, states,  # the state entering and leaving, and (SAVE) every CK tokens: [B, (L / CK + 1,) "
          + ", ".join(self.sdims) + "]")
        k("    tmap,  # (MAP) the direction's order: step t reads and writes token tmap[t]")
        for name, n in zip(ins, self.needed):
            k(f"    {name},  # {pr.var(n)}: [B, L, " + ", ".join(pr.lay(n)) + "]")
        for name, n in zip(sts, self.statics):
            k(f"    {name},  # {pr.var(n)}: [" + ", ".join(pr.lay(n)) + "]")
        for name, n in zip(outs, self.exits):
            k(f"    {name},  # {pr.var(n)}: [B, L, " + ", ".join(self.lay(n)) + "]")
        k("    L, " + ", ".join(f"s_{d}" for d in sizes) + ",")
        k("    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, SAVE: tl.constexpr, CK: tl.constexpr, MAP: tl.constexpr,"
          + (" BLOCK_T: tl.constexpr," if self.chunked else ""))
        k("):")
        chunked = self.chunked
        K.extend(self.program_indices())
        both = self.mask(self.sdims)
        sx = self.numel(self.sdims)
        xc = bool(meta["state_complex"])
        xoff = f"b * {sx} + {self.index(self.sdims)}"
        slots = "((L + CK - 1) // CK + 1)"
        if xc:
            k(f"    x_r = tl.load(x0 + 2 * ({xoff}), mask={both}, other=0.0)")
            k(f"    x_i = tl.load(x0 + 2 * ({xoff}) + 1, mask={both}, other=0.0)")
        else:
            k(f"    x = tl.load(x0 + {xoff}, mask={both}, other=0.0)")
        if self.matrix:
            k("    k_in = tl.arange(0, BLOCK_N)[None, None, :]  # the column a matrix entry reads")
        for name, n in zip(sts, self.statics):
            lay = pr.lay(n)
            loader = (self.matrix_load(name, "0", f"{name}_v", n) if self.is_matrix(n)
                      else self.load(name, self.index(lay), self.mask(lay), f"{name}_v", n))
            for line in loader:
                k("    " + line)
        if chunked:
            k("    s = tl.arange(0, BLOCK_T)[:, None, None]  # a chunk's steps")
            k("    for c in range(tl.cdiv(L, BLOCK_T)):")
            k("        t = c * BLOCK_T + s")
            k("        m_t = t < L")
            k("        tp = t")
            k("        if MAP:  # the direction's order, by an index map over time: no reordered copies")
            k("            tp = tl.load(tmap + t, mask=m_t, other=0)")
            k("        if SAVE:  # the state entering every CK tokens, for the backward kernel")
            k("            if (c * BLOCK_T) % CK == 0:")
            slot = f"(b * {slots} + (c * BLOCK_T) // CK) * {sx} + {self.index(self.sdims)}"
            for line in self.store("states", slot, ("x_r", "x_i") if xc else "x", both):
                k("                " + line)
        else:
            k("    for t in range(L):")
            k("        tp = t")
            k("        if MAP:  # the direction's order, by an index map over time: no reordered copies")
            k("            tp = tl.load(tmap + t)")

        def token_mask(lay):
            m = self.mask(lay)
            return (f"({m}) & m_t" if m != "True" else "m_t") if chunked else m

        for name, n in zip(ins, self.needed):
            lay = pr.lay(n)
            if self.is_matrix(n):
                loader = self.matrix_load(name, f"(b * L + tp) * {self.numel(lay)}", f"{name}_t", n)
            else:
                loader = self.load(name, f"(b * L + tp) * {self.numel(lay)} + {self.index(lay)}", token_mask(lay),
                                   f"{name}_t", n, token=True)
            for line in loader:
                k("        " + line)
        before = [n for n in self.loop if state not in g.ancestors(n)]
        after = [n for n in self.loop if state in g.ancestors(n)]
        for n in before:
            k(f"        # {pr.var(n)} [" + ", ".join(g.fact(n, 'dims')) + "]")
            for line in self.emit(n, f"v{pr.num[n]}"):
                k("        " + line)
        a, e = self.ref(abar), self.ref(ebar)
        if chunked:
            # x_t = Abar_t x_(t-1) + Ebar_t for the chunk's steps at once: the affine maps
            # composed by an associative scan over the chunk, then applied to the state
            # entering it. Steps past the end are the identity.
            k("        # the update for the chunk's steps at once, in registers: x_t = Abar_t x_(t-1) + Ebar_t")
            k("        Z = tl.zeros((BLOCK_T, BLOCK_P, BLOCK_N), dtype=x0.dtype.element_ty)")
            ar, ai = a if isinstance(a, tuple) else (a, None)
            er, ei = e if isinstance(e, tuple) else (e, None)
            if xc:
                k(f"        A_r = tl.where(m_t, {ar} + Z, 1.0)")
                k(f"        A_i = tl.where(m_t, {ai or '0.0'} + Z, 0.0)")
                k(f"        E_r = tl.where(m_t, {er} + Z, 0.0)")
                k(f"        E_i = tl.where(m_t, {ei or '0.0'} + Z, 0.0)")
                k("        A_r, A_i, E_r, E_i = tl.associative_scan((A_r, A_i, E_r, E_i), 0, _ssmc_compose_complex)")
                k("        xs_r = A_r * x_r - A_i * x_i + E_r  # the chunk's states [BLOCK_T, BLOCK_P, BLOCK_N]")
                k("        xs_i = A_r * x_i + A_i * x_r + E_i")
                k("        x_r = tl.sum(tl.where(s == BLOCK_T - 1, xs_r, 0.0), axis=0)[None, :, :]  # the last one")
                k("        x_i = tl.sum(tl.where(s == BLOCK_T - 1, xs_i, 0.0), axis=0)[None, :, :]")
                self.tile[state] = ("xs_r", "xs_i")
            else:
                k(f"        A = tl.where(m_t, {ar} + Z, 1.0)")
                k(f"        E = tl.where(m_t, {er} + Z, 0.0)")
                k("        A, E = tl.associative_scan((A, E), 0, _ssmc_compose)")
                k("        xs = A * x + E  # the chunk's states [BLOCK_T, BLOCK_P, BLOCK_N]")
                k("        x = tl.sum(tl.where(s == BLOCK_T - 1, xs, 0.0), axis=0)[None, :, :]  # the last one")
                self.tile[state] = "xs"
        else:
            # Matrix structures, one token at a time (no backward kernel, so no checkpoints):
            # x_n <- sum_k Abar[n, k] x_k + Ebar_n, the matrix tile [BLOCK_P, BLOCK_N, BLOCK_N].
            k("        # the update, in registers")
            ar, ai = a if isinstance(a, tuple) else (a, None)
            er, ei = e if isinstance(e, tuple) else (e, "0.0")
            if xc:
                if ai is None:
                    k(f"        x_r, x_i = tl.sum({ar} * x_r[:, None, :], axis=2) + {er}, "
                      f"tl.sum({ar} * x_i[:, None, :], axis=2) + {ei}")
                else:
                    k(f"        x_r, x_i = (tl.sum({ar} * x_r[:, None, :] - {ai} * x_i[:, None, :], axis=2) + {er}, "
                      f"tl.sum({ar} * x_i[:, None, :] + {ai} * x_r[:, None, :], axis=2) + {ei})")
                self.tile[state] = ("x_r", "x_i")
            else:
                k(f"        x = tl.sum({ar} * x[:, None, :], axis=2) + {er}")
                self.tile[state] = "x"
        for n in after:
            k(f"        # {pr.var(n)} [" + ", ".join(g.fact(n, 'dims')) + "]")
            for line in self.emit(n, f"v{pr.num[n]}"):
                k("        " + line)
        for name, n in zip(outs, self.exits):
            lay = self.lay(n)
            for line in self.store(name, f"(b * L + tp) * {self.numel(lay)} + {self.index(lay)}", self.tile[n],
                                   token_mask(lay)):
                k("        " + line)
        for line in self.store("xf", xoff, ("x_r", "x_i") if xc else "x", both):
            k("    " + line)
        k("")
        k("")
        self.forward_chunked = self.chunked
        # Backward kernels exist for the chunked form (elementwise structures).
        bwd = self.backward_source(sizes, ins, sts, outs) if self.forward_chunked and self.differentiable() else None
        self.has_backward = bool(bwd)
        if bwd:
            K.extend(["", ""] + bwd + ["", ""])
            k(f"{self.name}_key = rt.triton_module.register_kernel({self.name}, {self.name}_bwd, "
              f"chunked={self.forward_chunked})")
        else:
            k(f"{self.name}_key = rt.triton_module.register_kernel({self.name}, chunked={self.forward_chunked})")
        # The launch, inside _direction.
        H = []
        h = H.append
        if self.host:
            h("            # values over dims beyond the state's, for the whole sequence, in torch")
            for line in host_lines:
                h(f"            {line}")
        h("            # the recurrence fused into one Triton kernel (a torch.library op), the state in registers")
        rows = " * ".join(self.rows) or "1"

        def arg(text: str, n=None, complex_=False) -> str:
            # Complex tensors travel as real views: real and imaginary parts interleaved.
            return f"ops.real_view({text})" if (complex_ or (n is not None and self.cplx(n))) else text

        def back(text: str, complex_: bool) -> str:
            return f"torch.view_as_complex({text})" if complex_ else text

        xc = bool(g.meta["state_complex"])
        tensors = [arg(pr.var(n), n) for n in self.needed] \
            + [arg(f"ops.as_tensor({pr.var(n)}, _dt, _dev)", n) for n in self.statics]
        shapes, ranks = [], []
        for n in self.exits:
            dims = ["_B", "_L", *self.lay(n)] + (["2"] if self.cplx(n) else [])
            shapes += dims
            ranks.append(len(dims))
        square = "True" if self.matrix else "False"
        if reads_prev_state(g):
            h(f"            _x0 = _x  # the entering state, for prev({g.op(state).get('name')})")
        h(f"            _r = rt.triton_module.fused_scan({self.name}_key, {arg('_x', complex_=xc)}, "
          f"[{', '.join(tensors)}], [_L, {', '.join(sizes)}], _B, {rows}, {self.col}, {square}, "
          f"[{', '.join(shapes)}], {ranks!r}, self._grad_wanted, self._time_map(_dev))")
        for j, n in enumerate(self.exits):
            h(f"            _e{pr.num[n]} = [{back(f'_r[{j + 1}]', self.cplx(n))}]")
        h(f"            _x = {back('_r[0]', xc)}")
        if self.host_after:
            sname = g.op(state).get("name")
            h("            # the readout, in torch, from every state the kernel handed over")
            h(f"            {sname} = _e{pr.num[state]}[0]  # [B, L, " + ", ".join(self.sdims) + "]")
            for n in self.host_after:
                line = pr.line(n)
                if line:
                    h(f"            {line}")
            for n in self.orig_exits:
                h(f"            _e{pr.num[n]} = [{pr.var(n)}]")
        return K, H


def half_inputs(g: Graph, kernel_loop: set | None, has_backward: bool) -> tuple[str, ...]:
    """The inputs that may stay in half precision: every use of them is a kernel's (which
    widens them on load) or a projection's (which promotes), so no torch op computes in
    half precision. For the scan family only with a backward kernel (else gradients run
    the PyTorch chunk loop on them); for the SSD family, factors of the input term or the
    readout's coefficient (a product of several factors is formed in float32); none for
    the LTI convolution."""
    meta = g.meta
    if "lti_kernel" in meta:
        return ()
    ssd = meta.get("ssd")
    if ssd:
        ebar = g.operands(meta["system"])[1]
        internal = {n for n in g.ancestors(ebar) | {ebar} if g.op(n).kind == "mul"} | {ssd["product"]}
        factors = set(ssd["xside"]) | set(ssd["bside"]) | {ssd["c"]}
    elif not (has_backward and kernel_loop):
        return ()
    names = []
    for n in meta["inputs"]:
        users = {u for u, _ in g.users(n) if g.op(u).kind != "linear"}
        if ssd:
            safe = n in factors and users <= internal
        else:
            safe = users <= kernel_loop
        if safe:
            names.append(g.op(n).get("name"))
    return tuple(names)


def _namespaced(kernel: str) -> str:
    """Kernel text with Triton under the generated module's private names (`_tl`,
    `_triton`): a module-level name of the spec's, a block's class called `tl` or
    `triton`, must not rebind what the kernels use. Names from the spec in the kernel
    text (dims as `s_<dim>`, comments) are never followed by a dot, so the rewrite
    touches only Triton's."""
    kernel = re.sub(r"(?<![\w.])tl\.", "_tl.", kernel).replace("@triton.jit", "@_triton.jit")
    # Parameter annotations as the bare `constexpr`: Triton's interpreter recompiles a
    # kernel from its source with annotations left as strings, and reads only
    # "constexpr" or "tl.constexpr" (read at def time, before any class, otherwise).
    return kernel.replace(": _tl.constexpr", ": constexpr")


def render(compiled) -> str:
    """Python source: the PyTorch module, plus a fused Triton kernel per block."""
    ok, why = supports(compiled)
    if not ok:
        raise Unsupported(f"the Triton backend cannot generate {why}")
    kernels: list[str] = []
    built: list[_Kernel] = []

    def fused(g, pr, needed, loop, exits):
        kernel = _Kernel(g, pr, needed, loop, exits)
        kern, launch = kernel.source()
        kernels.append(_namespaced("\n".join(kern)))
        built.append(kernel)
        return launch

    classes = []
    for g in compiled.graphs:
        built.clear()
        # Systems in the SSD form run the SSD kernel family (chunk-local tl.dot matmuls, the
        # state carried across chunks in registers); the others one generated scan kernel.
        text = render_class(g, fused_loop=fused, ssd_fn="self._ssd", factors_fn="self._factors")
        base = "(rt.triton_module.TritonModule):"
        backward = bool(built) and all(kernel.has_backward for kernel in built)
        if backward:
            # Gradients by the generated backward kernel, not the PyTorch path.
            base += "\n    TRITON_BACKWARD = True"
        half = half_inputs(g, set(built[0].loop) if len(built) == 1 else None, backward)
        if half:
            base += f"\n    HALF_INPUTS = {half!r}  # read by the kernels as stored"
        classes.append(text.replace("(rt.TorchModule):", base, 1))
    head = module_header(compiled, "triton", "generated Triton kernels",
                         ("from ssmc.runtime import torch_ops as ops", "import ssmc.runtime.triton_module",
                          "import triton as _triton", "import triton.language as _tl",
                          "from triton.language import constexpr",
                          "from ssmc.runtime.triton_lib import _ssmc_compose, _ssmc_compose_complex  # noqa: F401"))
    return "\n\n\n".join([head, *kernels, *classes])
