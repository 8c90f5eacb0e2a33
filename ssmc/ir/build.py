"""AST -> IR graph. Lowers what was written, without resolving or checking names.

Names become `ref` nodes that the `resolve_names` pass links up. Every op gets the
span of the spec construct it came from. Calls are checked for arity here, since
that is a property of the syntax of a call.
"""
from __future__ import annotations

from ..errors import SpecError, Source, Span
from ..frontend import ast
from . import functions as F
from .graph import Graph, op


class _Lowering:
    def __init__(self, g: Graph, source: Source):
        self.g = g
        self.source = source

    def err(self, msg, span, hint=None):
        return SpecError(msg, span, self.source, hint)

    # --- expressions ----------------------------------------------------------------
    def expr(self, e: ast.Expr, mode: str, owner: str | None = None) -> int:
        """Lower an expression. mode: 'value' or 'init'. owner names linear/conv weights."""
        g = self.g
        if isinstance(e, ast.Num):
            return g.add(op("const", e.span, value=e.value))
        if isinstance(e, ast.Imag):
            return g.add(op("const", e.span, value=e.value))
        if isinstance(e, ast.Name):
            if e.id in F.CONSTANTS:
                return g.add(op("const", e.span, value=F.CONSTANTS[e.id]))
            if e.id in F.CONSTANT_INITS:
                if mode != "init":
                    raise self.err(f"'{e.id}' is an initializer; it can only follow `param ... =`", e.span,
                                   hint="use 0 or 1 in an expression")
                return g.add(op("const", e.span, value=0.0 if e.id == "zeros" else 1.0))
            if e.id in ("true", "false"):
                raise self.err(f"'{e.id}' is only a keyword argument value (bias = {e.id})", e.span)
            if e.id in F.ALL_FUNCTIONS:
                raise self.err(f"'{e.id}' is a function; call it with arguments", e.span,
                               hint=f"write {e.id}(...)")
            return g.add(op("ref", e.span, name=e.id))
        if isinstance(e, ast.Neg):
            return g.add(op("neg", e.span), self.expr(e.operand, mode, owner))
        if isinstance(e, ast.BinOp):
            kind = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}[e.op]
            left = self.expr(e.left, mode, owner)
            right = self.expr(e.right, mode, owner)
            return g.add(op(kind, e.span), left, right)
        if isinstance(e, ast.Call):
            return self.call(e, mode, owner)
        raise AssertionError(type(e))

    def _arity(self, e: ast.Call, lo: int, hi: int | None, what: str):
        n = len(e.args)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise self.err(f"{e.fn}() takes {want} argument{'s' if (hi or lo) != 1 else ''}, got {n}",
                           e.span, hint=f"write {what}")

    def _no_kwargs(self, e: ast.Call, allowed=()):
        for k in e.kwargs:
            if k.name not in allowed:
                hint = (f"{e.fn}() accepts: " + ", ".join(f"{a} = ..." for a in allowed)) if allowed \
                    else f"{e.fn}() takes no keyword arguments"
                raise self.err(f"unknown keyword argument '{k.name}' for {e.fn}()", k.span, hint=hint)

    def _dim_args(self, e: ast.Call, args) -> tuple[tuple[str, Span], ...]:
        out = []
        for a in args:
            if not isinstance(a, ast.Name):
                raise self.err(f"{e.fn}() expects dim names here", a.span,
                               hint=f"write a dim declared in `dims`, e.g. {e.fn}(..., N)")
            out.append((a.id, a.span))
        return tuple(out)

    def _bool_kwarg(self, e: ast.Call, name: str) -> bool:
        for k in e.kwargs:
            if k.name == name:
                if isinstance(k.value, ast.Name) and k.value.id in ("true", "false"):
                    return k.value.id == "true"
                raise self.err(f"{name} must be true or false", k.value.span, hint=f"{name} = true")
        return False

    def _sharing_kwarg(self, e: ast.Call) -> str | None:
        """`params = shared | separate` of a linear/conv: its weights' direction sharing
        (None: the scan's `params =`)."""
        for k in e.kwargs:
            if k.name == "params":
                if isinstance(k.value, ast.Name) and k.value.id in F.PARAM_SHARING:
                    return k.value.id
                raise self.err("params must be shared or separate", k.value.span,
                               hint=f"{e.fn}(..., params = shared)")
        return None

    def call(self, e: ast.Call, mode: str, owner: str | None) -> int:
        g, fn = self.g, e.fn
        if fn in F.ELEMENTWISE:
            self._no_kwargs(e)
            self._arity(e, 1, 1, f"{fn}(x)")
            return g.add(op(fn, e.span), self.expr(e.args[0], mode, owner))
        if fn in F.PAIRWISE:
            self._no_kwargs(e)
            self._arity(e, 2, 2, f"{fn}(a, b)")
            a, b = (self.expr(x, mode, owner) for x in e.args)
            return g.add(op(fn, e.span), a, b)
        if fn == "clamp":
            return self._clamp(e, mode, owner)
        if fn in F.REDUCTIONS:
            self._no_kwargs(e)
            self._arity(e, 2, None, f"{fn}(e, N)")
            dims = self._dim_args(e, e.args[1:])
            return g.add(op(fn, e.span, dims=dims), self.expr(e.args[0], mode, owner))
        if fn == "arange":
            self._no_kwargs(e)
            self._arity(e, 1, 1, "arange(N)")
            (dim,) = self._dim_args(e, e.args)
            return g.add(op("arange", e.span, dim=dim))
        if fn == "linear":
            self._no_kwargs(e, ("bias", "params"))
            self._arity(e, 2, None, "linear(e, N)")
            if mode == "init":
                raise self.err("linear() is not allowed in an initializer", e.fn_span or e.span,
                               hint="initializers are fixed expressions or random draws")
            dims = self._dim_args(e, e.args[1:])
            weight = self._weight_name(owner, "_proj")
            bias = weight + "_bias" if self._bool_kwarg(e, "bias") else None
            arg = self.expr(e.args[0], mode, owner)
            return g.add(op("linear", e.span, out_dims=dims, weight=weight, bias=bias,
                            **_sharing(self._sharing_kwarg(e))), arg)
        if fn == "conv":
            self._no_kwargs(e, ("bias", "params"))
            self._arity(e, 2, 2, "conv(e, K)")
            if mode == "init":
                raise self.err("conv() is not allowed in an initializer", e.fn_span or e.span)
            k = e.args[1]
            if isinstance(k, ast.Num) and isinstance(k.value, int):
                width = (k.value, k.span)
            elif isinstance(k, ast.Name):
                width = (k.id, k.span)
            else:
                raise self.err("conv() width must be a positive integer or a dim", k.span, hint="conv(e, 4)")
            weight = self._weight_name(owner, "_conv")
            bias = weight + "_bias" if self._bool_kwarg(e, "bias") else None
            arg = self.expr(e.args[0], mode, owner)
            return g.add(op("conv", e.span, width=width, weight=weight, bias=bias,
                            **_sharing(self._sharing_kwarg(e))), arg)
        if fn == "prev":
            # The value at an earlier token (Mamba-3's trapezoid, RWKV's token shift); of the
            # state, the state before the update. Which of the two is known once names resolve
            # (infer_time); the tail a shifted value carries is named after its owner.
            self._no_kwargs(e)
            self._arity(e, 1, 2, "prev(e) or prev(e, k)")
            if mode == "init":
                raise self.err("prev() is not allowed in an initializer", e.fn_span or e.span,
                               hint="prev() looks at the previous token; an initializer has no tokens")
            shift = 1
            if len(e.args) == 2:
                k = e.args[1]
                if not (isinstance(k, ast.Num) and isinstance(k.value, int) and k.value >= 1):
                    raise self.err("prev() shift must be a positive integer", k.span,
                                   hint="prev(e, 2) is the value two tokens back")
                shift = k.value
            # Numbered in textual order per owner; the tail's name is given once prev(x) of the
            # state (no tail) is told apart (infer_time).
            count = g.meta.setdefault("_prev_counts", {})
            count[owner] = count.get(owner, 0) + 1
            arg = self.expr(e.args[0], mode, owner)
            return g.add(op("prev", e.span, shift=shift, owner=owner, seq=count[owner]), arg)
        if fn == "dplr":
            self._no_kwargs(e)
            self._arity(e, 3, 3, "dplr(Lambda, P, Q)")
            args = [self.expr(a, mode, owner) for a in e.args]
            return g.add(op("dplr", e.span), *args)
        if fn in F.RANDOM or fn in F.FAMILIES:
            if mode != "init":
                raise self.err(f"'{fn}' is an initializer; it can only follow `param ... =`", e.fn_span or e.span,
                               hint="declare a param: param NAME[dims] = " + fn + "(...)")
            self._no_kwargs(e)
            if fn in F.RANDOM:
                self._arity(e, F.RANDOM[fn], F.RANDOM[fn], f"{fn}(a, b)")
                args = [self.expr(a, mode, owner) for a in e.args]
                return g.add(op("random", e.span, dist=fn, param=owner), *args)
            self._arity(e, 1, 1, f"{fn}(N)")
            (dim,) = self._dim_args(e, e.args)
            return g.add(op("family", e.span, fn=fn, dim=dim))
        if fn in F.CONSTANT_INITS:
            raise self.err(f"'{fn}' takes no arguments", e.span, hint=f"write `= {fn}`")
        raise self.err(f"unknown function '{fn}'", e.fn_span or e.span,
                       hint=F.did_you_mean(fn, F.ALL_FUNCTIONS, "functions") or None)

    def _clamp(self, e: ast.Call, mode: str, owner: str | None) -> int:
        """clamp(e, lo, hi), or with keywords clamp(e, min = lo, max = hi) where either bound
        may be left out (a positional lo may be followed by max = hi)."""
        self._no_kwargs(e, ("min", "max"))
        usage = "clamp(e, lo, hi) or clamp(e, min = lo, max = hi)"
        if not e.args or len(e.args) > 3:
            raise self.err(f"clamp() takes 3 arguments, got {len(e.args)}", e.span, hint=f"write {usage}")
        bounds = {}
        for which, a in zip(("min", "max"), e.args[1:]):
            bounds[which] = a
        for k in e.kwargs:
            if k.name in bounds:
                raise self.err(f"clamp() is given its {k.name} bound twice", k.span, hint=f"write {usage}")
            bounds[k.name] = k.value
        if not bounds:
            raise self.err("clamp() needs a bound", e.span, hint=f"write {usage}")
        if len(e.args) == 2 and "max" not in bounds:
            raise self.err("clamp(e, lo) with one bound written without its name", e.args[1].span,
                           hint="write clamp(e, min = lo), or both bounds: clamp(e, lo, hi)")
        which = tuple(w for w in ("min", "max") if w in bounds)
        kind = {("min", "max"): "clamp", ("min",): "clamp_min", ("max",): "clamp_max"}[which]
        args = [self.expr(e.args[0], mode, owner)] + [self.expr(bounds[w], mode, owner) for w in which]
        return self.g.add(op(kind, e.span), *args)

    def _weight_name(self, owner: str | None, suffix: str) -> str:
        base = f"{owner}{suffix}"
        count = self.g.meta.setdefault("_weight_counts", {})
        count[base] = count.get(base, 0) + 1
        return base if count[base] == 1 else f"{base}{count[base]}"


def _sharing(value: str | None) -> dict:
    """The `sharing` attribute of a param, linear or conv op, only where the spec gives one
    (so specs without it print the IR they always did)."""
    return {} if value is None else {"sharing": value}


def build(block: ast.Block, source: Source) -> Graph:
    """Lower one `ssm` block into a Graph (unresolved names, no facts yet)."""
    g = Graph()
    low = _Lowering(g, source)
    g.meta.update(name=block.name, name_span=block.name_span, description=block.description,
                  source=source, decls=[], values={}, structures={}, inputs=[], params=[],
                  dims_ast=block.dims, transition=None, discretize=None, scan=None, output=None,
                  state=None, block_span=block.span, states=[], transitions=[], discretizes=[])
    decls = g.meta["decls"]
    for d in block.dims:
        decls.append(("dim", d.name, d.span))
    for s in block.body:
        if isinstance(s, ast.InputDecl):
            # (`complex` only where written: the IR of real inputs prints as before)
            n = g.add(op("input", s.span, name=s.name, dims=tuple((d.name, d.span) for d in s.dims),
                         **({"complex": True} if s.complex else {})))
            g.meta["inputs"].append(n)
            decls.append(("input", s.name, s.span))
        elif isinstance(s, ast.StateDecl):
            n = g.add(op("state", s.span, name=s.name, dims=tuple((d.name, d.span) for d in s.dims),
                         complex=s.complex))
            decls.append(("state", s.name, s.span))
            # Several states are paired with their transitions by check_declarations.
            g.meta["states"].append(n)
            if g.meta["state"] is None:
                g.meta["state"] = n
        elif isinstance(s, ast.ParamDecl):
            init = low.expr(s.init, "init", s.name)
            n = g.add(op("param", s.span, name=s.name, dims=tuple((d.name, d.span) for d in s.dims),
                         complex=s.complex, frozen=s.frozen, **_sharing(s.sharing)), init)
            g.meta["params"].append(n)
            decls.append(("param", s.name, s.span))
        elif isinstance(s, ast.Assign):
            root = low.expr(s.value, "value", s.name)
            decls.append(("value", s.name, s.span))
            g.meta["values"][s.name] = root
            if s.structure is not None:
                g.meta["structures"][s.name] = s.structure
        elif isinstance(s, ast.Transition):
            term = low.expr(s.input_term, "value", s.state) if s.input_term is not None else None
            g.meta["transitions"].append(dict(kind=s.kind, state=s.state, state_span=s.state_span, matrix=s.matrix,
                                        matrix_span=s.matrix_span, applied=s.applied_to,
                                        applied_span=s.applied_span, term=term, span=s.span,
                                        term_span=s.input_term.span if s.input_term is not None else None))
        elif isinstance(s, ast.Discretize):
            step = step_span = None
            target = target_span = None
            for k in s.kwargs:
                if k.name == "state":
                    # `discretize zoh, step = dt, state = x`: the rule of one state of several.
                    if not isinstance(k.value, ast.Name):
                        raise low.err("state = ... names one state", k.value.span,
                                      hint="write: discretize zoh, step = dt, state = x")
                    target, target_span = k.value.id, k.value.span
                    continue
                if k.name != "step":
                    raise low.err(f"unknown discretize option '{k.name}'", k.span,
                                  hint="write: discretize zoh, step = dt")
                step = low.expr(k.value, "value", "step")
                step_span = k.value.span
            g.meta["discretizes"].append(dict(rule=s.rule, rule_span=s.rule_span, step=step, span=s.span,
                                              step_span=step_span, state=target, state_span=target_span))
        elif isinstance(s, ast.Scan):
            if g.meta["scan"] is not None:
                raise low.err("a second `scan`: a block has exactly one", s.span)
            g.meta["scan"] = s
        elif isinstance(s, ast.Output):
            if g.meta["output"] is not None:
                raise low.err("a second `output`: a block has exactly one", s.span)
            root = low.expr(s.value, "value", s.name)
            n = g.add(op("output", s.span, name=s.name), root)
            g.meta["output"] = n
            decls.append(("output", s.name, s.span))
    g.meta.pop("_weight_counts", None)
    g.meta.pop("_prev_counts", None)
    trs, discs = g.meta["transitions"], g.meta["discretizes"]
    if len(g.meta["states"]) <= 1:
        # One state: one transition and one discretization, as always.
        if len(trs) > 1:
            raise low.err(f"a second `{trs[1]['kind']}`: a block with one state has exactly one", trs[1]["span"],
                          hint="one of `dynamics x' = A x + E` or `recurrence x = Abar x + E` "
                               "(declare another state for another recurrence)")
        untargeted = [d for d in discs]
        if len(untargeted) > 1:
            raise low.err("a second `discretize`: a block with one state has exactly one", untargeted[1]["span"])
        g.meta["transition"] = trs[0] if trs else None
        g.meta["discretize"] = discs[0] if discs else None
    return g
