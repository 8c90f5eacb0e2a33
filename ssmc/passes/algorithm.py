"""choose_algorithm: which algorithm the fast backends should use, and why.

  LTI, readout linear in the state     -> "fft_conv"   (kernel K_k = C Abar^k Ebar-coef, then FFT)
  selective, scalar A                   -> "ssd"        (Mamba-2's chunked matmul form)
  selective, diagonal A                 -> "chunked_scan"
  selective, dense / dplr / block A     -> "chunked_matrix_scan"
  anything else                         -> "sequential"

The NumPy reference always runs the sequential recurrence (it is the oracle); the
choice is advisory for the other backends. Short sequences may still scan.

Guarantees afterwards: meta["algorithm"] = {"name", "reason"}.
"""
from __future__ import annotations

from ..ir.graph import Graph


def choose_algorithm(g: Graph) -> Graph:
    """Record the algorithm the system admits, with the reason."""
    g = g.copy()
    cls = g.meta["classification"]
    structure = g.op(g.meta["system"]).get("structure")
    per_token = [k for k in ("A", "step", "input_coef", "readout") if cls.get(k) == "token"]
    if cls["lti"]:
        name = "fft_conv"
        reason = ("the system is LTI (state matrix, step, input coefficient and readout are static), so the "
                  "output is a convolution of the input with a kernel computed once, applied by FFT in "
                  "O(L log L); short sequences scan instead")
    elif not cls["readout_linear"] and not per_token:
        name = "sequential"
        reason = "the readout is not linear in the state, so no convolution form exists"
    elif structure == "scalar":
        name = "ssd"
        reason = (f"selective ({', '.join(per_token) or 'readout'} per-token) with a scalar-times-identity state "
                  "matrix: the SSD chunked matmul form (Mamba-2) applies")
    elif structure == "diagonal":
        name = "chunked_scan"
        reason = (f"selective ({', '.join(per_token)} per-token) with a diagonal state matrix: a chunked "
                  "scan with cumulative log-decays inside chunks and a recurrence across chunk boundaries")
    else:
        name = "chunked_matrix_scan"
        reason = (f"selective ({', '.join(per_token)} per-token) with a {structure} state matrix: a chunked "
                  "scan with matrix products")
    g.meta["algorithm"] = dict(name=name, reason=reason)
    return g
