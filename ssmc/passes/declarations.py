"""check_declarations: every declared name is legal and unique, dims evaluate, the
block has all its parts, and the scan order and discretization rule are known.

Guarantees afterwards:
  meta["dims"]       [(name, expr_tree, default_value)] in declaration order
  meta["scan"]       {"order", "merge", "params", "rows", "cols", "directions"}
  meta["rule"]       the discretization rule (None for `recurrence`)
  a single system node: `dynamics(A, E, step)` or `recurrence(Abar, E)`.

Example: `dims H = 4, R = ceil(H / 16)` -> meta["dims"] = [("H", 4, 4), ("R", ("ceil", ...), 1)].
"""
from __future__ import annotations

import cmath
import math
import re
from fractions import Fraction

from ..dims import eval_dim
from ..errors import SpecError, Span
from ..frontend import ast
from ..ir import functions as F
from ..ir.graph import Graph, op
from ..ir.systems import SYSTEM_KEYS, focus, save

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
DIM_FUNCS = ("ceil", "floor", "min", "max")
MAX_DIM = 2 ** 40


# The keyword arguments of the generated class's constructor and of its forward() and
# step() (ssmc/runtime/module.py, torch_module.py, triton_module.py). Dims are passed to
# the constructor (and cross2d's rows and cols to forward) and inputs after the first to
# forward() and step() by their names, so no dim or input may take one of these. Params,
# values, states and outputs may take any name, module attributes included (the runtime
# keeps params apart from the module's own attributes). The regression tests check this
# table against the classes' signatures, so it cannot go stale unnoticed.
MODULE_KEYWORDS = {
    "seed": "the constructor", "generator": "the constructor", "dtype": "the constructor",
    "device": "the constructor", "chunk_size": "the constructor", "algorithm": "the constructor",
    "initial_state": "forward()", "return_state": "forward()", "cu_seqlens": "forward()",
}


def _err(g, msg, span, hint=None):
    return SpecError(msg, span, g.meta["source"], hint)


def _a(what: str) -> str:
    return ("an " if what[:1] in "aeiou" else "a ") + what


def check_name(g: Graph, name: str, span: Span, what: str) -> None:
    if not IDENT.match(name):
        raise _err(g, f"'{name}' is not a valid {what} name", span, hint="names match [A-Za-z_][A-Za-z0-9_]*")
    if name.startswith("_"):
        raise _err(g, f"'{name}': names starting with '_' are reserved for generated code", span,
                   hint=f"rename it, e.g. '{name.lstrip('_') or 'v'}'")
    if name in F.RESERVED:
        raise _err(g, f"'{name}' is a reserved word and cannot name {_a(what)}", span,
                   hint=f"rename it, e.g. '{name}_'" if not name.endswith("_") else "rename it")


# --- dims ----------------------------------------------------------------------
def dim_tree(g: Graph, e: ast.Expr, known: dict[str, int]):
    """A dims expression as a small data tree (never code): numbers, dims, + - * / **, ceil/floor/min/max."""
    if isinstance(e, ast.Num):
        if isinstance(e.value, float) and not math.isfinite(e.value):
            raise _err(g, f"a dim must be a finite number, not {e.value}", e.span, hint="a dim is a size >= 1")
        if isinstance(e.value, float) and not e.value.is_integer():
            return ("num", Fraction(e.value).limit_denominator(10 ** 6))
        return ("num", int(e.value))
    if isinstance(e, ast.Name):
        if e.id not in known:
            raise _err(g, f"unknown dim '{e.id}'", e.span,
                       hint=F.did_you_mean(e.id, known, "dims") or "a dim may only use dims declared before it")
        return ("dim", e.id)
    if isinstance(e, ast.Neg):
        return ("neg", dim_tree(g, e.operand, known))
    if isinstance(e, ast.BinOp):
        return ({"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}[e.op],
                dim_tree(g, e.left, known), dim_tree(g, e.right, known))
    if isinstance(e, ast.Call) and e.fn in DIM_FUNCS and not e.kwargs:
        want = 1 if e.fn in ("ceil", "floor") else 2
        if len(e.args) != want:
            raise _err(g, f"{e.fn}() takes {want} argument{'s' if want > 1 else ''} in a dim", e.span)
        return (e.fn, *(dim_tree(g, a, known) for a in e.args))
    raise _err(g, "a dim is an integer expression over earlier dims", e.span,
               hint="use numbers, earlier dims, + - * / **, ceil, floor, min, max")




def _dims(g: Graph) -> None:
    env: dict[str, int] = {}
    table = []
    spans = {}
    for d in g.meta["dims_ast"]:
        check_name(g, d.name, d.span, "dim")
        if d.name in env:
            raise _err(g, f"dim '{d.name}' is declared twice", d.span, hint="each dim is declared once")
        tree = dim_tree(g, d.value, env)
        try:
            v = eval_dim(tree, env)
        except ZeroDivisionError:
            raise _err(g, f"dim '{d.name}' divides by zero", d.value.span,
                       hint="the divisor evaluates to 0; divide by a dim or number >= 1") from None
        except (ValueError, OverflowError) as e:
            raise _err(g, f"dim '{d.name}': {e}", d.value.span,
                       hint="a dim is a size >= 1; exponents are small integers") from None
        if v.denominator != 1:
            raise _err(g, f"dim '{d.name}' = {v} is not an integer", d.value.span,
                       hint="round it with ceil(...) or floor(...)")
        if v <= 0:
            raise _err(g, f"dim '{d.name}' = {v} must be positive", d.value.span, hint="a dim is a size >= 1")
        if v > MAX_DIM:
            raise _err(g, f"dim '{d.name}' is too large (more than 2**40)", d.value.span,
                       hint="a dim is a size, at most 2**40")
        env[d.name] = int(v)
        table.append((d.name, tree, int(v)))
        spans[d.name] = d.span
    g.meta["dims"] = table
    g.meta["dim_spans"] = spans


# --- initializer arguments -------------------------------------------------------
_NAN = float("nan")


def _log(x: float) -> float:
    # As numpy: log(0) = -inf, and the log of a negative real is nan.
    return math.log(x) if x > 0 else (-math.inf if x == 0 else _NAN)


_FUNCS = {
    "exp": (math.exp, cmath.exp), "log": (_log, cmath.log), "expm1": (math.expm1, lambda z: cmath.exp(z) - 1),
    "log1p": (math.log1p, lambda z: cmath.log(1 + z)), "sqrt": (math.sqrt, cmath.sqrt), "abs": (abs, abs),
    "tanh": (math.tanh, cmath.tanh), "sigmoid": (lambda x: 0.5 * (1.0 + math.tanh(0.5 * x)), None),
    "relu": (lambda x: max(x, 0.0), None),
    "softplus": (lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x))), None),
    "inv_softplus": (lambda y: math.log(math.expm1(y)), None),
    "silu": (lambda x: x * 0.5 * (1.0 + math.tanh(0.5 * x)), None),
    "re": (lambda x: x, lambda z: z.real), "im": (lambda x: 0.0, lambda z: z.imag),
    "conj": (lambda x: x, lambda z: z.conjugate()),
    "erf": (math.erf, None),
    "gelu": (lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))), None),
    "gelu_tanh": (lambda x: 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))), None),
}
# Functions of several numbers: min(max(e, lo), hi) for clamp, as torch.clamp.
_FUNCS_N = {
    "min": min, "max": max,
    "clamp": lambda x, lo, hi: min(max(x, lo), hi),
    "clamp_min": max, "clamp_max": min,
}


def _number(g: Graph, n: int, used: set[str]):
    """The value of an initializer argument made of numbers and dims (at their defaults),
    a float or complex; "array" if it is a tensor (arange, a family, a draw); None if
    that cannot be told here (an unknown name, a reduction)."""
    o = g.op(n)
    k = o.kind
    if k == "const":
        v = o.get("value")
        return v if isinstance(v, complex) else float(v)
    if k == "ref":
        name = o.get("name")
        if name not in g.meta["dim_spans"]:
            return None
        used.add(name)
        return float(next(v for d, _, v in g.meta["dims"] if d == name))
    if k in ("arange", "family", "random"):
        return "array"
    args = [_number(g, i, used) for i in g.operands(n)]
    if any(a is None for a in args):
        return None
    if "array" in args:
        return "array" if k not in ("sum", "mean") else None
    try:
        if k == "neg":
            return -args[0]
        if k in ("add", "sub", "mul", "div", "pow"):
            a, b = args
            if k == "pow" and isinstance(a, float) and isinstance(b, float) and a < 0 and not b.is_integer():
                return _NAN  # as numpy's real power of a negative number
            return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b, "pow": a ** b}[k]
        if k in _FUNCS_N:
            if any(isinstance(x, complex) for x in args):
                return None  # (an error of infer_time's)
            return float(_FUNCS_N[k](*args))
        if k in _FUNCS:
            real, cplx = _FUNCS[k]
            x = args[0]
            return real(x) if isinstance(x, float) else (cplx or real)(x)
    except (ZeroDivisionError, ValueError, OverflowError, TypeError):
        return _NAN
    return None


def _finite(v) -> bool:
    return all(math.isfinite(p) for p in ((v.real, v.imag) if isinstance(v, complex) else (v,)))


def _show(v) -> str:
    if isinstance(v, complex):
        return repr(v).strip("()")
    return repr(int(v)) if float(v).is_integer() and abs(v) < 1e16 else repr(v)


# What each draw's arguments may be (docs/language.md, section 8).
_ALLOWED = {
    "normal": "normal(mean, std): a real std >= 0; the mean may be complex only for a complex param",
    "uniform": "uniform(lo, hi): real numbers with lo < hi",
    "log_uniform": "log_uniform(lo, hi): real numbers with 0 < lo < hi",
    "lru_ring": "lru_ring(r_min, r_max): real numbers with 0 < r_min <= r_max <= 1",
}
_ARGS = {"normal": ("mean", "std"), "uniform": ("lo", "hi"), "log_uniform": ("lo", "hi"),
         "lru_ring": ("r_min", "r_max")}


def _check_draws(g: Graph) -> None:
    """The constant arguments of every random draw are ones it can draw from.

    Arguments that use dims are checked at the dims' defaults; other sizes passed to
    the constructor are checked again there (by ssmc.runtime.initializers).
    """
    params = {g.op(p).get("name"): g.op(p) for p in g.meta["params"]}
    dims = {d: v for d, _, v in g.meta["dims"]}
    for n in g.nodes():
        o = g.op(n)
        if o.kind != "random":
            continue
        fn = o.get("dist")
        names = _ARGS[fn]
        args = g.operands(n)
        used: set[str] = set()
        vals = [_number(g, a, used) for a in args]
        spans = [g.op(a).span for a in args]
        where = ((" (at the default " if len(used) == 1 else " (at the defaults ")
                 + ", ".join(f"{d} = {dims[d]}" for d in sorted(used)) + ")") if used else ""
        hint = _ALLOWED[fn]

        def bad(i, what):
            raise _err(g, f"{fn}(): {what}{where}", spans[i], hint=hint)

        for i, v in enumerate(vals):
            if v == "array":
                bad(i, f"{names[i]} must be a single number, not an array")
            if v is None:
                continue
            if isinstance(v, complex) and not (fn == "normal" and i == 0):
                bad(i, f"{names[i]} = {_show(v)} must be a real number")
            if not _finite(v):
                bad(i, f"{names[i]} = {_show(v)} is not a finite number")
        a, b = vals
        if fn == "normal":
            if isinstance(a, complex) and not params[o.get("param")].get("complex"):
                raise _err(g, f"normal(): the mean {_show(a)} is complex, but '{o.get('param')}' is a real param",
                           spans[0], hint=f"declare it complex: param {o.get('param')}[...] complex = ...")
            if b is not None and b < 0:
                bad(1, f"std = {_show(b)} must be >= 0")
            continue
        if fn in ("log_uniform", "lru_ring") and a is not None and a <= 0:
            bad(0, f"{names[0]} = {_show(a)} must be > 0")
        if fn == "lru_ring":
            for i, v in enumerate(vals):
                if v is not None and v > 1:
                    bad(i, f"{names[i]} = {_show(v)} must be <= 1 (the ring lies inside the unit circle)")
            if a is not None and b is not None and a > b:
                bad(1, f"r_max = {_show(b)} is below r_min = {_show(a)}")
            continue
        if a is not None and b is not None:
            if not a < b:
                bad(1, f"hi = {_show(b)} must be above lo = {_show(a)}")
            if not math.isfinite(b - a):
                bad(1, f"the range hi - lo = {_show(b)} - ({_show(a)}) overflows")
    for n in g.nodes():
        o = g.op(n)
        # The Fourier basis comes in (cos, sin) pairs.
        if o.kind == "family" and o.get("fn") in ("hippo_fout", "hippo_fout_B"):
            d, span = o.get("dim")
            if d in dims and dims[d] % 2:
                raise _err(g, f"{o.get('fn')}({d}) needs an even size, but {d} = {dims[d]}", span,
                           hint=f"{o.get('fn')} pairs a cosine with a sine: give {d} an even default")


def _kwargs(g, node, allowed: dict[str, tuple | None]) -> dict[str, tuple[str, Span]]:
    out = {}
    for k in node.kwargs:
        if k.name not in allowed:
            raise _err(g, f"unknown option '{k.name}'", k.span,
                       hint=F.did_you_mean(k.name, allowed, "options") or ("options: " + ", ".join(allowed)))
        if k.name in out:
            raise _err(g, f"option '{k.name}' given twice", k.span)
        v = k.value
        if isinstance(v, ast.Num) and isinstance(v.value, int):
            out[k.name] = (v.value, v.span)
            continue
        if not isinstance(v, ast.Name):
            raise _err(g, f"option '{k.name}' takes a name", v.span)
        choices = allowed[k.name]
        if choices is not None and v.id not in choices:
            raise _err(g, f"unknown {k.name} '{v.id}'", v.span,
                       hint=F.did_you_mean(v.id, choices) or ("one of: " + ", ".join(choices)))
        out[k.name] = (v.id, v.span)
    return out


def _scan(g: Graph) -> None:
    s = g.meta["scan"]
    if s.order not in F.SCAN_ORDERS:
        raise _err(g, f"unknown scan order '{s.order}'", s.order_span,
                   hint=F.did_you_mean(s.order, F.SCAN_ORDERS) or "one of: " + ", ".join(F.SCAN_ORDERS))
    info = dict(order=s.order, merge=None, params="shared", rows=None, cols=None, span=s.span)
    if s.order in ("causal", "reverse", "global"):
        if s.kwargs:
            raise _err(g, f"scan {s.order} takes no options", s.kwargs[0].span, hint=f"write: scan {s.order}")
        info["directions"] = (s.order,)
    elif s.order == "bidirectional":
        kw = _kwargs(g, s, {"merge": F.MERGES, "params": F.PARAM_SHARING})
        info.update(merge=kw.get("merge", ("add",))[0], params=kw.get("params", ("shared",))[0])
        info["directions"] = ("causal", "reverse")
    else:
        kw = _kwargs(g, s, {"rows": None, "cols": None, "merge": F.MERGES, "params": F.PARAM_SHARING})
        for key in ("rows", "cols"):
            if key not in kw:
                raise _err(g, f"cross2d needs {key} = DIM", s.order_span,
                           hint="scan cross2d(rows = R, cols = C, merge = add, params = separate)")
            name, span = kw[key]
            if not isinstance(name, str) or name not in g.meta["dim_spans"]:
                raise _err(g, f"{key} must name a dim", span,
                           hint=F.did_you_mean(str(name), g.meta["dim_spans"], "dims") or "declare it in `dims`")
            info[key] = name
        info.update(merge=kw.get("merge", ("add",))[0], params=kw.get("params", ("separate",))[0])
        info["directions"] = ("rows_forward", "rows_backward", "cols_forward", "cols_backward")
    g.meta["scan"] = info


def _structure(g: Graph, s: ast.Structure) -> dict:
    if s.name not in F.STRUCTURES:
        raise _err(g, f"unknown structure '{s.name}'", s.span,
                   hint=F.did_you_mean(s.name, F.STRUCTURES) or "one of: " + ", ".join(F.STRUCTURES))
    if s.name == "block_diagonal":
        kw = _kwargs(g, s, {"blocks": None})
        if "blocks" not in kw:
            raise _err(g, "block_diagonal needs the number of blocks", s.span, hint="block_diagonal(blocks = 4)")
        blocks, span = kw["blocks"]
        if isinstance(blocks, int):
            if blocks < 1:
                raise _err(g, "blocks must be at least 1", span)
        elif blocks not in g.meta["dim_spans"]:
            raise _err(g, f"blocks must be a number or a dim, not '{blocks}'", span,
                       hint=F.did_you_mean(blocks, g.meta["dim_spans"], "dims") or None)
        return dict(structure="block_diagonal", blocks=blocks, span=s.span)
    if s.kwargs:
        raise _err(g, f"structure '{s.name}' takes no options", s.kwargs[0].span, hint=f"write `: {s.name}`")
    return dict(structure=s.name, blocks=None, span=s.span)


def _system(g: Graph) -> None:
    """The system of the state meta["state"] (its transition and discretization) complete
    and consistent; its node built (meta["system"], meta["system_info"], meta["rule"])."""
    meta = g.meta
    where = meta["name_span"]
    bname = meta["name"]
    tr = meta["transition"]
    state = g.op(meta["state"])
    sname = state.get("name")
    for name, span, what in ((tr["state"], tr["state_span"], "left-hand side"),
                             (tr["applied"], tr["applied_span"], "state applied to")):
        if name != sname:
            raise _err(g, f"the {what} of `{tr['kind']}` must be the state '{sname}', not '{name}'", span,
                       hint=f"write: {tr['kind']} {sname}{chr(39) if tr['kind'] == 'dynamics' else ''} = "
                            f"{tr['matrix']} {sname} + ...")
    if tr["term"] is None:
        raise _err(g, f"`{tr['kind']}` has no input term", tr["span"],
                   hint=f"write: {tr['kind']} ... = {tr['matrix']} {sname} + B * u")
    disc = meta["discretize"]
    if disc is not None and disc.get("state") not in (None, sname):
        raise _err(g, f"discretize ..., state = {disc['state']}: the block's state is '{sname}'",
                   disc["state_span"], hint=f"write state = {sname}, or leave it out")
    if tr["kind"] == "dynamics":
        if disc is None:
            raise _err(g, f"ssm {bname} has `dynamics` but no `discretize`", tr["span"],
                       hint="add: discretize zoh, step = dt")
        if disc["rule"] not in F.RULES:
            raise _err(g, f"unknown discretization rule '{disc['rule']}'", disc["rule_span"],
                       hint=F.did_you_mean(disc["rule"], F.RULES) or "one of: " + ", ".join(F.RULES))
        if disc["step"] is None:
            raise _err(g, "discretize needs a step", disc["span"], hint=f"write: discretize {disc['rule']}, step = dt")
    elif disc is not None:
        raise _err(g, "`recurrence` is already discrete; remove `discretize`", disc["span"],
                   hint="or write the continuous system with `dynamics`")
    structs = meta["structures"]
    if tr["matrix"] not in structs:
        kind = meta["names"].get(tr["matrix"])
        hint = (f"annotate it: {tr['matrix']}_m = {tr['matrix']} : diagonal" if kind == "param"
                else f"write: {tr['matrix']} = ... : diagonal (or scalar, dense, dplr, block_diagonal(blocks = k))")
        if kind is None:
            hint = F.did_you_mean(tr["matrix"], structs) or hint
            raise _err(g, f"unknown state matrix '{tr['matrix']}'", tr["matrix_span"], hint=hint)
        raise _err(g, f"the state matrix '{tr['matrix']}' needs a structure annotation", tr["matrix_span"], hint=hint)
    sysinfo = dict(structs[tr["matrix"]], matrix=tr["matrix"], kind=tr["kind"])
    matrix = meta["values"][tr["matrix"]]
    if tr["kind"] == "dynamics":
        n = g.add(op("dynamics", tr["span"], rule=disc["rule"], structure=sysinfo["structure"],
                     blocks=sysinfo["blocks"]), matrix, tr["term"], disc["step"])
        meta["rule"] = disc["rule"]
    else:
        n = g.add(op("recurrence", tr["span"], structure=sysinfo["structure"], blocks=sysinfo["blocks"]),
                  matrix, tr["term"])
        meta["rule"] = None
    meta["system"] = n
    meta["system_info"] = sysinfo


def _pair_systems(g: Graph) -> None:
    """Several states: each gets exactly one transition (named by its left-hand side) and the
    discretization that names it (`discretize ..., state = x`), else the one that names no
    state (for every state with `dynamics`). Builds meta["systems"] in declaration order."""
    meta = g.meta
    snames = {g.op(n).get("name"): n for n in meta["states"]}
    by_state: dict[str, dict] = {}
    for tr in meta["transitions"]:
        if tr["state"] not in snames:
            raise _err(g, f"`{tr['kind']}` of '{tr['state']}', which is not a state", tr["state_span"],
                       hint=F.did_you_mean(tr["state"], snames, "states") or
                       "the states are " + ", ".join(snames))
        if tr["state"] in by_state:
            raise _err(g, f"a second `{tr['kind']}` of the state '{tr['state']}': each state has exactly one",
                       tr["span"], hint="one of `dynamics x' = A x + E` or `recurrence x = Abar x + E` per state")
        by_state[tr["state"]] = tr
    targeted: dict[str, dict] = {}
    shared = None
    for d in meta["discretizes"]:
        if d["state"] is None:
            if shared is not None:
                raise _err(g, "a second `discretize` for every state; give one a state: "
                              "discretize ..., state = x", d["span"])
            shared = d
            continue
        if d["state"] not in snames:
            raise _err(g, f"discretize ..., state = {d['state']}: not a state", d["state_span"],
                       hint=F.did_you_mean(d["state"], snames, "states") or "the states are " + ", ".join(snames))
        if d["state"] in targeted:
            raise _err(g, f"a second `discretize` for the state '{d['state']}'", d["span"])
        targeted[d["state"]] = d
    systems = []
    used_shared = False
    for name, n in snames.items():
        tr = by_state.get(name)
        if tr is None:
            raise _err(g, f"the state '{name}' has no `dynamics` or `recurrence`", g.op(n).span,
                       hint=f"write: recurrence {name} = A {name} + ... (each state has one)")
        disc = targeted.get(name)
        if disc is None and tr["kind"] == "dynamics":
            disc = shared
            used_shared = used_shared or shared is not None
        systems.append({"state": n, "transition": tr, "discretize": disc})
    if shared is not None and not used_shared:
        raise _err(g, "`discretize` names no state, and every state without its own is a `recurrence` "
                      "(already discrete)", shared["span"], hint="remove it, or write state = x for a `dynamics`")
    meta["systems"] = systems
    meta["focus"] = 0
    for k in SYSTEM_KEYS:
        meta[k] = systems[0].get(k)


def check_declarations(g: Graph) -> Graph:
    """Names legal and unique; dims evaluated; the block complete; one system node built."""
    g = g.copy()
    meta = g.meta
    check_name(g, meta["name"], meta["name_span"], "ssm block")
    _dims(g)
    seen: dict[str, tuple[str, Span]] = {}
    for kind, name, span in meta["decls"]:
        if kind != "dim":
            check_name(g, name, span, kind)
        if kind in ("dim", "input") and name in MODULE_KEYWORDS:
            raise _err(g, f"'{name}' is a keyword argument of {MODULE_KEYWORDS[name]} of the generated module "
                          f"and cannot name {_a(kind)}", span, hint=f"rename it, e.g. '{name}_'")
        if name in seen:
            first_kind, first = seen[name]
            raise _err(g, f"'{name}' is declared twice (first as a {first_kind} at line {first.line})", span,
                       hint="every dim, input, param, value and output needs its own name")
        seen[name] = (kind, span)
    # Weights that linear() and conv() create take names too.
    for n in g.nodes():
        o = g.op(n)
        if o.kind in ("linear", "conv"):
            for w in (o.get("weight"), o.get("bias")):
                if w is None:
                    continue
                if w in seen:
                    raise _err(g, f"{o.kind}() creates a weight named '{w}', which is already declared", o.span,
                               hint=f"rename the {seen[w][0]} '{w}'")
                seen[w] = ("weight", o.span)
    meta["names"] = {k: v[0] for k, v in seen.items()}
    where = meta["name_span"]
    bname = meta["name"]
    if meta["state"] is None:
        raise _err(g, f"ssm {bname} has no `state`", where, hint="declare it, e.g. state x[H, N]")
    if not meta["inputs"]:
        raise _err(g, f"ssm {bname} has no `input`", where, hint="declare it, e.g. input u[H]")
    if not meta["transitions"]:
        raise _err(g, f"ssm {bname} has no `dynamics` or `recurrence`", where,
                   hint="write: dynamics x' = A x + B * u")
    if meta["output"] is None:
        raise _err(g, f"ssm {bname} has no `output`", where, hint="write: output y = sum(C * x, N)")
    if meta["scan"] is None:
        raise _err(g, f"ssm {bname} has no `scan`", where, hint="write: scan causal")
    _scan(g)
    _check_draws(g)
    meta["structures"] = {name: _structure(g, s) for name, s in meta["structures"].items()}
    if len(meta["states"]) > 1:
        _pair_systems(g)
        for i in range(len(meta["systems"])):
            focus(g, i)
            _system(g)
            save(g)
        focus(g, 0)
    else:
        _system(g)
    # Repeated dims: only a param may repeat the state's last dim, as its last two dims.
    lasts = {g.op(sn).get("dims")[-1][0] for sn in meta["states"] if g.op(sn).get("dims")}
    last = g.op(meta["state"]).get("dims")[-1][0] if g.op(meta["state"]).get("dims") else None
    for n2 in meta["params"] + meta["inputs"] + meta["states"]:
        o = g.op(n2)
        names = [d for d, _ in o.get("dims")]
        for i, (d, span) in enumerate(o.get("dims")):
            if names.count(d) > 1:
                ok = o.kind == "param" and names.count(d) == 2 and names[-2:] == [d, d] and d in lasts
                if not ok:
                    raise _err(g, f"dim '{d}' repeats in {o.get('name')}[{', '.join(names)}]", span,
                               hint=f"only a param may repeat the state's last dim, as its last two dims: "
                                    f"M[..., {last}, {last}]")
    return g
