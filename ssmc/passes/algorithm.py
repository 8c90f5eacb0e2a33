"""choose_algorithm: which algorithm the fast backends should use, and why.

  LTI, readout linear                        -> "fft_conv": y = K * u + skip, with the kernel
        K_k[P, Y', U'] = sum_S' W[P, Y', S'] Abar[P, S']^k c[P, S', U'] computed once, applied by FFT
        (for dense, DPLR and block-diagonal A, matrix powers of Abar over the state's last dim)
  selective, decay free of the readout's N    -> "ssd"        (Mamba-2's chunked matmul form)
  selective, real dplr(Lambda, P, Q) with a    -> "delta_chunked" (DeltaNet's chunked WY form)
        scalar Lambda, low-rank P, Q, E = X * K and readout sum(C * x, N)
  selective (or LTI outside the kernel form)  -> "chunked_scan" / "chunked_matrix_scan"
  a readout of prev(x) (the state before the update)  -> "chunked_scan" / "chunked_matrix_scan"
  a `global` scan (outputs read x_L)          -> "chunked_scan" / "chunked_matrix_scan" (state first)

The SSD form does not depend on spelling: N is the dim the readout sums over (the
state's dims may come in any order: x[Hd, P, N] or x[N, Hd, P]); the structure may be
scalar or a diagonal A that does not vary along N; the decay Abar may be an exp(...)
(dynamics with zoh/zoh_euler, or written so) or any decay known to be positive, whose
logarithm the pass then adds to the graph (sigmoid(v) -> -softplus(-v), a product ->
the sum of the logs, a static constant like 1 - 2 ** (-5 - arange(H)) -> log of it).
Where a form is not chosen, the reason says why ("SSD not chosen: ...").

For the kernel form the pass also records which dims of the input pass straight through
to the state and the output ("channels" P: no reduction and no mixing over them), so
the kernel is per channel (S4D: one length-L filter per H) rather than a full
input-by-output matrix; the other input, state and output dims are mixed (S5: U' = H).

The NumPy reference always runs the sequential recurrence (it is the oracle, and reads
Abar as written); the choice is advisory for the other backends, which may still scan
short sequences.

Guarantees afterwards: meta["algorithm"] = {"name", "reason"}; for "fft_conv" also
meta["lti_kernel"] = {"P", "S", "U", "Y"} (tuples of dim names) and "matrix"; for "ssd" also
meta["ssd"] = {"z" (log-decay: Abar = exp(z)), "n" (the readout's summed dim N), "xside",
"bside" (factors of Ebar without / with N), "sign", "c", "product" (C * x), "readout" (its
sum over N)}; for "delta_chunked" meta["delta"] = {"z" (log of Lambda), "p", "q", "rank" (the rank
dim or None), "n", "xside", "kside", "sign", "c", "product", "readout"}. Nodes the pass adds (the log-decay) are read only by the fast backends.
"""
from __future__ import annotations

import math

from ..ir.graph import Graph, op
from ..ir.systems import is_multi
from .shapes import annotate_shapes, dplr_parts
from .time import annotate_time

_KERNEL_OPS = ("add", "sub", "mul", "div", "neg", "sum", "mean", "re", "im", "conj", "const", "dim", "param",
               "input", "state", "output", "exp", "log", "sqrt", "abs", "expm1", "log1p", "phi1", "arange",
               "pow", "tanh", "sigmoid", "softplus", "inv_softplus", "silu", "relu", "family",
               "gelu", "gelu_tanh", "erf", "min", "max", "clamp", "clamp_min", "clamp_max",
               "matvec", "solve", "eye", "expm", "phi1m", "dplr", "blockdiag", "linear")


_COMPLEX_INPUT = "an input is complex (the kernel and SSD forms take real inputs)"


def _complex_input(g: Graph) -> bool:
    return any(g.op(i).get("complex") for i in g.meta["inputs"])


def _kernel_form(g: Graph) -> tuple[dict | None, str]:
    """The dims of the LTI kernel form, or None and why it does not apply."""
    if _complex_input(g):
        return None, _COMPLEX_INPUT
    meta = g.meta
    sysn = meta["system"]
    structure = g.op(sysn).get("structure")
    abar, ebar = g.operands(sysn)
    y = g.operands(meta["output"])[0]
    u = meta["inputs"][0]
    token_side = set()
    for root in (ebar, y):
        for n in g.ancestors(root) | {root}:
            if g.fact(n, "time") == "token":
                token_side.add(n)
    for n in token_side:
        k = g.op(n).kind
        if k == "input" and n != u:
            return None, "an extra input enters the input term or the readout"
        if k not in _KERNEL_OPS:
            return None, f"the input term or the readout uses {k}()"
    if g.fact(y, "complex"):
        return None, "the output is complex"
    reduced = set()
    for n in token_side:
        if g.op(n).kind in ("sum", "mean"):
            reduced |= {d for d, _ in g.op(n).get("dims")}
        elif g.op(n).kind == "linear":
            # A linear(...) (no bias in an LTI input term) mixes every dim of its operand.
            reduced |= set(g.fact(g.operands(n)[0], "dims"))
    sd, ud, yd = tuple(meta["state_dims"]), tuple(g.fact(u, "dims")), tuple(g.fact(y, "dims"))
    channels = tuple(d for d in sd if d in ud and d in yd and d not in reduced)
    matrix = structure not in ("diagonal", "scalar")
    if matrix and channels != sd[:-1]:
        return None, (f"its kernel needs powers of a {structure} matrix over state dims beyond "
                      f"[{', '.join(sd[-1:])}], which are not generated yet")
    return dict(P=channels, S=sd, U=ud, Y=yd, matrix=matrix), ""


def _mul_leaves(g: Graph, n: int, sign: int = 1) -> tuple[list[int], int]:
    """The factors of a product tree (through mul and neg), and its sign."""
    k = g.op(n).kind
    if k == "mul":
        out = []
        for i in g.operands(n):
            leaves, sign = _mul_leaves(g, i, sign)
            out += leaves
        return out, sign
    if k == "neg":
        return _mul_leaves(g, g.operands(n)[0], -sign)
    return [n], sign


def _interval(g: Graph, n: int) -> tuple[float, float] | None:
    """Bounds of a static value computed from numbers and dims alone (None otherwise, or when
    unknown). Dims may be set when the module is made, so a dim is only known to be >= 1."""
    o = g.op(n)
    k = o.kind
    if g.fact(n, "complex"):
        return None
    if k == "const":
        v = o.get("value")
        return (float(v), float(v)) if isinstance(v, (int, float)) else None
    if k == "dim":
        return (1.0, math.inf)
    if k == "arange":
        return (0.0, math.inf)
    args = [_interval(g, i) for i in g.operands(n)]
    if not args or any(a is None for a in args):
        return None
    a = args[0]
    b = args[1] if len(args) > 1 else None
    try:
        if k == "neg":
            r = (-a[1], -a[0])
        elif k == "add":
            r = (a[0] + b[0], a[1] + b[1])
        elif k == "sub":
            r = (a[0] - b[1], a[1] - b[0])
        elif k == "mul":
            ps = [x * y for x in a for y in b]
            r = (min(ps), max(ps))
        elif k == "div":
            if b[0] <= 0 <= b[1]:
                return None
            ps = [x / y for x in a for y in b]
            r = (min(ps), max(ps))
        elif k == "pow":
            if a[0] <= 0:
                return None
            # a ** b = exp(b log a), monotone in each of b and log a.
            ps = [y * math.log(x) if x != math.inf else (math.inf if y > 0 else -math.inf if y < 0 else 0.0)
                  for x in a for y in b]
            r = (_exp(min(ps)), _exp(max(ps)))
        elif k in ("exp", "sigmoid", "softplus", "tanh", "sqrt", "log"):
            if (k == "log" and a[0] <= 0) or (k == "sqrt" and a[0] < 0):
                return None
            f = {"exp": _exp, "log": lambda v: math.log(v) if v != math.inf else math.inf,
                 "sqrt": math.sqrt, "tanh": math.tanh,
                 "sigmoid": lambda v: 1 / (1 + _exp(-v)), "softplus": lambda v: v if v > 30 else math.log1p(_exp(v))}[k]
            r = (f(a[0]), f(a[1]))
        else:
            return None
    except (OverflowError, ValueError, ZeroDivisionError):
        return None
    return None if any(math.isnan(v) for v in r) else r


def _exp(v: float) -> float:
    return math.inf if v > 700 else math.exp(v)


def _positive(g: Graph, n: int) -> bool:
    """Whether a real value is > 0 for every parameter value and input (by its form)."""
    o = g.op(n)
    k = o.kind
    if g.fact(n, "complex"):
        return False
    if k in ("exp", "sigmoid", "softplus"):
        return True
    if k in ("mul", "div", "add"):
        return all(_positive(g, i) for i in g.operands(n))
    if k == "pow":
        return _positive(g, g.operands(n)[0])
    r = _interval(g, n)
    return r is not None and r[0] > 0


def _log_plan(g: Graph, n: int):
    """log(n) as a plan of new nodes, or None when n is not known to be positive. exp(z) gives
    z itself, sigmoid(v) gives -softplus(-v) (exact where sigmoid underflows), products and
    quotients the sums and differences of the logs of their factors, a ** b gives b log(a),
    a positive number its
    logarithm. A plan is ("node", m) (an existing node), ("exp_arg", m) (the operand of the
    exp node m), ("const", value) or (kind, *plans)."""
    k = g.op(n).kind
    if g.fact(n, "complex"):
        return None
    if k == "exp":
        return ("exp_arg", n)
    if k == "const" and _positive(g, n):
        return ("const", math.log(g.op(n).get("value")))
    if k == "sigmoid":
        return ("neg", ("softplus", ("neg", ("node", g.operands(n)[0]))))
    if k in ("mul", "div"):
        a, b = (_log_plan(g, i) for i in g.operands(n))
        if a is None or b is None:
            return None
        return ("add" if k == "mul" else "sub", a, b)
    if k == "pow" and not g.fact(g.operands(n)[1], "complex"):
        # log(a ** b) = b log(a): no power that could underflow to 0 before its logarithm.
        a = _log_plan(g, g.operands(n)[0])
        return None if a is None else ("mul", ("node", g.operands(n)[1]), a)
    return ("log", ("node", n)) if _positive(g, n) else None


def _build(g: Graph, plan, span, new: list[int]) -> int:
    """The nodes of a plan (see _log_plan); new ones are appended to `new`."""
    kind, *args = plan
    if kind == "node":
        return args[0]
    if kind == "exp_arg":
        return g.operands(args[0])[0]
    if kind == "const":
        m = g.add(op("const", span, value=args[0]))
    else:
        m = g.add(op(kind, span), *(_build(g, a, span, new) for a in args))
    new.append(m)
    return m


_READOUT = "the readout does not read the state as sum(C * x, N) for one dim N"


def _ssd_form(g: Graph) -> tuple[dict | None, str]:
    """Mamba-2's SSD form: the state read only through sum(C * x, N) for one state dim N,
    Abar = exp(Z) with the log-decay Z free of N (an exp(...) as written, or the log of a
    decay known to be positive: sigmoid(v), a positive constant, products of these), and
    Ebar a product of factors with N (the "B side") and without (the "X side"). The state's
    dims may come in any order; the structure may be scalar or a diagonal A free of N.
    Returns a plan: the log-decay is built by choose_algorithm once the form is chosen."""
    if _complex_input(g):
        return None, _COMPLEX_INPUT
    meta = g.meta
    sysn = meta["system"]
    abar, ebar = g.operands(sysn)
    sdims = tuple(meta["state_dims"])
    state = meta["state"]
    users = g.users(state)
    if len(users) != 1 or g.op(users[0][0]).kind != "mul":
        return None, _READOUT
    m = users[0][0]
    musers = g.users(m)
    if len(musers) != 1 or g.op(musers[0][0]).kind != "sum" or len(g.op(musers[0][0]).get("dims")) != 1:
        return None, _READOUT
    n_dim = g.op(musers[0][0]).get("dims")[0][0]
    c = [i for i in g.operands(m) if i != state]
    if n_dim not in sdims or len(c) != 1 or g.op(c[0]).kind in ("const", "dim"):
        return None, _READOUT
    structure = g.op(sysn).get("structure")
    if g.op(abar).kind == "exp" and structure == "scalar":
        plan = ("exp_arg", abar)
    elif g.fact(abar, "complex"):
        return None, "the state matrix's decay is complex"
    else:
        plan = _log_plan(g, abar)
        if plan is None:
            return None, ("the decay is not known to be positive (write it as exp(...), sigmoid(...) or a "
                          "positive constant to get its logarithm)")
    zdims = g.fact(g.operands(abar)[0] if plan[0] == "exp_arg" else abar, "dims")
    if n_dim in zdims:
        return None, (f"the decay varies along {n_dim}, the dim the readout sums over (a {structure} state "
                      f"matrix over {n_dim}, not a scalar per {', '.join(d for d in sdims if d != n_dim) or 'state'})")
    leaves, sign = _mul_leaves(g, ebar)
    bside = [f for f in leaves if n_dim in g.fact(f, "dims")]
    xside = [f for f in leaves if n_dim not in g.fact(f, "dims")]
    if any(g.op(f).kind in ("const", "dim") for f in bside) or not bside:
        return None, f"the input term has no factor over {n_dim}"
    if not xside:
        return None, f"the input term has no factor without {n_dim}"
    covered = set(zdims).union(*(g.fact(f, "dims") for f in leaves))
    if not set(sdims) <= covered or not set(zdims) <= set(sdims):
        return None, "the input term is broadcast over some state dims"
    return dict(z=plan, n=n_dim, xside=xside, bside=bside, sign=sign, c=c[0], product=m,
                readout=musers[0][0]), ""


def _readout(g: Graph):
    """(the product C * x, its sum over N, C, N) where the state is read only as sum(C * x, N)."""
    state = g.meta["state"]
    users = g.users(state)
    if len(users) != 1 or g.op(users[0][0]).kind != "mul":
        return None
    m = users[0][0]
    musers = g.users(m)
    if len(musers) != 1 or g.op(musers[0][0]).kind != "sum" or len(g.op(musers[0][0]).get("dims")) != 1:
        return None
    c = [i for i in g.operands(m) if i != state]
    if len(c) != 1 or g.op(c[0]).kind in ("const", "dim"):
        return None
    return m, musers[0][0], c[0], g.op(musers[0][0]).get("dims")[0][0]


def _delta_form(g: Graph) -> tuple[dict | None, str]:
    """The chunked delta-rule form (DeltaNet, Gated DeltaNet, Longhorn): a real state
    x[..., N] with the transition dplr(Lambda, P, Q) = Lambda I - P Q^T per token, Lambda a
    positive scalar per head (no N; a number such as 1, a sigmoid, an exp), P and Q rank one
    ([..., N]) or of a small rank R, the input term a product X * K of factors without N
    (X, the "value side") and with N (K), and the readout sum(C * x, N), N the state's
    last dim. Rows of the state (the dims other than N) evolve independently:
      x_t = Lambda_t x_{t-1} - (x_{t-1} Q_t) P_t^T + X_t K_t^T,
    which runtime/torch_ops.delta_chunk evaluates with matmuls per chunk of tokens
    (the WY / UT-transform representation). Returns a plan like _ssd_form's."""
    meta = g.meta
    sysn = meta["system"]
    abar, ebar = g.operands(sysn)
    sdims = tuple(meta["state_dims"])
    nd = sdims[-1]
    if is_multi(g):
        return None, "the block has several states (the delta-rule form is generated for one-state blocks)"
    if g.op(abar).kind != "dplr":
        return None, "the state matrix is not written dplr(Lambda, P, Q) in the recurrence (it is discretized)"
    if meta["state_complex"]:
        return None, "the state is complex (the delta-rule form is for a real state)"
    lam, p, q = g.operands(abar)
    _, vector, rank = dplr_parts(g, g.fact(lam, "dims"), g.fact(p, "dims"), g.fact(q, "dims"))
    if vector:
        return None, f"Lambda varies along {nd} (the delta-rule form needs a scalar Lambda per head)"
    if any(g.fact(i, "complex") for i in (lam, p, q)):
        return None, "the state matrix is complex"
    plan = _log_plan(g, lam)
    if plan is None:
        return None, ("Lambda is not known to be positive (write it as 1, exp(...), sigmoid(...) or a positive "
                      "constant to get its logarithm)")
    r = _readout(g)
    if r is None or r[3] != nd:
        return None, f"the readout does not read the state as sum(C * x, {nd}), {nd} the state's last dim"
    product, readout, c, _ = r
    leaves, sign = _mul_leaves(g, ebar)
    kside = [f for f in leaves if nd in g.fact(f, "dims")]
    xside = [f for f in leaves if nd not in g.fact(f, "dims")]
    if not kside or any(g.op(f).kind in ("const", "dim") for f in kside):
        return None, f"the input term has no factor over {nd}"
    if not xside:
        return None, f"the input term has no factor without {nd}"
    return dict(z=plan, p=p, q=q, rank=rank, n=nd, xside=xside, kside=kside, sign=sign, c=c, product=product,
                readout=readout), ""


def choose_algorithm(g: Graph) -> Graph:
    """Record the algorithm the system admits, with the reason."""
    g = g.copy()
    cls = g.meta["classification"]
    structure = g.op(g.meta["system"]).get("structure")
    per_token = [k for k in ("A", "step", "input_coef", "forcing", "readout") if cls.get(k) == "token"]
    chunked = ("a chunked scan: state-sized values exist one chunk of tokens at a time, the recurrence runs "
               "within each chunk and carries the state across chunk boundaries")
    shifted = [n for n in g.nodes() if g.op(n).kind == "prev_state"]
    if g.meta["scan"]["order"] == "global":
        # Every output reads x_L, which no per-token form (convolution, SSD's masked
        # matmuls) gives: the state's pass runs alone, then the readout with x_L.
        name = "chunked_scan" if structure in ("diagonal", "scalar") else "chunked_matrix_scan"
        reason = ("a global scan: every token's output reads the state after the whole sequence, so the state "
                  f"is scanned first ({chunked}) and the readout then evaluated per token from the final state")
    elif shifted:
        # prev(x) reads the state before each token's update: neither the convolution
        # kernel nor the SSD form's masks are generated shifted, so the scan runs.
        name = "chunked_scan" if structure in ("diagonal", "scalar") else "chunked_matrix_scan"
        reason = (f"the readout reads prev({g.op(g.meta['state']).get('name')}), the state before each token's "
                  f"update (no convolution or SSD form is generated for it): {chunked}")
    elif cls["lti"] and is_multi(g):
        # The convolution form gives the output from the input directly; with several states
        # the readout combines them (and other states may read this one per token): it scans.
        name = "chunked_scan" if structure in ("diagonal", "scalar") else "chunked_matrix_scan"
        reason = (f"the system is LTI, but in a block with several states each state's per-token values are "
                  f"scanned (no convolution form): {chunked}")
    elif cls["lti"]:
        form, why = _kernel_form(g)
        if form is not None:
            name = "fft_conv"
            mixed = [d for d in form["U"] if d not in form["P"]]
            reason = ("the system is LTI (state matrix, step, input coefficient and readout are static), so the "
                      "output is a convolution of the input with a kernel computed once, applied by FFT in "
                      f"O(L log L); the kernel is per channel [{', '.join(form['P'])}]"
                      + (f" and mixes [{', '.join(mixed)}]" if mixed else "")
                      + "; short sequences, initial states and step() scan instead")
            g.meta["lti_kernel"] = form
        else:
            name = "chunked_scan" if structure in ("diagonal", "scalar") else "chunked_matrix_scan"
            reason = f"the system is LTI, but {why}: {chunked}"
    elif not cls["readout_linear"] and not per_token:
        name = "chunked_scan" if structure in ("diagonal", "scalar") else "chunked_matrix_scan"
        reason = f"the readout is not linear in the state, so no convolution form exists: {chunked}"
    elif structure in ("scalar", "diagonal"):
        form, why = _ssd_form(g)
        if form is not None:
            name = "ssd"
            new: list[int] = []
            abar = g.operands(g.meta["system"])[0]
            written = form["z"][0] == "exp_arg" and form["z"][1] == abar
            form["z"] = _build(g, form["z"], g.op(abar).span, new)
            annotate_shapes(g, new)
            annotate_time(g, new)
            shape = ("a scalar-times-identity state matrix" if structure == "scalar" else
                     f"a diagonal state matrix that does not vary along {form['n']}")
            decay = "" if written else "; the decay is not written as exp(...), so its logarithm is formed (log(Abar))"
            reason = (f"selective ({', '.join(per_token) or 'readout'} per-token) with {shape}: the SSD chunked "
                      "matmul form (Mamba-2) applies: within a chunk, outputs by masked matmuls of the log-decays, "
                      "C and B; across chunks, the state carried by one recurrence step" + decay)
            g.meta["ssd"] = form
        else:
            name = "chunked_scan"
            reason = (f"selective ({', '.join(per_token) or 'readout'} per-token) with a {structure} state matrix: "
                      f"{chunked}; SSD not chosen: {why}")
    elif structure == "dplr":
        form, why = _delta_form(g)
        if form is not None:
            name = "delta_chunked"
            new = []
            lam = g.operands(g.operands(g.meta["system"])[0])[0]
            form["z"] = _build(g, form["z"], g.op(lam).span, new)
            annotate_shapes(g, new)
            annotate_time(g, new)
            rank = f"rank {form['rank']}" if form["rank"] else "rank-one"
            reason = (f"selective ({', '.join(per_token)} per-token) with a real dplr state matrix "
                      f"Lambda I - P Q^T, Lambda a scalar per head and {rank} P, Q: the chunked delta-rule form "
                      "(DeltaNet / Gated DeltaNet): within a chunk, a unit lower-triangular solve built from "
                      "Q P^T (the WY / UT transform) and masked matmuls of the cumulative log-decays give the "
                      "outputs; across chunks, the state carried by one matrix product per chunk; "
                      "the per-token N x N matrices are never made")
            g.meta["delta"] = form
        else:
            name = "chunked_matrix_scan"
            reason = (f"selective ({', '.join(per_token)} per-token) with a dplr state matrix: {chunked}, "
                      f"with matrix products; delta-rule form not chosen: {why}")
    else:
        name = "chunked_matrix_scan"
        reason = (f"selective ({', '.join(per_token)} per-token) with a {structure} state matrix: {chunked}, "
                  f"with matrix products; SSD not chosen: the state matrix is {structure}, not scalar or diagonal")
    g.meta["algorithm"] = dict(name=name, reason=reason)
    return g
