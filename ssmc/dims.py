"""Dims expressions as data: `("ceil", ("div", ("dim", "H"), ("num", 16)))`.

Evaluated exactly with Fractions, at compile time (the defaults) and in generated
modules at construction (the sizes a user passes); never as Python code.
"""
from __future__ import annotations

import math
from fractions import Fraction


def eval_dim(tree, env: dict[str, int]) -> Fraction:
    """Evaluate a dim tree exactly; raises ZeroDivisionError / ValueError / OverflowError."""
    v = _eval_dim(tree, env)
    if abs(v.numerator) > _MAX_EXACT or v.denominator > _MAX_EXACT:
        # Keeps `((2 ** 64) ** 64) ** 64` from taking the machine down.
        raise OverflowError("the value is too large")
    return v


_MAX_EXACT = 2 ** 256


def _eval_dim(tree, env: dict[str, int]) -> Fraction:
    kind = tree[0]
    if kind == "num":
        return Fraction(tree[1])
    if kind == "dim":
        return Fraction(env[tree[1]])
    if kind == "neg":
        return -eval_dim(tree[1], env)
    args = [eval_dim(t, env) for t in tree[1:]]  # each one bounded
    if kind == "add":
        return args[0] + args[1]
    if kind == "sub":
        return args[0] - args[1]
    if kind == "mul":
        return args[0] * args[1]
    if kind == "div":
        if args[1] == 0:
            raise ZeroDivisionError("division by zero")
        return args[0] / args[1]
    if kind == "pow":
        if args[1].denominator != 1 or abs(args[1]) > 64:
            raise ValueError("exponent must be a small integer")
        return args[0] ** int(args[1])
    if kind == "ceil":
        return Fraction(math.ceil(args[0]))
    if kind == "floor":
        return Fraction(math.floor(args[0]))
    if kind == "min":
        return min(args)
    if kind == "max":
        return max(args)
    raise ValueError(kind)
