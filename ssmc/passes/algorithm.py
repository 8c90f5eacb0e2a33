"""choose_algorithm: which algorithm the fast backends should use, and why.

  LTI, readout linear                        -> "fft_conv": y = K * u + skip, with the kernel
        K_k[P, Y', U'] = sum_S' W[P, Y', S'] Abar[P, S']^k c[P, S', U'] computed once, applied by FFT
        (for dense, DPLR and block-diagonal A, matrix powers of Abar over the state's last dim)
  selective, scalar A                         -> "ssd"        (Mamba-2's chunked matmul form)
  selective (or LTI outside the kernel form)  -> "chunked_scan" / "chunked_matrix_scan"

For the kernel form the pass also records which dims of the input pass straight through
to the state and the output ("channels" P: no reduction and no mixing over them), so
the kernel is per channel (S4D: one length-L filter per H) rather than a full
input-by-output matrix; the other input, state and output dims are mixed (S5: U' = H).

The NumPy reference always runs the sequential recurrence (it is the oracle); the
choice is advisory for the other backends, which may still scan short sequences.

Guarantees afterwards: meta["algorithm"] = {"name", "reason"}; for "fft_conv" also
meta["lti_kernel"] = {"P", "S", "U", "Y"} (tuples of dim names) and "matrix"; for "ssd" also
meta["ssd"] = {"z" (log-decay), "xside", "bside" (factors of Ebar without / with the
state's last dim), "sign", "c", "product" (C * x), "readout" (its sum over N)}.
"""
from __future__ import annotations

from ..ir.graph import Graph

_KERNEL_OPS = ("add", "sub", "mul", "div", "neg", "sum", "mean", "re", "im", "conj", "const", "dim", "param",
               "input", "state", "output", "exp", "log", "sqrt", "abs", "expm1", "log1p", "phi1", "arange",
               "pow", "tanh", "sigmoid", "softplus", "inv_softplus", "silu", "relu", "family",
               "matvec", "solve", "eye", "expm", "phi1m", "dplr", "blockdiag")


def _kernel_form(g: Graph) -> tuple[dict | None, str]:
    """The dims of the LTI kernel form, or None and why it does not apply."""
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


def _ssd_form(g: Graph) -> tuple[dict | None, str]:
    """Mamba-2's SSD form: Abar = exp(Z) with Z free of the state's last dim N, Ebar a
    product of factors with N (the "B side") and without (the "X side"), and the state
    read only through sum(C * x, N)."""
    meta = g.meta
    sysn = meta["system"]
    abar, ebar = g.operands(sysn)
    n_dim = meta["state_dims"][-1]
    if g.op(abar).kind != "exp":
        return None, "the state matrix's discretization is not an exponential"
    (z,) = g.operands(abar)
    leaves, sign = _mul_leaves(g, ebar)
    bside = [f for f in leaves if n_dim in g.fact(f, "dims")]
    xside = [f for f in leaves if n_dim not in g.fact(f, "dims")]
    if any(g.op(f).kind in ("const", "dim") for f in bside) or not bside:
        return None, f"the input term has no factor over {n_dim}"
    covered = set(g.fact(z, "dims")).union(*(g.fact(f, "dims") for f in leaves))
    if not set(meta["state_dims"]) <= covered or not set(g.fact(z, "dims")) <= set(meta["state_dims"]):
        return None, "the input term is broadcast over some state dims"
    state = meta["state"]
    users = g.users(state)
    if len(users) != 1 or g.op(users[0][0]).kind != "mul":
        return None, "the readout does not read the state as sum(C * x, N)"
    m = users[0][0]
    musers = g.users(m)
    if len(musers) != 1 or g.op(musers[0][0]).kind != "sum" \
            or [d for d, _ in g.op(musers[0][0]).get("dims")] != [n_dim]:
        return None, "the readout does not read the state as sum(C * x, N)"
    c = [i for i in g.operands(m) if i != state]
    if len(c) != 1 or g.op(c[0]).kind in ("const", "dim"):
        return None, "the readout does not read the state as sum(C * x, N)"
    return dict(z=z, xside=xside, bside=bside, sign=sign, c=c[0], product=m, readout=musers[0][0]), ""


def choose_algorithm(g: Graph) -> Graph:
    """Record the algorithm the system admits, with the reason."""
    g = g.copy()
    cls = g.meta["classification"]
    structure = g.op(g.meta["system"]).get("structure")
    per_token = [k for k in ("A", "step", "input_coef", "readout") if cls.get(k) == "token"]
    chunked = ("a chunked scan: state-sized values exist one chunk of tokens at a time, the recurrence runs "
               "within each chunk and carries the state across chunk boundaries")
    if cls["lti"]:
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
    elif structure == "scalar":
        form, why = _ssd_form(g)
        if form is not None:
            name = "ssd"
            reason = (f"selective ({', '.join(per_token) or 'readout'} per-token) with a scalar-times-identity state "
                      "matrix: the SSD chunked matmul form (Mamba-2) applies: within a chunk, outputs by masked "
                      "matmuls of the log-decays, C and B; across chunks, the state carried by one recurrence step")
            g.meta["ssd"] = form
        else:
            name = "chunked_scan"
            reason = f"selective with a scalar state matrix, but {why}: {chunked}"
    elif structure == "diagonal":
        name = "chunked_scan"
        reason = f"selective ({', '.join(per_token)} per-token) with a diagonal state matrix: {chunked}"
    else:
        name = "chunked_matrix_scan"
        reason = (f"selective ({', '.join(per_token)} per-token) with a {structure} state matrix: {chunked}, "
                  "with matrix products")
    g.meta["algorithm"] = dict(name=name, reason=reason)
    return g
