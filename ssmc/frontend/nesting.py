"""How deep a block's expressions nest once named values are substituted.

`a1 = a0 + 1`, `a2 = a1 + 1`, ... is one expression `((a0 + 1) + 1) + ...` to every stage
that walks values recursively (sympy in the linearity pass, explain, the backends'
printers): each value of a chain adds its own levels. The compiler gives those stages a
deep stack (compiler.run_deep) that holds MAX_NESTING levels with a wide margin, and
refuses a deeper block here, before any of them runs, pointing at the first value of the
chain that goes past the limit.

Example:  a0 = exp(log_dt); a1 = a0 + 1  ->  a0 is 2 levels deep (exp, then log_dt), a1 is 3.
"""
from __future__ import annotations

from ..errors import SpecError, Source
from . import ast

# Levels of nesting a block may reach through its named values: thousands of chained
# values compile; one parenthesised expression is limited far lower by parser.MAX_DEPTH.
MAX_NESTING = 10_000


def _walk(e: ast.Expr) -> tuple[int, list[tuple[str, int]]]:
    """(the depth of e alone, [(a name e uses, the depth at which it is used)])."""
    deepest, names = 0, []
    stack = [(e, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, ast.Name):
            names.append((node.id, depth))
        elif isinstance(node, ast.Neg):
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.BinOp):
            stack.append((node.left, depth + 1))
            stack.append((node.right, depth + 1))
        elif isinstance(node, ast.Call):
            stack.extend((a, depth + 1) for a in node.args)
            stack.extend((k.value, depth + 1) for k in node.kwargs)
    return deepest, names


def _uses(block: ast.Block):
    """(name or None, span, expression) of every expression that may use named values."""
    for s in block.body:
        if isinstance(s, ast.Assign):
            yield s.name, s.span, s.value
        elif isinstance(s, ast.Output):
            yield None, s.value.span, s.value
        elif isinstance(s, ast.Transition) and s.input_term is not None:
            yield None, s.input_term.span, s.input_term
        elif isinstance(s, ast.Discretize):
            for k in s.kwargs:
                yield None, k.value.span, k.value


def check_nesting(block: ast.Block, source: Source, limit: int = MAX_NESTING) -> None:
    """Refuse a block whose expressions, with named values substituted, nest deeper than `limit`."""
    walked = {}
    others = []
    for name, span, e in _uses(block):
        info = (span,) + _walk(e)
        if name is None:
            others.append(info)
        else:
            walked.setdefault(name, info)
    total: dict[str, int] = {}
    # Depth first from each value, without recursion (the chains are what is long). A value
    # on the current path met again is a cycle: resolve_names reports it, here it adds nothing.
    on_path: set[str] = set()
    for start in walked:
        if start in total:
            continue
        on_path.add(start)
        stack = [(start, iter(walked[start][2]))]
        while stack:
            v, refs = stack[-1]
            for r, _ in refs:
                if r in walked and r not in total and r not in on_path:
                    on_path.add(r)
                    stack.append((r, iter(walked[r][2])))
                    break
            else:
                stack.pop()
                on_path.discard(v)
                _, own, uses = walked[v]
                total[v] = max([own] + [d + total[r] - 1 for r, d in uses if r in total])
    over = [(t, v) for v, t in total.items() if t > limit]
    if over:
        depth, name = min(over)
        raise SpecError(f"'{name}' is nested too deeply: with the named values it uses substituted, its "
                        f"expression is {depth} levels deep (more than {limit})", walked[name][0], source,
                        hint="shorten the chain of named values that leads to it")
    for span, own, refs in others:
        depth = max([own] + [d + total[r] - 1 for r, d in refs if r in total])
        if depth > limit:
            raise SpecError(f"this expression is nested too deeply: with the named values it uses substituted, "
                            f"it is {depth} levels deep (more than {limit})", span, source,
                            hint="shorten the chain of named values that leads to it")
