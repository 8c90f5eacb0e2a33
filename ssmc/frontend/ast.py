"""The typed AST of a `.ssm` file: frozen dataclasses, each with its source span.

The AST only records what was written; every check happens later, in the passes.
`dump()` prints any node as a deterministic s-expression for golden tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import Span


@dataclass(frozen=True)
class Node:
    span: Span = field(compare=False, repr=False)

    def __deepcopy__(self, memo) -> "Node":
        # Frozen, with frozen children: graph metadata that holds AST nodes is deep-copied by
        # every pass, and sharing the nodes is safe (and linear, not a walk of every subtree).
        return self


# --- expressions -------------------------------------------------------------
@dataclass(frozen=True)
class Num(Node):
    value: float | int


@dataclass(frozen=True)
class Imag(Node):
    value: complex


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class Neg(Node):
    operand: "Expr"


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # one of + - * / **
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class Kwarg(Node):
    name: str
    value: "Expr"


@dataclass(frozen=True)
class Call(Node):
    fn: str
    args: tuple["Expr", ...]
    kwargs: tuple[Kwarg, ...]
    fn_span: Span = field(compare=False, repr=False, default=None)


Expr = Num | Imag | Name | Neg | BinOp | Call


# --- statements ----------------------------------------------------------------
@dataclass(frozen=True)
class DimRef(Node):
    name: str


@dataclass(frozen=True)
class DimDef(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class InputDecl(Node):
    name: str
    dims: tuple[DimRef, ...]
    # `input u[H] complex`; dump() leaves the default out (the goldens of real inputs).
    complex: bool = field(default=False, metadata={"omit_default": True})


@dataclass(frozen=True)
class StateDecl(Node):
    name: str
    dims: tuple[DimRef, ...]
    complex: bool


@dataclass(frozen=True)
class ParamDecl(Node):
    name: str
    dims: tuple[DimRef, ...]
    complex: bool
    frozen: bool
    init: Expr
    # "shared" / "separate": overrides the scan's `params =` for this param; None follows it.
    sharing: str | None = None


@dataclass(frozen=True)
class Structure(Node):
    name: str
    kwargs: tuple[Kwarg, ...]


@dataclass(frozen=True)
class Assign(Node):
    name: str
    value: Expr
    structure: Structure | None


@dataclass(frozen=True)
class Transition(Node):
    """`x' = A x + E` (continuous) or `x = Abar x + E` (discrete)."""

    kind: str  # "dynamics" | "recurrence"
    state: str
    state_span: Span = field(compare=False, repr=False)
    matrix: str
    matrix_span: Span = field(compare=False, repr=False)
    applied_to: str
    applied_span: Span = field(compare=False, repr=False)
    input_term: Expr | None


@dataclass(frozen=True)
class Discretize(Node):
    rule: str
    rule_span: Span = field(compare=False, repr=False)
    kwargs: tuple[Kwarg, ...]


@dataclass(frozen=True)
class Scan(Node):
    order: str
    order_span: Span = field(compare=False, repr=False)
    kwargs: tuple[Kwarg, ...]


@dataclass(frozen=True)
class Output(Node):
    name: str
    value: Expr


Stmt = DimDef | InputDecl | StateDecl | ParamDecl | Assign | Transition | Discretize | Scan | Output


@dataclass(frozen=True)
class Block(Node):
    name: str
    description: str | None
    dims: tuple[DimDef, ...]
    body: tuple[Stmt, ...]
    name_span: Span = field(compare=False, repr=False)


@dataclass(frozen=True)
class File(Node):
    blocks: tuple[Block, ...]


def dump(node, indent: int = 0) -> str:
    """Deterministic s-expression of an AST node (positions shown as @line:col)."""
    pad = "  " * indent
    if isinstance(node, tuple):
        return "\n".join(dump(n, indent) for n in node)
    if not isinstance(node, Node):
        return pad + repr(node)
    where = f"@{node.span.line}:{node.span.column}" if node.span else ""
    scalars, children = [], []
    for f in fields(node):
        if f.name == "span" or not f.compare:
            continue
        v = getattr(node, f.name)
        if f.metadata.get("omit_default") and v == f.default:
            continue
        if isinstance(v, Node) or (isinstance(v, tuple) and v and isinstance(v[0], Node)):
            children.append((f.name, v))
        elif isinstance(v, tuple) and not v:
            continue
        elif f.name == "sharing" and v is None:
            continue  # (fields added later show only where given: older dumps stay as they were)
        else:
            scalars.append(f"{f.name}={v!r}")
    head = f"{pad}({type(node).__name__}{where} " + " ".join(scalars)
    lines = [head.rstrip()]
    for name, v in children:
        lines.append(f"{pad}  :{name}")
        lines.append(dump(v, indent + 2))
    return "\n".join(lines) + ")"
