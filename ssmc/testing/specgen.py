"""Random valid `.ssm` specs for the differential tester (issue 8).

`specs()` is a hypothesis strategy of `GenSpec`: one `ssm` block over the whole
language (docs/language.md), with the sizes to construct it with and a sequence
length. Every spec is meant to be

* **valid**: accepted by a compiler that follows the language page. Each
  construct below says in its docstring which rule of the page it respects;
* **numerically sane** with the module's own initializers (a fixed seed), so that
  float64 backends and the evaluator agree to ~1e-9: steps are positive and real,
  continuous state matrices have real parts bounded away from 0 (negative), discrete
  ones a modulus below 1, every function gets an argument inside its domain (logs
  and square roots of values bounded away from 0, exp only of bounded values) and
  values stay bounded (random subtrees pass through tanh or sigmoid where it
  matters);
* **small**: every dim at most 4 where it is constructed, state at most 24
  elements, length 1..12 (rows * cols for cross2d).

`invalid_specs()` mutates valid specs into (probably) invalid ones: the consumer
requires that ssmc either accepts them or raises a located `SpecError`.

`example_specs(n, seed)` draws n specs deterministically (the same builder driven by
`random.Random`), for fixed samples and the fuzz command; `invalid_specs_from_seed`
likewise for mutants.

`GenSpec.tags` name the features a spec uses, by family: the structure, the rule
(or `recurrence`) and the scan order bare (`dense`, `zoh`, `cross2d`), `complex`,
`tau`, `conv`, `prev` (`prev:k` a shift of more than one token, `prev:state` a
readout of the state before the update, `prev:input` a shifted input term, `prev:complex` a
shifted complex input, `states:prev` a shifted input in another state's term), `linear`, `forcing`, `gate`, `skip`, and `A:*` (the state matrix:
`A:token`, `A:const`, `A:lru`), `E:*` (the input term's pieces: `E:plain`,
`E:coef`, `E:selective`, `E:mimo`, `E:features`), `coef:*`, `step:*` (`const`,
`static`, `token`, `tau`), `fn:*` (each function; `fn:const` a function of a number),
`op:*`, `reduce:*`, `init:*` (each initializer and family), `input:*`, `out:*`,
`merge:*`, `params:*`, `sharing:*` (a tensor's own direction sharing, decision 19:
`sharing:param:shared`, `sharing:linear:separate`, `sharing:conv:*`, and
`sharing:one_direction` where a single-direction scan makes it moot), `dims:*`
(`derived`, `split`), `dplr:*` (`dplr:delta`: a real scalar Lambda and rank-one P, Q, the
delta rule's form; `dplr:lambda_*`, `dplr:gated`), `matrix:*`,
`value:*` (`ref`: a named value used in another, `state`: one reading the state),
`states:*` (several states: `states:2`, `states:3`, `states:recurrence`, `states:dynamics`
and its rule, `states:dag` an input term reading an earlier state, `states:gate`,
`states:one_statement` several states in one `state` statement),
`input:complex` (a complex primary input),
`text:crlf`, `text:continued` (a statement over several lines; `text:cont:paren`,
`text:cont:op_end`, `text:cont:op_start`, `text:cont:backslash` for the way it is
broken). `GenSpec.dims` holds every dim's value at `sizes` (derived ones
included).

All choices go through a `_Chooser`, backed either by hypothesis' `draw` (so that
hypothesis shrinks a failing spec choice by choice: the first option of every
choice is the simplest one) or by `random.Random`.
"""
from __future__ import annotations

import abc
import math
import random
import re
from dataclasses import dataclass, field

from hypothesis import strategies as st

from ..ir.functions import RESERVED

__all__ = ["GenSpec", "specs", "invalid_specs", "example_specs", "invalid_specs_from_seed",
           "FORBIDDEN_NAMES"]


@dataclass(frozen=True)
class GenSpec:
    """A generated spec and how to run it."""

    text: str                 # one block `ssm <Name> "..." { ... }`
    sizes: dict               # the base dims to construct the module with (derived dims are recomputed)
    length: int               # a sequence length to test with (rows * cols for cross2d)
    tags: frozenset           # features used (see the module's constructs)
    dims: dict = field(default_factory=dict)   # every dim's value at `sizes` (derived ones included)

    def __hash__(self):
        return hash(self.text)


# ============================================================================
# names
# ============================================================================

def _module_attributes() -> set:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of ssmc
        return set()
    return set(dir(torch.nn.Module))


# Names a generated spec never uses: the reserved words (section 16), the attributes
# of torch.nn.Module (a dim, param or value becomes an attribute or a keyword of the
# generated class), and the keywords the generated classes take or define.
FORBIDDEN_NAMES = frozenset(RESERVED) | _module_attributes() | {
    "T", "step", "forward", "dims", "seed", "generator", "dtype", "device", "chunk_size",
    "algorithm", "init_state", "reset_parameters", "initial_state", "return_state", "cu_seqlens",
    "strict", "batch", "length",
}

# Words of the language that are recognized by their position and are not reserved
# (section 16): valid names, drawn now and then (tag name:keywordlike).
KEYWORDLIKE = ("diagonal", "scalar", "dense", "zoh", "bilinear", "euler", "backward_euler", "zoh_euler",
               "causal", "reverse", "bidirectional", "cross2d", "merge", "rows", "cols", "blocks", "bias",
               "ceil", "floor", "add", "concat", "shared", "separate", "block_diagonal")

_LOWER = "abcdefghkmnpqrstvwz"
_UPPER = "ABCGHKMNPQRSVWZ"


# ============================================================================
# choices
# ============================================================================

class _Chooser(abc.ABC):
    """Every random decision of the generator. The first option is the simplest."""

    @abc.abstractmethod
    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]: from a seeded generator, or a hypothesis draw."""

    def choice(self, seq):
        seq = list(seq)
        return seq[self.integer(0, len(seq) - 1)]

    def chance(self, p: float) -> bool:
        """True with probability p; shrinks to False."""
        return self.integer(0, 99) >= 100 - round(100 * p)

    def subset(self, seq, lo: int = 0, hi: int | None = None) -> tuple:
        """A random sub-list of `seq` (between lo and hi elements), in a random order."""
        pool = list(seq)
        hi = len(pool) if hi is None else min(hi, len(pool))
        k = self.integer(min(lo, hi), hi)
        out = []
        for _ in range(k):
            out.append(pool.pop(self.integer(0, len(pool) - 1)))
        return tuple(out)

    def shuffled(self, seq) -> list:
        return list(self.subset(seq, len(seq), len(seq)))

    def weighted(self, options):
        """options: [(weight, value)]; the first is the simplest."""
        total = sum(w for w, _ in options)
        r = self.integer(0, total - 1)
        for w, v in options:
            if r < w:
                return v
            r -= w
        return options[-1][1]


class _RandomChooser(_Chooser):
    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo, hi):
        return self.rng.randint(lo, hi)


class _DrawChooser(_Chooser):
    def __init__(self, draw):
        self.draw = draw

    def integer(self, lo, hi):
        return lo if lo == hi else self.draw(st.integers(lo, hi))


# ============================================================================
# expressions
# ============================================================================

ADD, MUL, UNARY, POW, ATOM = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Ex:
    """An expression: its text and what the generator knows about it."""

    text: str
    dims: tuple = ()          # named dims, in the order of section 4
    cplx: bool = False        # complex-valued
    tok: bool = False         # per-token (depends on an input)
    state: bool = False       # reads the state
    learn: bool = False       # contains linear(...) or conv(...) (must sit in a named value)
    direct: frozenset = frozenset()   # inputs used directly (not through a named value)
    prec: int = ATOM
    const: bool = False       # a number: no param, input, state or arange in it
    constfn: bool = False     # holds a function applied to a number (`tanh(3)`, `sqrt(N)`)


# the imaginary unit
J = Ex("1j", cplx=True, const=True)


def _dims_of(a: tuple, b: tuple) -> tuple:
    return tuple(a) + tuple(d for d in b if d not in a)


def _par(e: Ex, need: int) -> str:
    return e.text if e.prec >= need else f"({e.text})"


def _join(*es: Ex, **kw) -> dict:
    out = dict(cplx=any(e.cplx for e in es), tok=any(e.tok for e in es), state=any(e.state for e in es),
               learn=any(e.learn for e in es), direct=frozenset().union(*(e.direct for e in es)),
               const=all(e.const for e in es), constfn=any(e.constfn for e in es))
    out.update(kw)
    return out


def num(v, text: str | None = None) -> Ex:
    """A number literal (negative ones are a unary minus)."""
    t = text or _fmt(v)
    return Ex(t, prec=UNARY if t.startswith("-") else ATOM, const=True)


def _fmt(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    return repr(float(v))


def binop(op: str, a: Ex, b: Ex, dims: tuple | None = None) -> Ex:
    """`a op b` with the parentheses the grammar needs (Python precedence)."""
    if op == "**":
        text, prec = f"{_par(a, ATOM)} ** {_par(b, UNARY)}", POW
    else:
        prec = ADD if op in "+-" else MUL
        text = f"{_par(a, prec)} {op} {_par(b, prec + 1)}"
    return Ex(text, **_join(a, b, dims=_dims_of(a.dims, b.dims) if dims is None else dims, prec=prec))


def neg(a: Ex) -> Ex:
    return Ex("-" + _par(a, UNARY), **_join(a, dims=a.dims, prec=UNARY))


def call(fn: str, *args: Ex, dims: tuple | None = None, cplx: bool | None = None, extra=()) -> Ex:
    """`fn(args..., extra...)`; dims default to the first argument's."""
    text = f"{fn}({', '.join([a.text for a in args] + list(extra))})"
    kw = _join(*args, dims=args[0].dims if dims is None else dims, prec=ATOM)
    if kw["const"]:
        kw["constfn"] = True
    if cplx is not None:
        kw["cplx"] = cplx
    return Ex(text, **kw)


def paren(a: Ex) -> Ex:
    return Ex(f"({a.text})", **_join(a, dims=a.dims, prec=ATOM))


# ============================================================================
# statements
# ============================================================================

@dataclass
class Stmt:
    kind: str                 # dims input state param value dynamics discretize recurrence scan output
    text: str
    name: str | None = None   # the name it defines
    role: str = ""            # what it is for (the state matrix "A", the step "dt", ...)


@dataclass
class _Built:
    """A spec before rendering: its statements and what the generator knows about them."""

    block: str
    descr: str | None
    stmts: list
    sizes: dict
    dims: dict
    length: int
    tags: set
    state: str
    sdims: tuple
    cplx: bool
    inputs: list              # [(name, dims)], the primary first
    params: dict              # name -> (dims, complex)
    values: dict              # name -> Ex
    structure: str
    rule: str                 # a discretization rule or "recurrence"
    scan_order: str
    extra_dims: tuple = ()    # dims that are not the state's


# ============================================================================
# the builder
# ============================================================================

class _Gen:
    """Builds one spec, construct by construct."""

    def __init__(self, ch: _Chooser):
        self.ch = ch
        self.used: set = set()
        self.dim_defs: list = []       # [(name, text)] in order
        self.dims: dict = {}           # name -> value at the sizes
        self.defaults: dict = {}       # name -> value at the spec's defaults
        self.mult: dict = {}           # name -> a number the dim is a multiple of (sizes and defaults)
        self.base: dict = {}           # base dims -> size passed
        self.stmts: list = []
        self.tags: set = set()
        self.params: dict = {}         # name -> (dims, complex)
        self.values: dict = {}         # name -> Ex (the reference)
        self.inputs: list = []         # [(name, dims)]
        self.extra_pool: list = []     # small dims that are not the state's, for reductions / linear
        self.reserved_dims: set = set()   # rows / cols / conv width: not axes of values

    # ---- names ------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new name from a hint: bare, or with a digit / letter decoration (Hq2, Nk, w3a).

        Never reserved (section 16), never a torch.nn.Module attribute, never a name
        that `linear` / `conv` weights take (`*_proj*`, `*_conv*`), never used twice.
        """
        letters = _UPPER if hint[:1].isupper() else _LOWER
        if self.ch.integer(0, 199) == 199:
            word = self.ch.choice(KEYWORDLIKE)
            if self._ok_name(word):
                self.used.add(word)
                self.tags.add("name:keywordlike")
                return word
        for _ in range(8):
            style = self.ch.integer(0, 3)
            if style == 0:
                name = hint
            elif style == 1:
                name = f"{hint}{self.ch.integer(0, 9)}"
            elif style == 2:
                name = f"{hint}{self.ch.choice(letters.lower())}"
            else:
                name = f"{hint}{self.ch.choice(letters.lower())}{self.ch.integer(0, 99)}"
            if self._ok_name(name):
                self.used.add(name)
                return name
        # the draws kept colliding (hypothesis may repeat a value): number the hint
        k = 1
        while not self._ok_name(f"{hint}_{k}"):
            k += 1
        self.used.add(f"{hint}_{k}")
        return f"{hint}_{k}"

    def _ok_name(self, name: str) -> bool:
        return (name not in self.used and name not in FORBIDDEN_NAMES and not name.startswith("_")
                and "_proj" not in name and "_conv" not in name and re.fullmatch(r"[A-Za-z]\w*", name) is not None)

    # ---- dims (section 3) --------------------------------------------------
    def new_dim(self, size: int, hint: str, mult: int = 1, derived: float = 0.35, axis: bool = True) -> str:
        """A dim of value `size` at the sizes. Base dims get a default other than `size`
        (a multiple of `mult` like `size`); derived ones an expression over earlier base
        dims (`2 * B`, `ceil(B / 2)`, `min(B, 3)`, ...) that is a positive integer at the
        sizes and at the defaults, and a multiple of `mult` at both."""
        assert size >= 1 and size % mult == 0
        name = self.fresh(hint)
        if self.ch.chance(derived):
            made = self._derived(name, size, mult)
            if made:
                return name
        default = size + mult * self.ch.integer(0, 3)
        self.dim_defs.append((name, str(default)))
        self.dims[name], self.defaults[name], self.mult[name] = size, default, mult
        self.base[name] = size
        return name

    def _base_for(self, size: int, mult: int = 1) -> str:
        """An existing base dim of that size (and multiple), or a new one (at most 4:
        every size passed is small)."""
        size = min(size, 4)
        have = [d for d, v in self.base.items() if v == size and self.mult[d] % mult == 0]
        if have and self.ch.chance(0.5):
            return self.ch.choice(sorted(have))
        return self.new_dim(size, self.ch.choice(["B", "Q", "M", "Z", "K"]), mult=mult, derived=0.0)

    def _derived(self, name: str, v: int, mult: int) -> bool:
        """Define `name` as an expression whose value is v at the sizes."""
        opts = []
        if mult == 1:
            opts += ["ceil", "floor1", "min", "max", "plus1", "ceil16"]
            if v >= 2:
                opts.append("plus1")
            if v in (1, 4):
                opts.append("square")
        if v % 2 == 0 and mult in (1, 2):
            opts.append("twice")
        if v % mult == 0 and v // mult >= 1 and mult > 1:
            opts.append("multiple")
        if v in (2, 3, 4) and mult == 1:
            opts.append("product" if v == 4 else "max")
        if not opts:
            return False
        kind = self.ch.choice(opts)
        if kind == "twice":
            b = self._base_for(v // 2)
            text, fn = f"2 * {b}", (lambda s: 2 * s[b])
            m = 2
        elif kind == "multiple":
            b = self._base_for(v // mult)
            text, fn, m = f"{mult} * {b}", (lambda s: mult * s[b]), mult
        elif kind == "plus1":
            if v < 2:
                return False
            b = self._base_for(v - 1)
            text, fn, m = f"{b} + 1", (lambda s: s[b] + 1), 1
        elif kind == "ceil":
            b = self._base_for(2 * v - self.ch.integer(0, 1))
            text, fn, m = f"ceil({b} / 2)", (lambda s: math.ceil(s[b] / 2)), 1
        elif kind == "floor1":
            b = self._base_for(2 * (v - 1) + self.ch.integer(0, 1) if v > 1 else 1)
            text, fn, m = f"floor({b} / 2) + 1", (lambda s: s[b] // 2 + 1), 1
        elif kind == "ceil16":
            if v != 1:
                return False
            b = self._base_for(self.ch.integer(1, 4))
            text, fn, m = f"ceil({b} / 16)", (lambda s: math.ceil(s[b] / 16)), 1
        elif kind == "min":
            b = self._base_for(v + self.ch.integer(0, 2))
            text, fn, m = f"min({b}, {v})", (lambda s: min(s[b], v)), 1
        elif kind == "max":
            b = self._base_for(self.ch.integer(1, v))
            text, fn, m = f"max({b}, {v})", (lambda s: max(s[b], v)), 1
        elif kind == "square":
            b = self._base_for(int(math.isqrt(v)))
            text, fn, m = f"{b} ** 2", (lambda s: s[b] ** 2), 1
        else:  # product
            b = self._base_for(2)
            c = self._base_for(2)
            text, fn, m = f"{b} * {c}", (lambda s: s[b] * s[c]), 1
        val, dflt = fn(self.dims), fn(self.defaults)
        if val != v or dflt < 1 or dflt % mult or val % mult:
            return False
        self.dim_defs.append((name, text))
        self.dims[name], self.defaults[name], self.mult[name] = v, dflt, max(m, mult) if m % mult == 0 else mult
        self.tags.add("dims:derived")
        return True

    def extra_dim(self, lo: int = 1, hi: int = 3, hint: str | None = None) -> str:
        """A small dim that is not the state's (an input channel, a rank, a bottleneck),
        reused when one exists."""
        pool = [d for d in self.extra_pool if lo <= self.dims[d] <= hi]
        if pool and self.ch.chance(0.6):
            return self.ch.choice(pool)
        d = self.new_dim(self.ch.integer(lo, hi), hint or self.ch.choice(["Hx", "R", "P", "G", "Ek"]))
        self.extra_pool.append(d)
        return d

    # ---- params (section 6, initializers section 8) ------------------------
    def param(self, dims: tuple, init: str, hint: str = "w", cplx: bool = False, frozen: bool | None = None,
              tag: str | None = None) -> Ex:
        """A `param` statement; flags in either order. The initializer's dims are a
        subset of `dims` and it is complex only when the param is (decision 13)."""
        name = self.fresh(hint)
        if frozen is None:
            frozen = self.ch.chance(0.15)
        flags = (["complex"] if cplx else []) + (["frozen"] if frozen else []) + self.sharing_flag()
        flags = self.ch.shuffled(flags)
        head = f"param {name}[{', '.join(dims)}]" + "".join(" " + f for f in flags)
        self.stmts.append(Stmt("param", f"{head} = {init}", name))
        self.params[name] = (tuple(dims), cplx)
        if frozen:
            self.tags.add("frozen")
        if cplx:
            self.tags.add("param:complex")
        m = re.match(r"[a-z_0-9A-Z]+", init)
        self.tags.add("init:" + (tag or (m.group(0) if m and m.group(0) in _INIT_WORDS else "expr")))
        for fam in _INIT_WORDS:
            if re.search(rf"\b{fam}\(", init):
                self.tags.add("init:" + fam)
        return Ex(name, dims=tuple(dims), cplx=cplx)

    def sharing(self, what: str) -> str | None:
        """A tensor's own direction sharing (decision 19), now and then: mostly with several
        directions, sometimes with one (where it changes nothing)."""
        multi = self.scan_order in ("bidirectional", "cross2d")
        # (convs are rarer than params and linears: a higher chance for them)
        if not self.ch.chance((0.9 if what == "conv" else 0.3) if multi else 0.05):
            return None
        s = self.ch.choice(["shared", "separate"])
        self.tags.add(f"sharing:{what}:{s}" if multi else "sharing:one_direction")
        return s

    def sharing_flag(self) -> list:
        s = self.sharing("param")
        return [s] if s else []

    def sharing_kw(self, what: str) -> list:
        s = self.sharing(what)
        return [f"params = {s}"] if s else []

    def coef_init(self, dims: tuple, cplx: bool = False) -> str:
        """A bounded initializer for a coefficient over `dims` (no kinks later: never
        all zeros, which would sit on relu's kink)."""
        opts = ["normal", "normal", "uniform", "ones", "log_uniform", "expr"]
        vec = [d for d in dims]
        if vec:
            opts += ["family", "arange"]
        k = self.ch.choice(opts)
        if k == "normal":
            return f"normal({self.ch.choice(['0', '0', '0.5', '-0.3'])}, {self.ch.choice(['1', '0.5', '0.3'])})"
        if k == "uniform":
            return self.ch.choice(["uniform(-1, 1)", "uniform(0.2, 1.5)", "uniform(-0.5, 0.5)"])
        if k == "ones":
            return "ones"
        if k == "log_uniform":
            return self.ch.choice(["log_uniform(0.1, 2)", "log_uniform(0.01, 0.5)"])
        if k == "expr":
            # activations need real arguments: no tanh of a (complex) draw for a complex param
            return self.ch.choice(["0.5", "-0.7", "pi / 4", "1 + 0.5 * normal(0, 1)", "sqrt(uniform(0.1, 1))"]
                                  + ([] if cplx else ["tanh(normal(0, 1))", "clamp(normal(0, 1), -1, 1)",
                                                      "max(normal(0, 1), -0.5)", "gelu(normal(0, 1)) + 0.2",
                                                      "clamp(normal(0, 1), min = -0.8)"]))
        d = self.ch.choice(vec)
        if k == "arange":
            return self.ch.choice([f"1 + arange({d})", f"arange({d}) / {d} - 0.4", f"exp(-arange({d}))",
                                   f"sqrt(0.5 + arange({d})) / sqrt({d})", f"log(1 + arange({d}))"])
        fams = [f"hippo_legs_B({d})", f"hippo_legt_B({d})", f"hippo_lagt_B({d})", f"s4d_real({d}) / {d}"]
        if self.mult.get(d, 1) % 2 == 0:
            fams.append(f"hippo_fout_B({d}) + 0.1")
        if cplx:
            fams += [f"s4d_lin({d}) / 4", f"hippo_legs_diag({d}) / 4"]
        return self.ch.choice(fams)

    # ---- named values (section 6) ------------------------------------------
    def value(self, e: Ex, hint: str = "v", role: str = "", structure: str | None = None) -> Ex:
        """A named value `NAME = EXPR (: STRUCTURE)`; returns a reference to it."""
        name = self.fresh(hint)
        text = f"{name} = {e.text}" + (f" : {structure}" if structure else "")
        self.note(e)
        if e.const:
            self.tags.add("const:value")
        self.stmts.append(Stmt("value", text, name, role))
        ref = Ex(name, dims=e.dims, cplx=e.cplx, tok=e.tok, state=e.state)
        # a square matrix (dense / block_diagonal / dplr state matrix) is no operand of
        # other values: it only broadcasts over dims other than N (decision 4)
        if structure is None or structure in ("diagonal", "scalar"):
            self.values[name] = ref
        if e.learn and "linear(" in e.text:
            self.tags.add("linear")
        return ref

    def note(self, e: Ex):
        """Tags of what an expression holds that the tags of its parts do not say."""
        if e.constfn:
            self.tags.add("fn:const")

    def maybe_value(self, e: Ex, hint: str, p: float = 0.4) -> Ex:
        """Hoist `e` into a named value (always when it holds linear/conv: their weights
        are named after the value, section 7)."""
        if e.learn or self.ch.chance(p):
            return self.value(e, hint)
        return e

    # ---- random expression trees (section 7) -------------------------------
    def leaf(self, allowed: tuple, tok: bool, st_: bool) -> Ex:
        """A bounded real leaf with dims drawn from `allowed`."""
        opts = [(3, "num"), (4, "param")]
        if allowed:
            opts.append((1, "arange"))
        ins = [(n, d) for n, d in self.inputs if set(d) <= set(allowed)] if tok else []
        if ins:
            opts.append((4, "input"))
        opts += [(1, "dimnum"), (1, "pi")]
        vals = [v for v in self.values.values() if set(v.dims) <= set(allowed) and not v.cplx
                and (tok or not v.tok) and (st_ or not v.state)]
        if vals:
            opts.append((2, "value"))
        if st_ and not self.cplx and set(self.sdims) <= set(allowed):
            opts.append((1, "state"))
        k = self.ch.weighted(opts)
        if k == "num":
            return num(0, self.ch.choice(["0.5", "2", "1.3", "0.25", "3", "1e-1", "0.75", "1.5e0", ".5", "2.",
                                          "5E-1"]))
        if k == "param":
            return self.param_leaf(allowed)
        if k == "arange":
            d = self.ch.choice(allowed)
            self.tags.add("arange")
            return Ex(f"arange({d})", dims=(d,))
        if k == "input":
            n, d = self.ch.choice(ins)
            e = Ex(n, dims=tuple(d), tok=True, direct=frozenset([n]))
            # now and then the input at an earlier token (a shifted input counts as one)
            return self.shifted(e) if self.ch.chance(0.12) else e
        if k == "dimnum":
            d = self.ch.choice(sorted(self.dims))
            self.tags.add("dimnum")
            return Ex(d, const=True)
        if k == "pi":
            return Ex("pi", const=True)
        if k == "value":
            self.tags.add("value:ref")
            return self.ch.choice(vals)
        self.tags.add("value:state")
        return Ex(self.state, dims=self.sdims, tok=True, state=True)

    def param_leaf(self, allowed: tuple) -> Ex:
        """A real param over some of `allowed` with a bounded initializer (or one made
        before)."""
        reuse = [n for n, (d, c) in self.params.items() if not c and set(d) <= set(allowed)
                 and n in self.generic_params]
        if reuse and self.ch.chance(0.3):
            n = self.ch.choice(sorted(reuse))
            return Ex(n, dims=self.params[n][0])
        dims = self.ch.subset(allowed)
        p = self.param(dims, self.coef_init(dims), hint=self.ch.choice(["w", "p", "a", "k"]))
        self.generic_params.add(p.text)
        return p

    def real(self, allowed: tuple, depth: int, tok: bool = False, st_: bool = False, learn: bool = False) -> Ex:
        """`_real`, mostly not a bare number: tanh(3) computes nothing worth testing
        often (it is valid, and tagged fn:const / const:value where it stays)."""
        e = self._real(allowed, depth, tok, st_, learn)
        if e.const and self.ch.chance(0.8):
            e = binop(self.ch.choice(["+", "*"]), e, self.param_leaf(allowed))
        return e

    def _real(self, allowed: tuple, depth: int, tok: bool = False, st_: bool = False, learn: bool = False) -> Ex:
        """A bounded real expression tree over every function of section 7, dims drawn
        from `allowed`; per-token only if `tok`, reading the state only if `st_`,
        `linear` / `conv` only if `learn` (the caller names the result). Domains:
        exp of tanh/sigmoid/-softplus only, log/sqrt/inv_softplus of values bounded
        away from 0, division by values >= 0.37, `**` with a positive base or an
        integer exponent; relu/abs get an offset argument (no kink at a structural 0)."""
        if depth <= 0 or self.ch.chance(0.2):
            return self.leaf(allowed, tok, st_)
        opts = [(5, "unary"), (5, "binary"), (2, "reduce"), (1, "pow"), (2, "div"), (1, "cpart"), (3, "bounded")]
        if learn and allowed:
            opts.append((2, "linear"))
        if learn and tok and self._fitting_inputs(allowed):
            opts.append((1, "conv"))
        if tok and self._fitting_inputs(allowed):
            opts.append((1, "prev"))
        k = self.ch.weighted(opts)
        sub = lambda a=allowed: self.real(a, depth - 1, tok, st_, learn)  # noqa: E731
        if k == "unary":
            f = self.ch.choice(["tanh", "sigmoid", "neg", "softplus", "silu", "relu", "abs", "exp", "expm1",
                                "log", "log1p", "sqrt", "inv_softplus", "paren", "pos"])
            self.tags.add("fn:" + f)
            if f in ("tanh", "sigmoid", "softplus", "silu"):
                return call(f, sub())
            if f == "neg":
                return neg(sub())
            if f == "pos":
                a = sub()
                return Ex("+" + _par(a, UNARY), **_join(a, dims=a.dims, prec=UNARY))
            if f == "paren":
                return paren(sub())
            if f in ("relu", "abs"):
                return call(f, binop("+", sub(), num(0, self.ch.choice(["0.3", "0.7", "0.1"]))))
            if f in ("exp", "expm1"):
                return call(f, self.unit(allowed, depth - 1, tok, st_, learn))
            if f == "log":
                return call("log", self.positive(allowed, depth - 1, tok, st_, learn))
            if f == "log1p":
                return call("log1p", call(self.ch.choice(["sigmoid", "softplus"]), sub()))
            if f == "sqrt":
                return call("sqrt", self.positive(allowed, depth - 1, tok, st_, learn))
            # inv_softplus: log(expm1(y)) for y in [0.1, 2.8]
            return call("inv_softplus", binop("+", call("sigmoid", sub()), num(0.1)) if self.ch.chance(0.5)
                        else call("exp", call("tanh", sub())))
        if k == "binary":
            op = self.ch.choice(["+", "-", "*"])
            return binop(op, sub(), sub())
        if k == "bounded":
            return self.bounded(sub)
        if k == "div":
            self.tags.add("op:/")
            return binop("/", sub(), self.divisor(allowed, depth - 1, tok, st_, learn))
        if k == "pow":
            self.tags.add("op:**")
            if self.ch.chance(0.5):
                return binop("**", call("tanh", sub()), num(0, self.ch.choice(["2", "3"])))
            return binop("**", self.divisor(allowed, depth - 1, tok, st_, learn),
                         self.unit(allowed, depth - 1, tok, st_, learn))
        if k == "reduce":
            return self.reduction(allowed, depth, tok, st_, learn)
        if k == "cpart":
            c = self.complex_(allowed, depth - 1, tok, st_, learn)
            f = self.ch.choice(["re", "im", "abs"])
            self.tags.add("fn:" + f)
            return call(f, c, cplx=False)
        if k == "linear":
            return self.linear(allowed, depth, tok, st_)
        if k == "prev":
            # prev of a per-token expression that does not read the state (section 7)
            e = self.real(allowed, max(depth - 2, 0), True, False, learn)
            if not e.tok:
                e = binop("*", e, self.input_leaf(allowed))
            return self.shifted(e)
        return self.conv(allowed, depth, st_)

    def bounded(self, sub) -> Ex:
        """gelu, gelu_tanh, erf, min, max and clamp (section 7). The second operand of
        min/max and the bounds of clamp are offset from the first so that no structural
        tie (two zeros) puts gradcheck on a kink; a bound may be a param."""
        ch = self.ch
        f = ch.choice(["gelu", "gelu_tanh", "erf", "min", "max", "clamp"])
        self.tags.add("fn:" + f)
        if f in ("gelu", "gelu_tanh", "erf"):
            return call(f, sub())
        if f in ("min", "max"):
            a, b = sub(), sub()
            b = binop("+", b, num(0, ch.choice(["0.3", "0.45"])))
            if ch.chance(0.5):
                a, b = b, a
            return call(f, a, b, dims=_dims_of(a.dims, b.dims))
        e = sub()
        form = ch.choice(["both", "kw_both", "kw_min", "kw_max", "pos_kw"])
        self.tags.add("clamp:" + form)
        lo, hi = ch.choice([("-0.5", "0.7"), ("-1", "0.25"), ("0.05", "2")])
        dims = e.dims
        if form != "kw_min" and e.dims and ch.chance(0.25):
            p = self.param(ch.subset(e.dims, 1), "uniform(0.3, 0.6)", hint="cap")
            hi = f"{p.text} + 0.4"
            dims = _dims_of(e.dims, p.dims)
            self.tags.add("clamp:param")
        extra = {"both": [lo, hi], "kw_both": [f"min = {lo}", f"max = {hi}"], "kw_min": [f"min = {lo}"],
                 "kw_max": [f"max = {hi}"], "pos_kw": [lo, f"max = {hi}"]}[form]
        return call("clamp", e, dims=dims, extra=extra)

    def unit(self, allowed, depth, tok=False, st_=False, learn=False) -> Ex:
        """A value in [-1, 1] (or [0, 1])."""
        e = self.real(allowed, depth, tok, st_, learn)
        return self.ch.choice([lambda: call("tanh", e), lambda: call("sigmoid", e),
                               lambda: binop("*", num(0.5), call("tanh", e))])()

    def positive(self, allowed, depth, tok=False, st_=False, learn=False) -> Ex:
        """A value >= 0.1, bounded."""
        e = self.real(allowed, depth, tok, st_, learn)
        k = self.ch.integer(0, 4)
        if k == 0:
            return binop("+", call("softplus", e), num(0.1))
        if k == 1:
            return call("exp", call("tanh", e))
        if k == 2:
            return binop("+", call("sigmoid", e), num(0.5))
        if k == 3:
            return binop("+", num(1), binop("**", call("tanh", e), num(2)))
        return binop("+", call("abs", e), num(0.25))

    def divisor(self, allowed, depth, tok=False, st_=False, learn=False) -> Ex:
        """A value >= 0.37, bounded: safe to divide by."""
        k = self.ch.integer(0, 4)
        if k == 0:
            d = self.ch.choice(sorted(self.dims))
            self.tags.add("dimnum")
            return Ex(d, const=True)
        if k == 1:
            return num(0, self.ch.choice(["2", "0.5", "3"]))
        e = self.real(allowed, depth, tok, st_, learn)
        if k == 2:
            return binop("+", num(1), call("sigmoid", e))
        if k == 3:
            return call("exp", call("tanh", e))
        return binop("+", call("softplus", e), num(0.5))

    def complex_(self, allowed, depth, tok=False, st_=False, learn=False) -> Ex:
        """A bounded complex expression: `a + 1j * b`, `exp(1j * a)`, complex params,
        conj, products, sqrt/log of values with a positive real part (away from the
        branch cut), expm1 / log1p of small values."""
        sub = lambda: self.real(allowed, max(depth, 0), tok, st_, learn)  # noqa: E731
        k = self.ch.integer(0, 7)
        self.tags.add("expr:complex")
        if k == 0:
            return binop("+", sub(), binop("*", J, sub()))
        if k == 1:
            return call("exp", binop("*", J, sub()))
        if k == 2:
            dims = self.ch.subset(allowed)
            return self.param(dims, self.ch.choice(["normal(0, 1)", "normal(0.5, 0.5)", "1 + 1j"]) if dims
                              else "normal(0, 1)", hint="c", cplx=True)
        if k == 3:
            self.tags.add("fn:conj")
            return call("conj", self.complex_(allowed, depth - 1, tok, st_, learn))
        if k == 4:
            return binop("*", self.complex_(allowed, depth - 1, tok, st_, learn), sub())
        if k == 5:
            f = self.ch.choice(["sqrt", "log"])
            self.tags.add("fn:c" + f)
            return call(f, binop("+", self.positive(allowed, depth - 1, tok, st_, learn),
                                 binop("*", J, sub())))
        if k == 6:
            f = self.ch.choice(["expm1", "log1p"])
            return call(f, binop("*", num(0.5), call("exp", binop("*", J, sub()))))
        if st_ and self.cplx and set(self.sdims) <= set(allowed):
            self.tags.add("value:state")
            return Ex(self.state, dims=self.sdims, cplx=True, tok=True, state=True)
        return binop("*", Ex("0.5j", cplx=True, const=True), sub())

    def reduction(self, allowed, depth, tok, st_, learn) -> Ex:
        """`sum(e, D...)` / `mean(e, D...)` over dims that `e` has (section 4)."""
        extra = self.ch.subset(self.extra_pool, 0, 1)
        if not extra or self.ch.chance(0.3):
            extra = (self.extra_dim(),) if not allowed or self.ch.chance(0.6) else ()
        over = tuple(dict.fromkeys(tuple(extra) + self.ch.subset(allowed, 0 if extra else 1, 1)))
        if not over:
            over = (self.extra_dim(),)
        inner_allowed = _dims_of(tuple(allowed), over)
        e = self.real(inner_allowed, depth - 1, tok, st_, learn)
        missing = [d for d in over if d not in e.dims]
        if missing:
            e = binop("*", e, self.param(tuple(missing), self.coef_init(tuple(missing)), hint="r"))
        f = self.ch.choice(["sum", "mean"])
        self.tags.add("reduce:" + f)
        if len(over) > 1:
            self.tags.add("reduce:multi")
        return call(f, e, dims=tuple(d for d in e.dims if d not in over), extra=list(over))

    def linear(self, allowed, depth, tok, st_) -> Ex:
        """`linear(e, D..., bias = ...)`: e per-token (or reading the state), any dims
        (consumed); D... drawn from `allowed` (section 7, decision 8)."""
        outd = self.ch.subset(allowed, 1, 2)
        argdims = self.ch.subset(self._small_dims(), 0, 2)
        e = self.real(tuple(argdims), max(depth - 2, 0), tok, st_, True)
        if not (e.tok or e.state):
            e = binop("*", e, self.input_leaf())
        extra = list(outd)
        b = self.ch.choice([None, "true", "false"])
        if b:
            extra.append(f"bias = {b}")
            self.tags.add("linear:bias")
        extra += self.sharing_kw("linear")
        self.tags.add("linear")
        return Ex(f"linear({e.text}, {', '.join(extra)})", dims=tuple(outd), cplx=False, tok=True,
                  state=e.state, learn=True, direct=e.direct)

    def conv(self, allowed, depth, st_) -> Ex:
        """`conv(e, K, bias = ...)`: a causal depthwise conv of a per-token e that does
        not read the state; K an integer or a dim (decision 9)."""
        e = self.real(allowed, max(depth - 2, 0), True, False, True)
        if not e.tok:
            e = binop("*", e, self.input_leaf(allowed))
        if e.cplx:
            e = call("re", e, cplx=False)
        k = self.conv_width()
        extra = [k]
        b = self.ch.choice([None, "true", "false"])
        if b:
            extra.append(f"bias = {b}")
        extra += self.sharing_kw("conv")
        self.tags.add("conv")
        return Ex(f"conv({e.text}, {', '.join(extra)})", dims=e.dims, tok=True, learn=True, direct=e.direct)

    def lin(self, arg: str, dims) -> Ex:
        """`linear(arg, dims...)` of a per-token argument, maybe with `bias = ...`."""
        self.tags.add("linear")
        kw = self.bias_kw() + "".join(", " + k for k in self.sharing_kw("linear"))
        return Ex(f"linear({arg}, {', '.join(dims)}{kw})", dims=tuple(dims), tok=True, learn=True)

    def bias_kw(self) -> str:
        """`linear`'s optional keyword: nothing (no bias), `bias = true` or `bias = false`."""
        b = self.ch.weighted([(3, ""), (1, "true"), (1, "false")])
        if not b:
            return ""
        self.tags.add("linear:bias")
        return f", bias = {b}"

    def shifted(self, e: Ex) -> Ex:
        """`prev(e)` or `prev(e, k)` of a per-token e that does not read the state: e k
        tokens earlier, zero before the first (decision 17). Linear in the input where e is."""
        self.tags.add("prev")
        k = self.ch.weighted([(4, 1), (1, 2), (1, 3)])
        if k > 1:
            self.tags.add("prev:k")
        extra = [] if k == 1 and self.ch.chance(0.8) else [str(k)]
        return Ex(f"prev({', '.join([e.text] + extra)})", dims=e.dims, cplx=e.cplx, tok=True, learn=e.learn,
                  direct=e.direct)

    def conv_width(self) -> str:
        """K: an integer 1..4 (1: no look-back, a tail of 0 tokens) or a dim 2..4."""
        if self.ch.chance(0.5):
            k = self.ch.integer(1, 4)
            if k == 1:
                self.tags.add("conv:k1")
            return str(k)
        d = self.new_dim(self.ch.integer(2, 4), "K", derived=0.2)
        self.reserved_dims.add(d)
        return d

    def input_leaf(self, allowed=None) -> Ex:
        """An input (any whose dims fit `allowed`, the primary one preferred)."""
        ins = [(n, d) for n, d in self.inputs if allowed is None or set(d) <= set(allowed)]
        assert ins, "callers check that an input fits"
        n, d = ins[0] if len(ins) == 1 or self.ch.chance(0.6) else self.ch.choice(ins)
        return Ex(n, dims=tuple(d), tok=True, direct=frozenset([n]))

    def _fitting_inputs(self, allowed) -> list:
        return [(n, d) for n, d in self.inputs if set(d) <= set(allowed)]

    def _small_dims(self):
        return tuple(self.sdims) + tuple(self.extra_pool)

    # ---- the spec ----------------------------------------------------------
    def build(self) -> _Built:
        ch = self.ch
        self.generic_params: set = set()
        self.block = self.fresh(ch.choice(["Gen", "Ssm", "Layer", "Fuzz"]).capitalize())
        # the system's kind first: it constrains the state's dims
        self.structure = ch.choice(["diagonal", "scalar", "dense", "dplr", "block_diagonal"])
        self.rule = ch.choice(["zoh", "bilinear", "euler", "backward_euler", "zoh_euler", "recurrence"])
        self.scan_order = ch.weighted([(4, "causal"), (2, "reverse"), (3, "bidirectional"), (2, "cross2d"),
                                       (1, "global")])
        # dplr in the delta rule's form: a real scalar Lambda and rank-one P, Q (a real state
        # mostly); otherwise S4's complex form
        self.delta = self.structure == "dplr" and ch.chance(0.5)
        self.delta_k = None
        if self.delta and self.rule != "recurrence" and ch.chance(0.75):
            self.rule = "recurrence"   # the chunked form's case
        self.cplx = (self.structure == "dplr" and not self.delta) or ch.chance(0.2 if self.delta else 0.45)
        self.tags |= {self.structure, self.rule, self.scan_order}
        if self.delta:
            self.tags.add("dplr:delta")
        if self.cplx:
            self.tags.add("complex")
        self.make_state()
        self.make_inputs()
        A = self.state_matrix()
        E = self.input_term()
        self.note(E)
        self.cinput = None
        if self.cplx and ch.chance(0.25):
            E = self.complex_input(E)
        sign = ch.choice(["+", "+", "-"])
        if sign == "-":
            self.tags.add("input:subtracted")
        if self.rule == "recurrence":
            self.stmts.append(Stmt("recurrence", f"recurrence {self.state} = {A} {self.state} {sign} {E.text}"))
        else:
            self.stmts.append(Stmt("dynamics", f"dynamics {self.state}' = {A} {self.state} {sign} {E.text}"))
            step = self.step()
            self.note(step)
            self.stmts.append(Stmt("discretize", f"discretize {self.rule}, step = {step.text}"))
        self.scan()
        self.output()
        # (several states under `scan global` are refused: not supported yet)
        # (nor with a readout of prev(x): several states read only after their update, yet)
        if self.scan_order != "global" and "prev:state" not in self.tags and ch.chance(0.2):
            self.extra_states()
        self.ensure_inputs_used()
        if self.cinput:
            self.inputs.insert(0, self.cinput)
        length = self.length if self.scan_order == "cross2d" else ch.choice([1, 2, 3, 5, 7, 11, 12, 4, 8])
        return _Built(self.block, self.descr(), self.stmts, dict(self.base), dict(self.dims), length,
                      self.tags, self.state, self.sdims, self.cplx, self.inputs, self.params, self.values,
                      self.structure, self.rule, self.scan_order, tuple(self.extra_pool))

    def descr(self):
        if self.ch.chance(0.3):
            return None
        return f"generated: {self.structure}, {self.rule}, {self.scan_order}"

    def make_state(self):
        """`state x[...]` of 1-3 dims, each <= 4, at most 24 elements; the last dim N is
        the matrix dim. block_diagonal: N divisible by the block count (decision 5),
        at the sizes and at the defaults; N even where hippo_fout may be used."""
        ch = self.ch
        k = ch.weighted([(3, 1), (4, 2), (2, 3)])
        matrix = self.structure in ("dense", "dplr", "block_diagonal")
        self.blocks = None
        sizes = [ch.integer(1, 4) for _ in range(k - 1)]
        while math.prod(sizes) > 8:
            sizes[ch.integer(0, len(sizes) - 1)] = 1
        hints = ["H", "Ch", "Hd", "P", "E", "Sz", "D"]
        lead = [self.new_dim(s, ch.choice(hints)) for s in sizes]
        mult = 1
        if self.structure == "block_diagonal":
            nblocks = ch.choice([2, 2, 1, 4])
            per = ch.integer(1, 2) if nblocks < 4 else 1
            size_n = nblocks * per
            form = ch.choice(["literal", "dim"])
            if form == "dim":
                kb = self.new_dim(nblocks, "Kb", derived=0.0)
                self.reserved_dims.add(kb)
                nb = self._base_for(per)
                n = self.fresh(ch.choice(["N", "Nb", "M"]))
                self.dim_defs.append((n, f"{kb} * {nb}"))
                self.dims[n], self.defaults[n], self.mult[n] = size_n, self.defaults[kb] * self.defaults[nb], 1
                self.blocks = kb
                self.tags.add("blocks:dim")
            else:
                n = self.new_dim(size_n, ch.choice(["N", "Sz", "M"]), mult=nblocks)
                self.blocks = str(nblocks)
        else:
            if matrix and ch.chance(0.4):
                mult = 2
                size_n = ch.choice([2, 4])
            else:
                size_n = ch.integer(1, 4) if not matrix else ch.integer(2, 4)
            n = self.new_dim(size_n, ch.choice(["N", "Sz", "M", "Nk"]), mult=mult)
        sd = lead + [n]
        self.sdims = tuple(sd)
        self.N = n
        self.state = self.fresh(ch.choice(["x", "h", "s", "xs"]))
        cx = " complex" if self.cplx else ""
        self.stmts.append(Stmt("state", f"state {self.state}[{', '.join(sd)}]{cx}", self.state))
        self.tags.add(f"state:{len(sd)}d")

    def complex_input(self, E: Ex) -> Ex:
        """`input w[...] complex` as the primary input (declared first), entering the input
        term as `Bw * w` with a complex coefficient; what E drove before becomes a per-token
        forcing beside it (decision 7). Only on a complex state (a complex input term needs
        one)."""
        ch = self.ch
        w = self.fresh(ch.choice(["w", "uc", "zin"]))
        wd = tuple(ch.subset(self.sdims, 0 if len(self.sdims) > 1 else 1, 2))
        Bd = tuple(ch.subset(self.sdims, 1))
        Bw = self.param(_dims_of(Bd, ()), self.coef_init(Bd, cplx=True), hint="Bw", cplx=True)
        # (joins self.inputs, as the primary, once the rest is built: the step and the output
        # draw real expressions of the inputs)
        self.cinput = (w, wd)
        first = next(i for i, s in enumerate(self.stmts) if s.kind == "input")
        self.stmts.insert(first, Stmt("input", f"input {w}[{', '.join(wd)}] complex", w))
        self.tags |= {"input:complex"}
        wex = Ex(w, dims=wd, tok=True, cplx=True, direct=frozenset([w]))
        if ch.chance(0.3):
            # prev of the complex input (decision 17: e may be complex; a complex tail)
            wex = self.shifted(wex)
            self.tags.add("prev:complex")
        piece = binop("*", Bw, wex)
        return binop("+", E, piece) if ch.chance(0.5) else binop("+", piece, E)

    def make_inputs(self):
        """The primary input (its dims drawn from the state's, or with a channel dim of
        its own: MIMO), maybe a second input (used in named values), maybe `tau[]`."""
        ch = self.ch
        kind = ch.weighted([(5, "sub"), (3, "mimo"), (1, "scalar")])
        if kind == "sub":
            dims = ch.subset(self.sdims, 1, 2)
        elif kind == "mimo":
            hx = self.extra_dim(1, 4, hint=ch.choice(["H", "Hx", "Din", "Ch"]))
            dims = (hx,) + ch.subset(tuple(d for d in self.sdims if d != self.N), 0, 1)
            dims = tuple(ch.shuffled(dims))
        else:
            dims = ()
        self.tags.add("input:" + kind)
        u = self.fresh(ch.choice(["u", "u", "xin", "inp"]))
        self.inputs.append((u, tuple(dims)))
        self.tau = None
        if ch.chance(0.3):
            v = self.fresh(ch.choice(["v", "z", "w"]))
            vd = ch.subset(self._small_dims(), 1, 2)
            self.inputs.append((v, tuple(vd)))
            self.tags.add("input:second")
        if self.rule != "recurrence" and ch.chance(0.25):
            self.tau = self.fresh(ch.choice(["tau", "dtau", "tau"]))
            self.inputs.append((self.tau, ()))
            self.tags.add("tau")
        # one statement, or one each (the primary first either way)
        if len(self.inputs) > 1 and ch.chance(0.5):
            self.stmts.append(Stmt("input", "input " + ", ".join(f"{n}[{', '.join(d)}]" for n, d in self.inputs)))
        else:
            for n, d in self.inputs:
                self.stmts.append(Stmt("input", f"input {n}[{', '.join(d)}]", n))

    # ---- the state matrix (section 9) --------------------------------------
    def state_matrix(self) -> str:
        """The state matrix as a named value with its structure; returns its name.
        Continuous: real parts <= -0.2 (or HiPPO-like matrices); recurrence: modulus < 1."""
        s = self.structure
        rec = self.rule == "recurrence"
        if s == "diagonal":
            e = self.diag(self.sdims, rec, exact=False)
            st_text = "diagonal"
        elif s == "scalar":
            k = self.ch.integer(0, len(self.sdims) - 1)
            e = self.diag(self.sdims[:k], rec, exact=True)
            st_text = "scalar"
        elif s in ("dense", "block_diagonal"):
            e = self.matrix(rec)
            st_text = "dense" if s == "dense" else f"block_diagonal(blocks = {self.blocks})"
        else:
            e = self.dplr(rec)
            st_text = "dplr"
        if e.tok:
            self.tags.add("A:token")
        ref = self.value(e, self.ch.choice(["A", "Am", "lam", "Ab", "Lam"]), role="A", structure=st_text)
        return ref.text

    def shaped(self, dims: tuple, e: Ex) -> Ex:
        """`e` with exactly `dims` in that order (for `scalar`: a prefix of the state's)."""
        if tuple(e.dims) == tuple(dims):
            return e
        base = self.param(dims, self.ch.choice(["normal(0, 0.3)", "uniform(-0.5, 0.5)"]), hint="a")
        return binop("+", base, e)

    def diag(self, allowed: tuple, rec: bool, exact: bool) -> Ex:
        """A diagonal (or scalar) state matrix over `allowed`."""
        ch = self.ch
        tok = ch.chance(0.3) and any(set(d) <= set(self._small_dims()) for _, d in self.inputs)
        learn = tok and allowed and ch.chance(0.7)

        def rnd():
            if learn:
                e = self.linear(allowed, 2, True, False)
                if ch.chance(0.5):
                    e = binop(ch.choice(["+", "*"]), e, self.real(allowed, 1))
            else:
                e = self.real(allowed, ch.integer(0, 2), tok=tok)
            return self.shaped(allowed, e) if exact else e

        def real_part() -> Ex:
            k = ch.integer(0, 5)
            if k == 0:
                return neg(call("exp", call("tanh", rnd())))
            if k == 1:
                return neg(paren(binop("+", call("softplus", binop("*", num(2), call("tanh", rnd()))), num(0.2))))
            if k == 2:
                return binop("-", num(0, "-0.3"), call("sigmoid", rnd()))
            if k == 3:
                # A = -exp(A_log): S4D-Real's / Mamba's parametrisation
                dims = tuple(allowed) if exact else tuple(ch.subset(allowed))
                inits = ["log(uniform(0.5, 2))", "log(0.5)"]
                if self.N in dims:
                    inits += [f"log(1 + arange({self.N}))", f"log(-s4d_real({self.N}))"]
                return neg(call("exp", self.param(dims, ch.choice(inits), hint="A_log")))
            if k == 4 and not exact and self.N in allowed:
                init = ch.choice([f"s4d_real({self.N})", f"re(s4d_lin({self.N}))", "-uniform(0.3, 1.5)"])
                return self.param((self.N,), init, hint="Ar")
            if not exact and ch.chance(0.3):
                self.tags.add("A:const")
                return num(0, ch.choice(["-0.5", "-1.5"]))
            return neg(call("exp", call("tanh", rnd())))

        def imag_part() -> Ex:
            k = ch.integer(0, 3)
            if k == 0 and self.N in allowed and not exact:
                return binop("*", Ex("pi"), Ex(f"arange({self.N})", dims=(self.N,)))
            if k == 1:
                return binop("*", num(3), call("tanh", rnd()))
            if k == 2 and self.N in allowed and not exact:
                return self.param((self.N,), f"im(s4d_inv({self.N}))", hint="Ai")
            return self.param(allowed if exact else ch.subset(allowed), "normal(0, 2)", hint="Ai")

        if not rec:
            if not self.cplx or ch.chance(0.2):
                e = real_part()
                if self.cplx:
                    self.tags.add("A:real_on_complex")
                return e
            k = ch.integer(0, 3)
            if k == 0 or exact:
                im = imag_part()
                if exact:
                    im = self.shaped(allowed, im)
                re_ = real_part()
                if exact:
                    re_ = self.shaped(allowed, re_) if re_.dims != tuple(allowed) else re_
                return binop("+", re_, binop("*", J, im))
            if k == 1 and self.N in allowed:
                fam = ch.choice([f"s4d_lin({self.N})", f"s4d_inv({self.N})", f"hippo_legs_diag({self.N})",
                                 f"-0.5 + 1j * pi * arange({self.N})"])
                dims = tuple(dict.fromkeys(ch.subset([d for d in allowed if d != self.N]) + (self.N,)))
                lam = self.param(dims, fam, hint="Lambda", cplx=True)
                if ch.chance(0.4):
                    return binop("*", call("exp", call("tanh", rnd())), lam)
                return lam
            return neg(call("exp", binop("+", call("tanh", rnd()),
                                         binop("*", J, call("tanh", rnd())))))
        # recurrence: |A| < 1
        k = ch.integer(0, 3)
        if not self.cplx or ch.chance(0.2):
            if k == 0:
                return call("sigmoid", rnd())
            if k == 1:
                return call("exp", neg(call("softplus", rnd())))
            if k == 2:
                return binop("*", num(0.9), call("tanh", rnd()))
            if exact:
                return self.param(allowed, "uniform(0.1, 0.9)", hint="ab")
            return call("exp", neg(call("exp", call("tanh", rnd()))))
        if k == 0:
            return binop("*", call("sigmoid", rnd()), call("exp", binop("*", J, rnd())))
        if k == 1:
            return call("exp", binop("+", neg(call("softplus", rnd())), binop("*", J, rnd())))
        if k == 2 and not exact:
            dims = ch.subset(allowed, 1)
            return self.param(dims, ch.choice(["lru_ring(0.4, 0.95)", "lru_ring(0.8, 0.99)"]), hint="lam",
                              cplx=True)
        # LRU's parametrisation
        dims = allowed if exact else ch.subset(allowed, 1)
        nu = self.param(dims, "log(-0.5 * log(uniform(0.81, 0.998)))", hint="nu_log")
        th = self.param(dims, "log(uniform(0.01, 2 * pi))", hint="theta_log")
        self.tags.add("A:lru")
        return call("exp", binop("+", neg(call("exp", nu)), binop("*", J, call("exp", th))))

    def matrix(self, rec: bool) -> Ex:
        """A square matrix `[..., N, N]` for dense / block_diagonal: HiPPO families
        (+ small noise, scaled by a positive factor), or small random entries (rules that
        need no inverse of A, or a recurrence: spectral radius well below 1)."""
        ch = self.ch
        N = self.N
        lead = ch.subset([d for d in self.sdims if d != N], 0, 1)
        dims = tuple(lead) + (N, N)
        cx = self.cplx and ch.chance(0.4)
        if rec:
            init = ch.choice([f"normal(0, 0.3 / sqrt({N}))", "normal(0, 0.15)", f"0.1 * hippo_legs({N})",
                              f"0.5 * hippo_lagt({N})", f"0.2 * hippo_legt({N}) + normal(0, 0.05)"])
        else:
            fams = [f"hippo_legs({N})", f"hippo_legt({N})", f"hippo_lagt({N})",
                    f"hippo_legs({N}) + normal(0, 0.1)", f"hippo_lagt({N}) + normal(0, 0.02)"]
            if self.mult.get(N, 1) % 2 == 0 and self.rule != "zoh":
                fams.append(f"hippo_fout({N})")
            if self.rule != "zoh":
                fams.append("normal(0, 0.3)")
            init = ch.choice(fams)
        M = self.param(dims, init, hint="M", cplx=cx)
        if self.rule == "euler" and "hippo_legs" in init:
            # euler: I + step A; keep |1 + step a| moderate for LegS' eigenvalues -1..-N
            M = binop("*", num(0.3), M, dims=M.dims)
        if not rec and ch.chance(0.3):
            s = self.param(ch.subset([d for d in self.sdims if d != N], 0, 1), "uniform(-0.5, 0.5)", hint="g")
            self.tags.add("matrix:scaled")
            M = binop("*", call("exp", s), M, dims=tuple(d for d in s.dims if d not in M.dims) + M.dims)
        elif ch.chance(0.2):
            noise = self.param(dims, "normal(0, 0.03)", hint="Mn")
            self.tags.add("matrix:sum")
            M = binop("+", M, noise, dims=dims)
        if ch.chance(0.2):
            # a per-token matrix: a positive per-token factor in (0, 1] over leading dims
            # (a gated dense recurrence / a selective dense system) keeps it stable
            lead2 = ch.subset([d for d in self.sdims if d != N], 0, 1)
            u, ud = self.inputs[0]
            if lead2:
                z = self.lin(u, lead2)
            elif ud:
                z = call("mean", Ex(u, dims=ud, tok=True), dims=(), extra=list(ud))
            else:
                z = Ex(u, tok=True)
            gate = call("sigmoid", z) if ch.chance(0.5) else call("exp", neg(call("softplus", z)))
            self.tags.add("A:token")
            M = binop("*", gate, M, dims=tuple(d for d in gate.dims if d not in M.dims) + M.dims)
        return M

    def feature(self, dims: tuple) -> Ex:
        """A per-token real value over `dims`: linear(u, dims), or the mean of the primary
        input (the input itself when it is a scalar) when `dims` is empty."""
        u, ud = self.inputs[0]
        if dims:
            return self.lin(u, dims)
        if ud:
            return call("mean", Ex(u, dims=ud, tok=True), dims=(), extra=list(ud))
        return Ex(u, tok=True)

    def dplr_delta(self, rec: bool) -> Ex:
        """`dplr(Lambda, beta * k, k)` (decision 6, section 9: the delta rule): a real scalar
        Lambda (a number, a static or per-token gate over some leading state dims, no N) and
        rank-one P, Q [..., N] with |k| < 1 and 0 < beta < 1, so that Lambda I - beta k k^T
        has eigenvalues in (Lambda - 1, Lambda]: for a recurrence Lambda in (0, 1], for a
        continuous system Lambda < 0 (then A is negative definite)."""
        ch = self.ch
        N = self.N
        others = [d for d in self.sdims if d != N]
        u, ud = self.inputs[0]
        lead = tuple(ch.subset(others, 0, 1))
        kdims = lead + (N,)
        if ch.chance(0.8):
            kr = self.value(self.lin(u, kdims), ch.choice(["kr", "kraw"]))
        else:
            kr = self.param(kdims, "normal(0, 1)", hint="kp")
            self.tags.add("dplr:static_k")
        norm = call("sqrt", binop("+", num(0.25), call("sum", binop("*", kr, kr), dims=lead, extra=[N])), dims=lead)
        k = self.value(binop("/", kr, norm, dims=kdims), "k")
        self.delta_k = k
        bd = tuple(ch.subset(others, 0, 1))
        if ch.chance(0.7):
            beta = self.value(call("sigmoid", self.feature(bd), dims=bd), "beta")
        else:
            beta = num(0.5)
        gd = tuple(ch.subset(others, 0, 1))
        if rec:
            opt = ch.choice(["one", "number", "gate", "static"])
            self.tags.add("dplr:lambda_" + opt)
            if opt == "one":
                lam = num(1)
            elif opt == "number":
                lam = num(0.9)
            elif opt == "gate":
                z = self.feature(gd)
                lam = self.value(call("sigmoid", z, dims=gd) if ch.chance(0.5) else
                                 call("exp", neg(call("softplus", z, dims=gd))), "alpha")
            else:
                # a bare param: of unknown sign to the compiler (the chunked form is not chosen)
                lam = self.param(gd, "uniform(0.5, 1)", hint="g")
        else:
            lam = neg(call("exp", self.param(gd, "uniform(-1, 0)", hint="la"))) if ch.chance(0.6) else num(-0.5)
            self.tags.add("dplr:lambda_negative")
        P = binop("*", beta, k) if ch.chance(0.8) else k
        Q = k if P is not k else binop("*", beta, k)
        if P is not k and ch.chance(0.3) and not lam.const:
            # Gated DeltaNet's alpha (I - beta k k^T) = dplr(alpha, alpha * beta * k, k)
            P = binop("*", lam, P)
            self.tags.add("dplr:gated")
        self.tags |= {"dplr:scalar", "dplr:rank1"}
        return Ex(f"dplr({lam.text}, {P.text}, {Q.text})", dims=_dims_of(_dims_of(lam.dims, lead), (N,)),
                  tok=lam.tok or P.tok)

    def dplr(self, rec: bool) -> Ex:
        """`dplr(Lambda, P, Q)` with Lambda[..., N] complex, P, Q [..., N, R] (decision 6):
        Re(Lambda) = -1/2 and P = Q (or small P, Q), or |Lambda| < 1 for a recurrence."""
        ch = self.ch
        N = self.N
        if self.delta:
            return self.dplr_delta(rec)
        others = [d for d in self.sdims if d != N]
        R = self.extra_dim(1, 2, hint="R")
        ld = tuple(ch.subset(others, 0, 1)) + (N,)
        if rec:
            lam = self.param(ld, ch.choice(["lru_ring(0.3, 0.8)", f"0.5 * exp(1j * pi * arange({N}) / {N})"]),
                             hint="Lambda", cplx=True)
            pinit = "normal(0, 0.1)"
        else:
            lam = self.param(ld, ch.choice([f"hippo_legs_diag({N})", f"s4d_lin({N})", f"s4d_inv({N})",
                                            f"-0.5 + 1j * pi * arange({N})"]), hint="Lambda", cplx=True)
            pinit = ch.choice([f"sqrt(0.5 + arange({N})) / sqrt({N})", "normal(0, 0.2)"])
        P = self.param(tuple(ch.subset(others, 0, 1)) + (N, R), pinit, hint="P", cplx=True)
        if ch.chance(0.4):
            Q = P
            self.tags.add("dplr:PP")
        else:
            qc = ch.chance(0.8)
            if not qc:
                # P and Q need not both be complex (Lambda must be)
                self.tags.add("dplr:realQ")
            Q = self.param(tuple(ch.subset(others, 0, 1)) + (N, R), pinit if rec else "normal(0, 0.2)", hint="Q",
                           cplx=qc)
        return Ex(f"dplr({lam.text}, {P.text}, {Q.text})", dims=_dims_of(lam.dims, (N,)), cplx=True)

    # ---- the step (section 10) ---------------------------------------------
    def step(self) -> Ex:
        """A real positive step, bounded (<= ~0.6), dims drawn from the state's (not N
        for square matrices): a number, static per channel, per-token (selective dt) or
        from `tau[]` (positive: the harness draws scalar inputs in [0.5, 1.5])."""
        ch = self.ch
        allowed = tuple(d for d in self.sdims if not (self.structure in ("dense", "dplr", "block_diagonal")
                                                       and d == self.N))
        if self.structure == "scalar" and ch.chance(0.7):
            allowed = allowed[:ch.integer(0, len(allowed) - 1)] if allowed else ()
        kinds = ["const", "static", "static", "token", "token"] + (["tau", "tau"] if self.tau else [])
        kind = ch.choice(kinds)
        self.tags.add("step:" + kind)
        if kind == "const":
            e = num(0, ch.choice(["0.1", "0.05", "1e-1", "0.25"])) if ch.chance(0.7) else binop("/", num(0.3), Ex(
                ch.choice(sorted(self.dims))))
        elif kind == "static":
            dims = ch.subset(allowed)
            k = ch.integer(0, 2)
            if k == 0:
                e = call("exp", self.param(dims, ch.choice(["log(log_uniform(0.01, 0.5))", "log(uniform(0.05, 0.5))"]),
                                           hint="log_dt"))
            elif k == 1:
                e = self.param(dims, "log_uniform(0.01, 0.5)", hint="dt")
            else:
                e = binop("+", binop("*", num(0.5), call("sigmoid", self.real(allowed, 2))), num(0.01))
        elif kind == "token":
            e = self.token_step(allowed)
        else:
            tau = Ex(self.tau, tok=True, direct=frozenset([self.tau]))
            k = ch.integer(0, 3)
            dims = ch.subset(allowed)
            p = self.param(dims, "log(log_uniform(0.05, 0.5))", hint="log_dt")
            if k == 0:
                e = binop("*", tau, call("exp", p))
            elif k == 1:
                e = binop("*", call("exp", p), tau)
            elif k == 2:
                e = binop("*", num(0.3), call("sigmoid", binop("+", tau, p)))
            else:
                e = binop("*", self.token_step(allowed), tau)
        if self.rule == "euler":
            # Euler is stable only for |1 + step a| < 1: with eigenvalues like -1/2 + 20i
            # (hippo_legs_diag) or -4 (LegS) keep step * |a| small, as it is used in practice
            e = binop("*", num(0.1), e)
        return self.maybe_value(e, ch.choice(["dt", "delta", "dt"]))

    def token_step(self, allowed) -> Ex:
        """Mamba's `softplus(linear(u, D...) + dt_bias)` (maybe through a low-rank
        bottleneck), or `0.5 * sigmoid(<per-token tree>) + 0.01`."""
        ch = self.ch
        if allowed and ch.chance(0.7):
            outd = ch.subset(allowed, 1)
            bias = self.param(outd, ch.choice(["inv_softplus(log_uniform(0.01, 0.1))", "inv_softplus(0.05)"]),
                              hint="dt_bias")
            arg = self.input_leaf()
            if ch.chance(0.4):
                arg = Ex(f"linear({arg.text}, {self.extra_dim(1, 2, hint='Rk')})", tok=True, learn=True,
                         direct=arg.direct)
            lin = Ex(f"linear({arg.text}, {', '.join(outd)}{self.bias_kw()})", dims=tuple(outd), tok=True, learn=True,
                     direct=arg.direct)
            self.tags.add("linear")
            dt = call("softplus", binop("+", lin, bias))
            if ch.chance(0.3):
                # Mamba-2's dt_limit: the step clamped (it stays positive)
                self.tags |= {"fn:clamp", "step:clamp"}
                return call("clamp", dt, extra=ch.choice([["0.001", "0.1"], ["min = 0.001", "max = 0.1"],
                                                           ["min = 0.01"]]))
            return dt
        e = self.real(allowed, 2, tok=True, learn=True)
        if not e.tok:
            # make it per-token: add the mean of the primary input over its dims
            u, ud = self.inputs[0]
            uex = Ex(u, tok=True, direct=frozenset([u]))
            e = binop("+", e, call("mean", Ex(u, dims=ud), dims=(), extra=list(ud)) if ud else uex)
            e = Ex(e.text, dims=e.dims, tok=True, learn=e.learn, direct=e.direct | {u}, prec=e.prec)
        return binop("+", binop("*", num(0.5), call("sigmoid", e)), num(0.01))

    # ---- the input term (section 10, decision 7) ---------------------------
    def input_term(self) -> Ex:
        """E: dims drawn from the state's, linear in the primary input (named values are
        coefficients), or a per-token forcing / features term. One or two pieces."""
        ch = self.ch
        pieces = [self.input_piece()]
        if ch.chance(0.3):
            pieces.append(self.forcing() if ch.chance(0.5) else self.input_piece())
        if ch.chance(0.2):
            # Mamba-3's beta * prev(B * u) beside gamma * B * u: a shifted input term counts as
            # an input for linearity (decision 17), so prev of the primary input or of a piece
            u, ud = self.inputs[0]
            sh = self.coef_times(self.shifted(Ex(u, dims=ud, tok=True, direct=frozenset([u])))) \
                if set(ud) <= set(self.sdims) and ch.chance(0.5) else self.shifted(pieces[0])
            self.tags.add("prev:input")
            pieces.append(sh)
        e = pieces[0]
        for p in pieces[1:]:
            e = binop(ch.choice(["+", "-"]), e, p)
        if self.rule == "recurrence" and self.structure == "diagonal" and "gamma:lru" not in self.tags \
                and ch.chance(0.4):
            # LRU: the input normalised by sqrt(1 - |lam|^2)
            g = self.gamma()
            e = binop("*", self.value(g, "gamma") if ch.chance(0.7) else g, paren(e) if e.prec < MUL else e)
        return e

    def input_piece(self) -> Ex:
        ch = self.ch
        S = set(self.sdims)
        u, ud = self.inputs[0]
        uex = Ex(u, dims=ud, tok=True, direct=frozenset([u]))
        fits = set(ud) <= S
        opts = []
        if fits:
            opts += [(2, "plain"), (5, "coef"), (2, "selective"),
                     # (features: the conv of most specs; more often under global, to meet it)
                     (3 if self.scan_order == "global" else 1, "features")]
        opts += [(3, "mimo")]
        if self.delta_k is not None:
            opts.append((6, "delta"))
        k = ch.weighted(opts)
        self.tags.add("E:" + k)
        if k == "plain":
            return uex
        if k == "delta":
            # the delta rule's outer product v k^T (the value side without N, the key with it)
            vd = tuple(ch.subset([d for d in self.sdims if d != self.N], 0, 2))
            v = self.value(self.feature(vd), ch.choice(["v", "val"])) if vd or not fits or ch.chance(0.5) else uex
            return binop("*", v, self.delta_k) if ch.chance(0.7) else binop("*", self.delta_k, v)
        if k == "coef":
            return self.coef_times(uex)
        if k == "selective":
            # B = linear(u, N) or B = sum(W_B * u, H): a per-token coefficient
            outd = ch.subset(self.sdims, 1, 2)
            if ch.chance(0.6) or not ud:
                B = self.value(self.lin(self.input_leaf().text, outd), ch.choice(["B", "Bt", "Bsel"]))
                self.tags.add("linear")
            else:
                W = self.param(_dims_of(outd, ud), self.coef_init(_dims_of(outd, ud)), hint="W_B")
                red = tuple(d for d in ud if d not in outd) or tuple(ud[:1])
                bd = tuple(d for d in _dims_of(outd, ud) if d not in red)
                B = self.value(call("sum", binop("*", W, uex), dims=bd, extra=list(red)), ch.choice(["B", "Bs"]))
                self.tags.add("coef:sum")
            return binop("*", B, uex) if ch.chance(0.8) else binop("*", uex, B)
        if k == "features":
            # xc = silu(conv(linear(u, F), K)) (Mamba block): driven by features, no direct u
            F = ch.subset(self.sdims, 1, 2)
            inner = self.lin(u, F) if ch.chance(0.6) else uex
            kw = "".join(", " + k for k in self.sharing_kw("conv"))
            xc = self.value(call("silu", Ex(f"conv({inner.text}, {self.conv_width()}{kw})", dims=inner.dims, tok=True,
                                            learn=True)), ch.choice(["xc", "feat"]))
            self.tags |= {"conv", "E:features"}
            outd = ch.subset(self.sdims, 1, 2)
            B = self.value(self.lin(xc.text, outd), "Bx")
            return binop("*", B, xc)
        # MIMO: sum(W * u, dims of u that the state lacks (and maybe more))
        red = [d for d in ud if d not in S]
        if not red and ud:
            red = list(ch.subset(ud, 1, 1))
        keep = ch.subset(self.sdims, 1)
        wd = _dims_of(tuple(keep), tuple(red))
        cx = self.cplx and ch.chance(0.5)
        W = self.param(wd, "normal(0, 0.5)" if ch.chance(0.7) else self.coef_init(wd, cx), hint="W", cplx=cx)
        if not red:
            # a scalar input: a coefficient over state dims
            return binop("*", W, uex)
        term = call(ch.choice(["sum", "sum", "mean"]), binop("*", W, uex) if ch.chance(0.7) else binop("*", uex, W),
                    dims=tuple(d for d in _dims_of(wd, ud) if d not in red), extra=red)
        lru_like = self.rule == "recurrence" and self.structure == "diagonal"
        if ch.chance(0.6 if lru_like else 0.2):
            g = self.value(self.gamma(), "gamma")
            self.tags.add("coef:named")
            term = binop("*", g, term)
        return term

    def gamma(self) -> Ex:
        """A static positive normaliser over state dims (LRU's `sqrt(1 - abs(lam) ** 2)`
        when the state matrix is a static diagonal with |lam| < 1)."""
        A = [s for s in self.stmts if s.role == "A"][0]
        a = self.values.get(A.name)
        if a is not None and self.rule == "recurrence" and self.structure == "diagonal" and not a.tok:
            self.tags.add("gamma:lru")
            return call("sqrt", binop("-", num(1), binop("**", call("abs", a, cplx=False), num(2))))
        return self.positive(self.sdims, 1)

    def coef_times(self, uex: Ex) -> Ex:
        """`B * u` with a static coefficient: a param (HiPPO `_B` families among the
        initializers), a static named value, or an inline static expression."""
        ch = self.ch
        k = ch.integer(0, 3)
        bd = ch.subset(self.sdims, 1)
        cx = self.cplx and ch.chance(0.5)
        if k <= 1:
            B = self.param(bd, self.coef_init(bd, cx), hint=ch.choice(["B", "Bv", "b"]), cplx=cx)
        elif k == 2:
            B = self.value(self.real(self.sdims, 2), ch.choice(["B", "Bn"]))
            self.tags.add("coef:named")
        else:
            e = self.real(self.sdims, 1)
            B = paren(e) if ch.chance(0.5) else call("exp", call("tanh", e))
            self.tags.add("coef:inline")
        if ch.chance(0.2):
            self.tags.add("coef:div")
            return binop("/", binop("*", B, uex), self.divisor(self.sdims, 0))
        return binop("*", B, uex) if ch.chance(0.8) else binop("*", uex, B)

    def forcing(self) -> Ex:
        """A per-token forcing term that does not multiply the primary input:
        `linear(v, N)` of another input (or of the primary), inline or named."""
        ch = self.ch
        src = self.input_leaf()
        outd = ch.subset(self.sdims, 1, 2)
        e = Ex(f"linear({src.text}, {', '.join(outd)}{self.bias_kw()})", dims=outd, tok=True, learn=True)
        self.tags |= {"forcing", "linear"}
        if ch.chance(0.5):
            self.tags.add("forcing:inline")
            return e
        return self.value(e, ch.choice(["f", "force"]))

    # ---- scan order (section 12) -------------------------------------------
    def scan(self):
        """`scan ORDER` with its keyword arguments in a random order; cross2d gets rows
        and cols dims (rows * cols <= 12, the length)."""
        ch = self.ch
        o = self.scan_order
        kw = []
        if o in ("bidirectional", "cross2d"):
            m = ch.choice([None, "add", "mean", "concat"])
            p = ch.choice([None, "shared", "separate"])
            if m:
                kw.append(f"merge = {m}")
            if p:
                kw.append(f"params = {p}")
            self.tags.add(f"merge:{m or 'default'}")
            self.tags.add(f"params:{p or 'default'}")
            self.tags.add(f"scan:{o}")
        self.length = 0
        if o == "cross2d":
            r, c = ch.choice([(2, 3), (3, 2), (2, 2), (1, 3), (3, 4), (2, 1), (4, 3), (2, 5)])
            rd = self.new_dim(r, ch.choice(["R", "Rw", "Hr"]), derived=0.0)
            cd = self.new_dim(c, ch.choice(["Cc", "Wc", "Cl"]), derived=0.0)
            self.reserved_dims |= {rd, cd}
            kw = [f"rows = {rd}", f"cols = {cd}"] + kw
            self.length = r * c
        kw = ch.shuffled(kw)
        text = f"scan {o}" + (f"({', '.join(kw)})" if kw else ("" if o in ("causal", "reverse", "global") else "()"))
        self.stmts.append(Stmt("scan", text))

    # ---- the output (section 13) -------------------------------------------
    def output(self):
        """`output y = readout (+ skip) (* gate)`, maybe through `linear`; the readout
        reads the state (re / im / abs / 2 * re for complex states, or stays complex);
        never a square matrix."""
        ch = self.ch
        xs = Ex(self.state, dims=self.sdims, cplx=self.cplx, tok=True, state=True)
        if not self.delta and self.scan_order != "global" and ch.chance(0.15):
            # the state before the current token's update (decision 17; a global scan's
            # outputs all read the state after the whole sequence: no prev(x) there)
            xs0 = xs
            xs = Ex(f"prev({self.state})", dims=self.sdims, cplx=self.cplx, tok=True, state=True)
            self.tags.add("prev:state")
            if ch.chance(0.4):
                # the states before and after the update side by side
                xs = paren(binop(ch.choice(["+", "-"]), xs0, binop("*", num(0.5), xs)))
        if self.delta and ch.chance(0.8):
            # the delta rule's readout S q: sum(q * x, N) with a per-token q
            red = (self.N,)
            k = 1
            cd = tuple(ch.subset([d for d in self.sdims if d != self.N], 0, 1)) + (self.N,)
        else:
            red = ch.subset(self.sdims, 0)
            k = ch.integer(0, 3)
            cd = ch.subset(self.sdims, 0)
        if k == 0:
            cx = self.cplx and ch.chance(0.7)
            C = self.param(cd, self.coef_init(cd, cx), hint=ch.choice(["C", "Cq"]), cplx=cx)
        elif k == 1 and cd:
            C = self.value(self.lin(self.input_leaf().text, cd), ch.choice(["C", "Ct"]))
            self.tags.add("C:token")
        elif k == 2:
            C = self.value(self.real(self.sdims, 2, tok=ch.chance(0.3)), "Cn")
        else:
            C = None
        prod = binop("*", C, xs) if C is not None else xs
        if red:
            r = call(ch.choice(["sum", "sum", "mean"]), prod, dims=tuple(d for d in prod.dims if d not in red),
                     extra=list(red))
        else:
            r = prod
        if r.cplx:
            f = ch.choice(["re", "2re", "im", "abs", "none"])
            self.tags.add("out:" + f)
            if f == "2re":
                r = binop("*", num(2), call("re", r, cplx=False))
            elif f != "none":
                r = call(f, r, cplx=False)
            else:
                self.tags.add("output:complex")
        if not r.cplx and ch.chance(0.12):
            # a readout that is not linear in the state (a norm or a product across its
            # dims, or a nonlinear map of linear(x)): the linearity analysis must not
            # cancel it into something linear, and an LTI system must then scan
            form = ch.choice(["rms", "quad"] + ([] if self.cplx or self.delta else ["linx"]))
            self.tags.add("out:nonlinear:" + form)
            rd = tuple(r.dims)
            if form == "linx":
                G = self.extra_dim(1, 3, hint="G")
                r = call("silu", Ex(f"linear({xs.text}, {G})", dims=(G,), tok=True, state=True, learn=True))
            elif form == "quad":
                r = binop("*", r, call("mean", r, dims=(), extra=list(rd)) if rd else r)
            else:
                sq = binop("*", r, r)
                den = call("sqrt", binop("+", num(1), call("mean", sq, dims=(), extra=list(rd)) if rd else sq))
                r = binop("/", paren(r), den)
        if ch.chance(0.2) and not r.cplx:
            r = call(ch.choice(["tanh", "silu"]), r)
        if ch.chance(0.25):
            r = self.value(r, ch.choice(["h", "read", "yc"]))
            self.tags.add("value:state")
        out = r
        u, ud = self.inputs[0]
        if ch.chance(0.5):
            dd = ch.subset(ud, 0)
            # zeros only here: a skip weight feeds no kink (relu, abs) that gradcheck would straddle
            D = self.param(dd, "zeros" if ch.chance(0.1) else self.coef_init(dd), hint=ch.choice(["D", "Dskip", "Dk"]))
            out = binop("+", out, binop("*", D, Ex(u, dims=ud, tok=True)))
            self.tags.add("skip")
        if ch.chance(0.3):
            gd = ch.subset(tuple(out.dims), 0, 2) or ()
            if len(self.inputs) > 1 and ch.chance(0.5):
                z = Ex(self.inputs[1][0], dims=self.inputs[1][1], tok=True)
            else:
                z = self.value(self.lin(u, gd), "z") if gd else Ex(u, dims=ud, tok=True)
            out = binop("*", paren(out) if out.prec < MUL else out, call("silu", z))
            self.tags.add("gate")
        if ch.chance(0.2):
            extra = self.real(tuple(out.dims) or self._small_dims(), 2, tok=True, st_=True, learn=True)
            out = binop("+", out, extra)
            self.tags.add("out:extra")
        if ch.chance(0.15):
            G = self.extra_dim(1, 3, hint="G")
            if out.cplx:
                # a real weight applied to a complex readout: the output stays complex
                self.tags.add("linear:complex")
            out = Ex(f"linear({out.text}, {G}{self.bias_kw()})", dims=(G,), tok=True, state=True, learn=True)
            self.tags.add("linear:out")
        self.note(out)
        y = self.fresh(ch.choice(["y", "out", "yo"]))
        self.stmts.append(Stmt("output", f"output {y} = {out.text}", y))

    # ---- several states (issue 9; language page, "Several states") ----------
    def extra_states(self):
        """One or two more (real) states over some of the first state's dims, each with
        its own `recurrence` (a decay in (0, 1): static, per-token or a number) or
        `dynamics` (a stable diagonal A, discretized by a rule of its own:
        `discretize RULE, step = S, state = NAME`), its input term a linear map of an
        input, maybe times a bounded function of an earlier state (a DAG: it reads that
        state after its update). The output reads every new state (added, or as a gate)."""
        ch = self.ch
        k = ch.weighted([(3, 1), (1, 2)])
        self.tags.add(f"states:{k + 1}")
        out = [s for s in self.stmts if s.kind == "output"][0]
        earlier = [(self.state, self.sdims, self.cplx)]
        for _ in range(k):
            dims = tuple(ch.subset(self.sdims, 1, 2))
            name = self.fresh(ch.choice(["z", "s2", "m", "kv"]))
            first = [s for s in self.stmts if s.kind == "state"][0]
            if ch.chance(0.3):
                # one statement for several states: `state x[...] complex, z[...]`
                first.text += f", {name}[{', '.join(dims)}]"
                self.tags.add("states:one_statement")
            else:
                self.stmts.append(Stmt("state", f"state {name}[{', '.join(dims)}]", name))
            kind = ch.choice(["recurrence", "recurrence", "dynamics"])
            self.tags.add(f"states:{kind}")
            if kind == "recurrence":
                form = ch.choice(["static", "token", "const"])
                if form == "static":
                    p = self.param(dims, ch.choice(["log(uniform(0.5, 0.95))", "log(0.8)"]), hint="a_log")
                    a = self.value(call("exp", p, dims=dims), "a2", structure="diagonal")
                elif form == "token":
                    arg = self.input_leaf()
                    a = self.value(call("sigmoid", Ex(f"linear({arg.text}, {', '.join(dims)})", dims=dims, tok=True,
                                                      learn=True)), "a2", structure="diagonal")
                    self.tags.add("linear")
                else:
                    a = self.value(num(0, ch.choice(["0.9", "0.5", "1"])), "g2", structure="scalar")
            else:
                p = self.param(dims, ch.choice(["log(uniform(0.5, 2))", "log(1 + arange(%s))" % dims[-1]]),
                               hint="A2_log")
                a = self.value(neg(call("exp", p, dims=dims)), "A2", structure="diagonal")
            arg = self.input_leaf()
            if ch.chance(0.25):
                # a shifted input in another state's term (prev of an input: allowed with several states)
                arg = self.shifted(arg)
                self.tags.add("states:prev")
            term = f"linear({arg.text}, {', '.join(dims)})"
            if ch.chance(0.4):
                # a DAG: the input term reads an earlier state, after its update
                prev, pdims, pcplx = ch.choice(earlier)
                r = f"mean({prev}, {', '.join(pdims)})"
                term = f"tanh({'re(' + r + ')' if pcplx else r}) * {term}"
                self.tags.add("states:dag")
            if kind == "recurrence":
                self.stmts.append(Stmt("recurrence", f"recurrence {name} = {a.text} {name} + {term}"))
            else:
                self.stmts.append(Stmt("dynamics", f"dynamics {name}' = {a.text} {name} + {term}"))
                rule = ch.choice(["zoh", "bilinear", "euler", "backward_euler", "zoh_euler"])
                self.stmts.append(Stmt("discretize", f"discretize {rule}, step = {ch.choice(['0.1', '0.2'])}, "
                                                     f"state = {name}"))
                self.tags.add(f"states:{rule}")
            head, expr = out.text.split(" = ", 1)
            read = f"mean({name}, {', '.join(dims)})"
            if ch.chance(0.5):
                out.text = f"{head} = {expr} + 0.5 * {read}"
            else:
                out.text = f"{head} = ({expr}) * sigmoid({read})"
                self.tags.add("states:gate")
            earlier.append((name, dims, False))

    def ensure_inputs_used(self):
        """Every input appears somewhere (an unused input is not what a spec means)."""
        body = "\n".join(s.text for s in self.stmts if s.kind != "input")
        for n, _d in self.inputs:
            if not re.search(rf"\b{re.escape(n)}\b", body):
                out = [s for s in self.stmts if s.kind == "output"][0]
                ud = dict(self.inputs)[n]
                if ud:
                    out.text += f" + 0.1 * sum({n}, {', '.join(ud)})"
                else:
                    out.text += f" + 0.1 * {n}"
                self.tags.add("input:in_output")


_INIT_WORDS = ("zeros", "ones", "normal", "uniform", "log_uniform", "lru_ring", "hippo_legs", "hippo_legs_B",
               "hippo_legt", "hippo_legt_B", "hippo_lagt", "hippo_lagt_B", "hippo_fout", "hippo_fout_B",
               "s4d_lin", "s4d_inv", "s4d_real", "hippo_legs_diag")


# ============================================================================
# rendering
# ============================================================================

_BIN_OP = re.compile(r"(?<= )(\*\*|[-+*/])(?= )")
_CONT_COMMENTS = ("# continued", "# the rest below", "# (a, b)", "# + more")


def _depths(text: str) -> list:
    """The bracket depth before each character of a statement's text."""
    out, d = [], 0
    for c in text:
        out.append(d)
        d += (c in "([") - (c in ")]")
    return out


def _continue(s: str, ch: _Chooser, ind: str, tags: set, n: int = 1) -> str:
    """A statement broken across lines (Decision (1)) at up to n places, each in one of
    the four ways: inside a bracket, after a binary operator / ',' / '=', before a
    binary operator, or after a trailing backslash. Only at a blank between tokens of
    the statement as generated, so no token is split."""
    depth = _depths(s)
    blanks = [i for i, c in enumerate(s) if c == " " and 0 < i < len(s) - 1]
    inside = [i for i in blanks if depth[i] > 0]
    ops = [m for m in _BIN_OP.finditer(s) if depth[m.start()] == 0]
    after = [m.end() for m in ops] + [i + 1 for i, c in enumerate(s[:-1]) if c in ",=" and depth[i] == 0
                                       and s[i + 1] == " "]
    before = [m.start() - 1 for m in ops]
    kinds = [(k, c) for k, c in (("paren", inside), ("op_end", after), ("op_start", before), ("backslash", blanks))
             if c]
    breaks = {}
    for _ in range(n):
        if kinds:
            kind, cands = ch.choice(kinds)
            breaks.setdefault(ch.choice(cands), kind)
    # applied from the right, so that the positions to the left stay where they were
    for i in sorted(breaks, reverse=True):
        kind = breaks[i]
        more = ind + ch.choice(["    ", "  ", "\t", "          "])
        note = ("  " + ch.choice(_CONT_COMMENTS)) if ch.chance(0.3) else ""
        if kind != "backslash" and ch.chance(0.1):
            # a blank or comment line between the parts (after a backslash it would end the statement)
            note += "\n" + ch.choice(["", ind + "# between the parts"])
        tags.add("text:continued")
        tags.add("text:cont:" + kind)
        if kind == "backslash":
            s = s[:i] + " \\" + note + "\n" + more + s[i + 1:]
        else:
            s = s[:i].rstrip(" ") + note + "\n" + more + s[i:].lstrip(" ")
    return s


def _render(b: _Built, ch: _Chooser, stmts: list | None = None) -> str:
    """The block's text: one statement per line (sometimes two joined by `;`, comments,
    blank lines), statements in a random order except that the inputs keep their
    order (the first declared is the primary one) and the dims come in one statement."""
    stmts = list(b.stmts if stmts is None else stmts)
    order = ch.shuffled(range(len(stmts)))
    shuffled = [stmts[i] for i in order]
    # the inputs keep their relative order, and so do the dims statements
    for kind in ("input", "dims"):
        same = iter([s for s in stmts if s.kind == kind])
        shuffled = [next(same) if s.kind == kind else s for s in shuffled]
    lines = []
    i = 0
    ind = ch.choice(["  ", "    ", "\t", " "])
    def text_of(stmt) -> str:
        if ch.chance(0.07):
            return _continue(stmt.text, ch, ind, b.tags, ch.integer(1, 3))
        return stmt.text

    while i < len(shuffled):
        s = text_of(shuffled[i])
        if i + 1 < len(shuffled) and ch.chance(0.1):
            s = f"{s}; {text_of(shuffled[i + 1])}"
            i += 1
        if ch.chance(0.05):
            # a statement may end with `;` before the line break
            s += ";"
        if ch.chance(0.08):
            s += "   # " + ch.choice(["a comment", "x' = A x + B u", "(see the paper)", "} not the end",
                                    'a "quoted" word; and more'])
        lines.append(ind + s)
        if ch.chance(0.05):
            lines.append("")
        i += 1
    descr = b.descr
    if descr and ch.chance(0.1):
        descr += r' (with \"escaped\" quotes)'
        b.tags.add("text:escape")
    head = f"ssm {b.block}" + (f' "{descr}"' if descr else "") + " {"
    pre = "# generated by ssmc.testing.specgen\n" if ch.chance(0.2) else ""
    nl = "\n"
    if ch.chance(0.05):
        # Windows line ends: statements still end at each line (errors.LINE_BREAK)
        nl = "\r\n"
        b.tags.add("text:crlf")
    # (continued statements hold line breaks of their own: they end the same way)
    return (pre + head + "\n" + "\n".join(lines) + "\n" + "}" + "\n").replace("\n", nl)


def _dims_stmts(defs, ch: _Chooser) -> list:
    """One `dims` statement, or two (a dim's expression uses dims defined before it:
    the renderer keeps the dims statements in order)."""
    cut = ch.integer(1, len(defs) - 1) if len(defs) > 1 and ch.chance(0.15) else len(defs)
    parts = [defs[:cut], defs[cut:]]
    return [Stmt("dims", "dims " + ", ".join(f"{n} = {t}" for n, t in part)) for part in parts if part]


def _build(ch: _Chooser) -> tuple[_Built, _Gen]:
    g = _Gen(ch)
    b = g.build()
    ds = _dims_stmts(g.dim_defs, ch)
    if len(ds) > 1:
        b.tags.add("dims:split")
    b.stmts[:0] = ds
    return b, g


def _make(ch: _Chooser) -> GenSpec:
    b, _ = _build(ch)
    text = _render(b, ch)
    return GenSpec(text, dict(b.sizes), b.length, frozenset(b.tags), dict(b.dims))


# ============================================================================
# public API
# ============================================================================

@st.composite
def _specs(draw):
    return _make(_DrawChooser(draw))


def specs() -> st.SearchStrategy:
    """Valid specs (see the module docstring)."""
    return _specs()


def example_specs(n: int, seed: int = 0) -> list:
    """n specs drawn deterministically: spec i from `random.Random(seed + i)`, so that
    `example_specs(1, s)` is the spec of seed s (what the fuzz command and KNOWN lists use)."""
    out = []
    for i in range(n):
        out.append(_make(_RandomChooser(random.Random(seed + i))))
    return out


# ---- mutations --------------------------------------------------------------

_MUTATIONS = ("delete", "misspell", "unknown_function", "reduce_dim", "broadcast", "complex_step",
              "state_in_A", "syntax", "unbalanced", "reserved", "duplicate", "cycle", "not_linear",
              "no_read", "structure", "unknown_word", "init_outside", "complex_init", "unknown_dim",
              "both_systems", "bad_blocks", "empty_state", "unclosed", "inline_transition",
              "dim_fraction", "step_along_N", "square_output", "complex_activation", "conv_static",
              "prev_static", "prev_state_in_E", "prev_state_k", "prev_of_readout",
              "linear_nodims", "init_dims", "init_param", "lru_real", "bad_kwarg", "output_name_used",
              "real_state", "odd_character", "unterminated_string", "unclosed_bracket", "trailing_operator",
              "complex_input")


def _mutate(b: _Built, g: _Gen, ch: _Chooser) -> tuple[str, str]:
    """One mutation of a valid spec into a (probably) invalid one: (text, what)."""
    stmts = [Stmt(s.kind, s.text, s.name, s.role) for s in b.stmts]
    kind = ch.choice(_MUTATIONS)
    names = [s.name for s in stmts if s.name]
    what = kind

    def find(kind_):
        return [s for s in stmts if s.kind == kind_]

    def replace_use(name, new):
        """Replace one use (not the definition) of `name` by `new`."""
        cands = []
        for s in stmts:
            for m in re.finditer(rf"\b{re.escape(name)}\b", s.text):
                if s.name == name and m.start() < s.text.find("=") + 1 and s.kind in ("value", "param", "output"):
                    continue
                if s.kind in ("input", "state", "param") and s.name == name:
                    continue
                cands.append((s, m))
        if not cands:
            return False
        s, m = ch.choice(cands)
        s.text = s.text[:m.start()] + new + s.text[m.end():]
        return True

    if kind == "delete":
        k = ch.choice(["output", "scan", "state", "discretize", "dynamics", "recurrence", "input", "dims"])
        victims = find(k)
        if victims:
            stmts.remove(victims[0])
            what = f"delete the {k} statement"
        else:
            stmts.remove(find("output")[0])
            what = "delete the output statement"
    elif kind == "misspell":
        n = ch.choice(names)
        bad = n + ch.choice(["x", "q", "_"]) if ch.chance(0.5) else (n[:-1] if len(n) > 1 else n + "9")
        if bad in names or not replace_use(n, bad):
            stmts[-1].text += " + undefined_name9"
        what = f"misspell {n} as {bad}"
    elif kind == "unknown_function":
        s = ch.choice([s for s in stmts if "(" in s.text and s.kind in ("value", "output", "param")] or stmts)
        m = re.search(r"\b([a-z_0-9]+)\(", s.text)
        if m:
            s.text = s.text[:m.start(1)] + m.group(1) + "z" + s.text[m.end(1):]
        else:
            s.text += " + tanhh(1)"
        what = "unknown function"
    elif kind == "reduce_dim":
        out = find("output")[0]
        other = [d for d in b.dims if d not in b.sdims]
        d = ch.choice(other) if other else "Nope"
        out.text = out.text.replace(" = ", f" = sum({b.state}, {d}) * 0 + ", 1)
        what = f"sum over {d}, a dim the state lacks"
    elif kind == "broadcast":
        dyn = (find("dynamics") + find("recurrence"))[0]
        other = [d for d in b.dims if d not in b.sdims]
        if other:
            d = ch.choice(other)
            pn = g.fresh("bad")
            stmts.append(Stmt("param", f"param {pn}[{d}] = ones", pn))
            dyn.text += f" + {pn} * {b.inputs[0][0]}"
            what = f"input term over {d}, not a state dim"
        else:
            pn = g.fresh("Mbad")
            stmts.append(Stmt("param", f"param {pn}[{b.sdims[-1]}, {b.sdims[-1]}] = ones", pn))
            stmts.append(Stmt("param", f"param vbad[{b.sdims[-1]}] = ones", "vbad"))
            stmts.append(Stmt("value", f"mv = {pn} * vbad", "mv"))
            out = find("output")[0]
            out.text += " + sum(mv, " + b.sdims[-1] + ")"
            what = "a matrix times a vector over N"
    elif kind == "complex_step":
        d = find("discretize")
        if d:
            d[0].text = d[0].text.replace("step = ", "step = 1j * ", 1)
            what = "complex step"
        else:
            stmts.append(Stmt("discretize", "discretize zoh, step = 1j"))
            what = "discretize with a recurrence"
    elif kind == "state_in_A":
        a = [s for s in stmts if s.role == "A"][0]
        lhs, rhs = a.text.split(" = ", 1)
        expr, structure = rhs.rsplit(" : ", 1)
        a.text = f"{lhs} = ({expr}) * (1 + 0 * re({b.state})) : {structure}"
        what = "state matrix reads the state"
    elif kind == "syntax":
        s = ch.choice(stmts)
        pos = ch.integer(0, len(s.text))
        s.text = s.text[:pos] + ch.choice([" * * ", " @ ", " = = ", " $ ", " / / ", ",,", " ? "]) + s.text[pos:]
        what = "syntax error"
    elif kind == "unbalanced":
        s = ch.choice([s for s in stmts if ")" in s.text] or stmts)
        if ")" in s.text and ch.chance(0.5):
            i = s.text.rfind(")")
            s.text = s.text[:i] + s.text[i + 1:]
        else:
            s.text = s.text.replace("(", "((", 1) if "(" in s.text else s.text + " )"
        what = "unbalanced parenthesis"
    elif kind == "reserved":
        n = ch.choice(names)
        bad = ch.choice(["lambda", "exp", "self", "input", "_x", "pi", "sum", "torch", "None", "state"])
        for s in stmts:
            s.text = re.sub(rf"\b{re.escape(n)}\b", bad, s.text)
        what = f"rename {n} to the reserved word {bad}"
    elif kind == "duplicate":
        s = ch.choice([s for s in stmts if s.kind in ("param", "value", "state")])
        stmts.append(Stmt(s.kind, s.text, s.name, ""))
        what = f"define {s.name} twice"
    elif kind == "cycle":
        vals = [s for s in stmts if s.kind == "value"]
        s = ch.choice(vals)
        lhs, rhs = s.text.split(" = ", 1)
        if " : " in rhs:
            expr, structure = rhs.rsplit(" : ", 1)
            s.text = f"{lhs} = {expr} + 0 * {lhs} : {structure}"
        else:
            s.text = f"{lhs} = {rhs} + 0 * {lhs}"
        what = f"{lhs} defined through itself"
    elif kind == "not_linear":
        dyn = (find("dynamics") + find("recurrence"))[0]
        u = b.inputs[0][0]
        dyn.text += ch.choice([f" + exp({u}) * 0.1", f" + {u} * {u}", " + 1"])
        what = "input term not linear in the input"
    elif kind == "no_read":
        out = find("output")[0]
        u = b.inputs[0][0]
        out.text = f"output {out.name} = 2 * {u}"
        what = "output does not read the state"
    elif kind == "structure":
        a = [s for s in stmts if s.role == "A"][0]
        lhs, rhs = a.text.split(" = ", 1)
        expr, structure = rhs.rsplit(" : ", 1)
        new = {"diagonal": "dense", "scalar": "dense", "dense": "diagonal", "dplr": "dense"}.get(
            structure.split("(")[0], "scalar")
        if structure.startswith("diagonal") and ch.chance(0.5):
            new = "scalar" if len(b.sdims) > 1 else "dense"
        a.text = f"{lhs} = {expr} : {new}"
        what = f"structure {structure} changed to {new}"
    elif kind == "unknown_word":
        w = ch.choice(["scan", "discretize", "structure"])
        if w == "scan":
            s = find("scan")[0]
            s.text = "scan " + ch.choice(["causall", "forward", "bidirectional(merge = max)", "cross2d(merge = add)"])
        elif w == "discretize" and find("discretize"):
            s = find("discretize")[0]
            s.text = s.text.replace("discretize ", "discretize " + ch.choice(["zohh", "rk4", "exact"]) + "_", 1)
        else:
            a = [s for s in stmts if s.role == "A"][0]
            a.text = a.text.rsplit(" : ", 1)[0] + " : " + ch.choice(["diag", "toeplitz", "block_diagonal"])
        what = f"unknown {w} word"
    elif kind == "init_outside":
        out = find("output")[0]
        out.text += ch.choice([" + normal(0, 1)", " + zeros", f" + hippo_legs_B({b.sdims[-1]})"])
        what = "initializer word outside an initializer"
    elif kind == "complex_init":
        real = [s for s in stmts if s.kind == "param" and "complex" not in s.text.split("=")[0]]
        if real:
            s = ch.choice(real)
            s.text = s.text.split(" = ", 1)[0] + " = " + ch.choice(["1j", "normal(0, 1) + 1j", "lru_ring(0.5, 0.9)"])
            what = f"complex initializer on the real param {s.name}"
        else:
            stmts.append(Stmt("param", "param qq9[] = 1j", "qq9"))
            what = "complex initializer on a real param"
    elif kind == "unknown_dim":
        s = ch.choice([s for s in stmts if s.kind in ("param", "input", "state")])
        s.text = re.sub(r"\[", "[Nope9, ", s.text, count=1) if "[]" not in s.text else s.text.replace("[]", "[Nope9]")
        what = "unknown dim in brackets"
    elif kind == "both_systems":
        dyn = find("dynamics")
        if dyn:
            stmts.append(Stmt("recurrence", dyn[0].text.replace("dynamics", "recurrence").replace("' =", " =")))
            what = "both dynamics and recurrence"
        else:
            rec = find("recurrence")[0]
            stmts.append(Stmt("dynamics", rec.text.replace("recurrence", "dynamics").replace(" =", "' =", 1)))
            what = "both recurrence and dynamics (no discretize)"
    elif kind == "bad_blocks":
        a = [s for s in stmts if s.role == "A"][0]
        lhs, rhs = a.text.split(" = ", 1)
        expr, structure = rhs.rsplit(" : ", 1)
        # a block count that divides N neither at the sizes nor at the spec's defaults
        n, nd = b.dims[b.sdims[-1]], g.defaults[b.sdims[-1]]
        bad = next(k for k in (3, 5, 7, 11, 13) if n % k and nd % k)
        a.text = f"{lhs} = {expr} : block_diagonal(blocks = {bad})"
        what = f"block_diagonal(blocks = {bad}) on N = {n}"
    elif kind == "empty_state":
        s = find("state")[0]
        s.text = re.sub(r"\[.*\]", "[]", s.text)
        what = "a state without dims"
    elif kind == "unclosed":
        text = _render(b, ch, stmts)
        return text.rstrip().rstrip("}"), "no closing brace"
    elif kind == "inline_transition":
        dyn = (find("dynamics") + find("recurrence"))[0]
        a = [s for s in stmts if s.role == "A"][0]
        dyn.text = dyn.text.replace(f" {a.name} {b.state}", f" (-{a.name}) {b.state}", 1)
        what = "an inline transition term"
    elif kind == "dim_fraction":
        d = find("dims")[-1]
        first = b.sdims[0]
        d.text += f", Frac9 = {first} / {g.defaults[first] * 2 + 1}"
        what = "a dim that is not an integer"
    elif kind == "step_along_N":
        N = b.sdims[-1]
        d = find("discretize")
        pn = g.fresh("pN")
        stmts.append(Stmt("param", f"param {pn}[{N}] = uniform(0.1, 0.2)", pn))
        if d and b.structure in ("dense", "dplr", "block_diagonal"):
            d[0].text = d[0].text.split("step = ")[0] + f"step = {pn}"
            what = "a step along the state matrix's dim N"
        else:
            out = find("output")[0]
            out.text += f" + {pn} * {pn}(1)"
            what = "a param called like a function"
    elif kind == "square_output":
        mats = [n for n, (dims, _c) in b.params.items() if len(dims) >= 2 and dims[-1] == dims[-2]]
        out = find("output")[0]
        if mats:
            out.text = f"output {out.name} = {ch.choice(mats)}"
            what = "a square matrix as the output (and no state read)"
        else:
            out.text = f"output {out.name} = sum({b.state}, {b.sdims[0]}, {b.sdims[0]})"
            what = "a reduction naming a dim twice"
    elif kind == "complex_activation":
        out = find("output")[0]
        out.text += f" + 0 * {ch.choice(['tanh', 'sigmoid', 'relu', 'softplus', 'silu'])}(1j * {b.inputs[0][0]})"
        what = "an activation of a complex value"
    elif kind == "conv_static":
        real = [n for n, (dims, c) in b.params.items() if not c]
        vn = g.fresh("cz")
        src = ch.choice(real) if real else "pi"
        stmts.append(Stmt("value", f"{vn} = conv({src}, 3)", vn))
        out = find("output")[0]
        out.text += f" + 0 * {vn}"
        what = "conv of a static value"
    elif kind == "prev_static":
        real = [n for n, (dims, c) in b.params.items() if not c]
        out = find("output")[0]
        out.text += f" + 0 * prev({ch.choice(real) if real else 'pi'})"
        what = "prev of a static value"
    elif kind == "prev_state_in_E":
        tr = [s for s in stmts if s.kind in ("dynamics", "recurrence") or s.text.lstrip().startswith(
            ("dynamics", "recurrence"))]
        if tr:
            tr[0].text += f" + 0 * prev({b.state})"
        what = "prev of the state in the input term"
    elif kind == "prev_state_k":
        # decision 17: the state is kept one token back only
        out = find("output")[0]
        out.text += f" + 0 * sum(prev({b.state}, 2))"
        what = "prev of the state two tokens back"
    elif kind == "prev_of_readout":
        # decision 17: prev of a value that reads the state (write prev(x) inside instead)
        out = find("output")[0]
        out.text += f" + 0 * sum(prev(abs({b.state})))"
        what = "prev of a value that reads the state"
    elif kind == "linear_nodims":
        cands = [s for s in stmts if "linear(" in s.text]
        if cands:
            s = ch.choice(cands)
            s.text = re.sub(r"linear\((\w+)[^()]*\)", r"linear(\1)", s.text, count=1)
            what = "linear without output dims"
        else:
            out = find("output")[0]
            out.text += f" + linear({b.inputs[0][0]}, {b.sdims[0]}, bias = maybe)"
            what = "linear with bias = maybe"
    elif kind == "init_dims":
        ps = [(n, dims) for n, (dims, c) in b.params.items() if set(b.dims) - set(dims)]
        if ps:
            n, dims = ch.choice(ps)
            d = ch.choice(sorted(set(b.dims) - set(dims)))
            s = [s for s in stmts if s.name == n][0]
            s.text = s.text.split(" = ", 1)[0] + f" = arange({d})"
            what = f"initializer over {d}, a dim {n} lacks"
        else:
            stmts.append(Stmt("param", "param pz9[] = arange(Nope9)", "pz9"))
            what = "arange of an unknown dim"
    elif kind == "init_param":
        ps = sorted(b.params)
        if len(ps) >= 2:
            p1, p2 = ps[0], ps[1]
            s = [s for s in stmts if s.name == p1][0]
            s.text = s.text.split(" = ", 1)[0] + f" = {p2} + 1"
            what = f"initializer of {p1} reads the param {p2}"
        else:
            stmts.append(Stmt("param", f"param pz9[] = {b.inputs[0][0]}", "pz9"))
            what = "initializer reads an input"
    elif kind == "lru_real":
        stmts.append(Stmt("param", f"param lz9[{b.sdims[-1]}] = lru_ring(0.5, 0.9)", "lz9"))
        out = find("output")[0]
        out.text += " + 0 * sum(lz9, " + b.sdims[-1] + ")"
        what = "lru_ring on a real param"
    elif kind == "bad_kwarg":
        w = ch.choice(["scan", "discretize", "linear"])
        if w == "scan":
            sc = find("scan")[0]
            sc.text = ch.choice(["scan bidirectional(merge = add, flavour = 2)", "scan causal(merge = add)",
                                 "scan cross2d(rows = 3, cols = 4)", "scan bidirectional(params = some)",
                                 "scan global(merge = add)"])
        elif w == "discretize" and find("discretize"):
            d = find("discretize")[0]
            d.text = d.text.replace("step = ", "dt = ", 1)
        elif ch.chance(0.5):
            out = find("output")[0]
            out.text += f" + linear({b.inputs[0][0]}, {b.sdims[0]}, scale = 2)"
        elif ch.chance(0.5):
            out = find("output")[0]
            out.text += f" + linear({b.inputs[0][0]}, {b.sdims[0]}, params = " + ch.choice(["both", "true", "2"]) + ")"
            w = "linear params ="
        else:
            ps = [s for s in stmts if s.kind == "param"]
            if ps:
                s = ch.choice(ps)
                head, init = s.text.split(" = ", 1)
                s.text = f"{head} " + ch.choice(["sharedd", "shared shared", "shared separate", "tied"]) + f" = {init}"
                w = "param flag"
            else:
                out = find("output")[0]
                out.text += f" + linear({b.inputs[0][0]}, {b.sdims[0]}, scale = 2)"
        what = f"a bad keyword argument ({w})"
    elif kind == "output_name_used":
        out = find("output")[0]
        vn = g.fresh("yy")
        stmts.append(Stmt("value", f"{vn} = 2 * {out.name}", vn))
        out.text += f" + 0 * {vn}"
        what = "the output's name used in an expression"
    elif kind == "real_state":
        s = find("state")[0]
        if " complex" in s.text:
            s.text = s.text.replace(" complex", "")
            what = "a real state for a complex system"
        else:
            a = [s for s in stmts if s.role == "A"][0]
            lhs, rhs = a.text.split(" = ", 1)
            expr, structure = rhs.rsplit(" : ", 1)
            a.text = f"{lhs} = ({expr}) * exp(0.5j) : {structure}"
            what = "a complex state matrix on a real state"
    elif kind == "odd_character":
        s = ch.choice(stmts)
        pos = ch.integer(0, len(s.text))
        s.text = s.text[:pos] + ch.choice(["\u03bb", "\x1b[31m", "\u202e", "`", "\x00", "\u00e9"]) + s.text[pos:]
        what = "an odd character"
    elif kind == "unclosed_bracket":
        s = ch.choice([s for s in stmts if ")" in s.text or "]" in s.text])
        i = max(s.text.rfind(")"), s.text.rfind("]"))
        s.text = s.text[:i] + s.text[i + 1:]
        what = "a bracket never closed (the statement runs on into the next lines)"
    elif kind == "complex_input":
        # a complex input where only real values go: a real state's input term, or an activation
        d = b.sdims[-1]
        stmts.append(Stmt("input", f"input cz9[{d}] complex", "cz9"))
        if not b.cplx:
            dyn = (find("dynamics") + find("recurrence"))[0]
            dyn.text += " + 0.1 * cz9"
            what = "a complex input in a real state's input term"
        else:
            out = find("output")[0]
            out.text += f" + 0 * sum({ch.choice(['softplus', 'gelu', 'sigmoid'])}(cz9), {d})"
            what = "an activation of a complex input"
    elif kind == "trailing_operator":
        s = ch.choice(stmts)
        s.text += ch.choice([" +", " *", ",", " =", " -", " **"])
        what = "a line ending with an operator (the statement goes on into the next one)"
    else:  # unterminated_string
        text = _render(b, ch, stmts)
        head, rest = text.split("{", 1)
        return re.sub(r'"[^"]*"', '"no end', head, count=1) + ("" if '"' in head else '"no end ') + "{" + rest, \
            "an unterminated description string"
    return _render(b, ch, stmts), what


def _make_invalid(ch: _Chooser) -> tuple[str, str]:
    b, g = _build(ch)
    return _mutate(b, g, ch)


@st.composite
def _invalid(draw):
    return _make_invalid(_DrawChooser(draw))


def invalid_specs() -> st.SearchStrategy:
    """(text, what was mutated): valid specs mutated into (probably) invalid ones."""
    return _invalid()


def invalid_specs_from_seed(seed: int, n: int = 2) -> list:
    """n mutants of the spec family of `seed`, deterministically."""
    rng = random.Random(f"invalid:{seed}")
    return [_make_invalid(_RandomChooser(random.Random(rng.getrandbits(64)))) for _ in range(n)]
