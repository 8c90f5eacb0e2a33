"""Facts every backend and the CLI read off an analysed graph, computed in one place."""
from __future__ import annotations

import math

from .graph import Graph


def parameters(g: Graph) -> list[tuple[str, str, dict]]:
    """(name, kind, info) for every learnable tensor, in initialization order.

    kind is 'param' (info: dims, complex, frozen), 'linear_weight' / 'linear_bias'
    (info: out, in dims), or 'conv_weight' / 'conv_bias' (info: channels dims, K).
    """
    rows = []
    for p in g.meta["params"]:
        o = g.op(p)
        rows.append((o.get("name"), "param", dict(dims=tuple(d for d, _ in o.get("dims")),
                                                  complex=bool(o.get("complex")), frozen=bool(o.get("frozen")))))
    for n in g.topo():
        o = g.op(n)
        if o.kind == "linear":
            (e,) = g.operands(n)
            info = {"out": tuple(d for d, _ in o.get("out_dims")), "in": tuple(g.fact(e, "dims"))}
            rows.append((o.get("weight"), "linear_weight", info))
            if o.get("bias"):
                rows.append((o.get("bias"), "linear_bias", info))
        elif o.kind == "conv":
            info = dict(channels=tuple(g.fact(n, "dims")), K=o.get("width")[0])
            rows.append((o.get("weight"), "conv_weight", info))
            if o.get("bias"):
                rows.append((o.get("bias"), "conv_bias", info))
    return rows


def dim_values(g: Graph) -> dict[str, int]:
    return {d: v for d, _, v in g.meta["dims"]}


def param_shape(kind: str, info: dict, dims: dict[str, int]) -> tuple[int, ...]:
    if kind == "param":
        return tuple(dims[d] for d in info["dims"])
    if kind in ("linear_weight", "linear_bias"):
        out = math.prod(dims[d] for d in info["out"])
        return (out, math.prod(dims[d] for d in info["in"])) if kind == "linear_weight" else (out,)
    k = info["K"] if isinstance(info["K"], int) else dims[info["K"]]
    ch = tuple(dims[d] for d in info["channels"])
    return ch + (k,) if kind == "conv_weight" else ch


def directions(g: Graph) -> int:
    sc = g.meta["scan"]
    return len(sc["directions"]) if sc["params"] == "separate" else 1
