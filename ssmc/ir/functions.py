"""The language's vocabulary: functions, initializers, rules, structures, scan orders, reserved words."""
from __future__ import annotations

import builtins
import difflib
import keyword

# Elementwise functions of one argument.
ELEMENTWISE = ("exp", "log", "expm1", "log1p", "sqrt", "abs", "tanh", "sigmoid", "relu",
               "softplus", "inv_softplus", "silu", "re", "im", "conj", "gelu", "gelu_tanh", "erf")
# Elementwise functions of two values, broadcast by name like `+`.
PAIRWISE = ("min", "max")
# clamp(e, lo, hi) / clamp(e, min = lo, max = hi): the IR kind says which bounds it has;
# its operands are e, then the bounds in that order.
CLAMPS = {"clamp": ("min", "max"), "clamp_min": ("min",), "clamp_max": ("max",)}
# Functions that need real arguments (a complex one is an error).
REAL_ONLY = ("softplus", "inv_softplus", "silu", "sigmoid", "relu", "tanh", "gelu", "gelu_tanh", "erf",
             "min", "max", "clamp", "clamp_min", "clamp_max")
REDUCTIONS = ("sum", "mean")
# Calls that take a value and name dims: (min args, max args or None).
SPECIAL = {"sum": (2, None), "mean": (2, None), "arange": (1, 1), "linear": (2, None),
           "conv": (2, 2), "dplr": (3, 3), "prev": (1, 2)}
# Initializer-only calls and their number of scalar arguments.
RANDOM = {"normal": 2, "uniform": 2, "log_uniform": 2, "lru_ring": 2}
FAMILIES = ("hippo_legs", "hippo_legs_B", "hippo_legt", "hippo_legt_B", "hippo_lagt", "hippo_lagt_B",
            "hippo_fout", "hippo_fout_B", "s4d_lin", "s4d_inv", "s4d_real", "hippo_legs_diag")
# Families whose value is an N x N matrix (dims [N, N]); the others are vectors [N].
MATRIX_FAMILIES = ("hippo_legs", "hippo_legt", "hippo_lagt", "hippo_fout")
COMPLEX_FAMILIES = ("s4d_lin", "s4d_inv", "hippo_legs_diag")
CONSTANT_INITS = ("zeros", "ones")
CONSTANTS = {"pi": 3.141592653589793}

RULES = ("zoh", "bilinear", "euler", "backward_euler", "zoh_euler")
STRUCTURES = ("diagonal", "scalar", "dense", "dplr", "block_diagonal")
MATRIX_STRUCTURES = ("dense", "dplr", "block_diagonal")
SCAN_ORDERS = ("causal", "reverse", "bidirectional", "cross2d", "global")
MERGES = ("add", "mean", "concat")
PARAM_SHARING = ("shared", "separate")

KEYWORDS = ("ssm", "dims", "input", "state", "param", "dynamics", "discretize", "recurrence",
            "scan", "output", "complex", "frozen")
# Names the generated code uses itself.
GENERATED = ("np", "torch", "rt", "ops", "math", "self", "true", "false", "d", "p", "gen", "inputs", "state", "tails",
             "need_final")

ALL_FUNCTIONS = ELEMENTWISE + PAIRWISE + ("clamp",) + tuple(SPECIAL) + tuple(RANDOM) + FAMILIES + CONSTANT_INITS

RESERVED = frozenset(KEYWORDS + ALL_FUNCTIONS + tuple(CONSTANTS) + GENERATED
                     + tuple(keyword.kwlist) + tuple(keyword.softkwlist) + tuple(dir(builtins)))


def nearest(name: str, candidates) -> str | None:
    """The closest candidate by edit similarity, for 'did you mean' hints."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(name: str, candidates, what: str = "") -> str:
    best = nearest(name, candidates)
    if best:
        return f"did you mean '{best}'?"
    cands = sorted(candidates)
    if what and cands and len(cands) <= 12:
        return f"known {what}: " + ", ".join(cands)
    return ""
