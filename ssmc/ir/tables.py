"""Facts every backend and the CLI read off an analysed graph, computed in one place."""
from __future__ import annotations

import math

from .graph import Graph


def parameters(g: Graph) -> list[tuple[str, str, dict]]:
    """(name, kind, info) for every learnable tensor, in initialization order.

    kind is 'param' (info: dims, complex, frozen), 'linear_weight' / 'linear_bias'
    (info: out, in dims), or 'conv_weight' / 'conv_bias' (info: channels dims, K).
    With several scan directions, a tensor whose sharing the spec sets itself (a param's
    `shared` / `separate` flag, a linear's or conv's `params =`) also has info
    "separate": whether it has the leading direction axis. Without that key it follows
    the scan's `params =` (so specs that set nothing keep their tables as they were).
    """
    rows = []
    for p in g.meta["params"]:
        o = g.op(p)
        rows.append((o.get("name"), "param", dict(dims=tuple(d for d, _ in o.get("dims")),
                                                  complex=bool(o.get("complex")), frozen=bool(o.get("frozen")),
                                                  **_override(g, o))))
    for n in g.topo():
        o = g.op(n)
        if o.kind == "linear":
            (e,) = g.operands(n)
            info = {"out": tuple(d for d, _ in o.get("out_dims")), "in": tuple(g.fact(e, "dims")), **_override(g, o)}
            rows.append((o.get("weight"), "linear_weight", info))
            if o.get("bias"):
                rows.append((o.get("bias"), "linear_bias", info))
        elif o.kind == "conv":
            info = dict(channels=tuple(g.fact(n, "dims")), K=o.get("width")[0], **_override(g, o))
            rows.append((o.get("weight"), "conv_weight", info))
            if o.get("bias"):
                rows.append((o.get("bias"), "conv_bias", info))
    return rows


def _override(g: Graph, o) -> dict:
    """{"separate": bool} where the op sets its own sharing and the scan has several directions."""
    sharing = o.get("sharing")
    if sharing is None or len(g.meta["scan"]["directions"]) < 2:
        return {}
    return {"separate": sharing == "separate"}


def is_separate(g: Graph, info: dict) -> bool:
    """Whether a tensor of `parameters(g)` has the leading direction axis."""
    sc = g.meta["scan"]
    if len(sc["directions"]) < 2:
        return False
    return info.get("separate", sc["params"] == "separate")


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
    """The size of the direction axis of separate tensors (1: none has one)."""
    sc = g.meta["scan"]
    if len(sc["directions"]) < 2:
        return 1
    if sc["params"] == "separate" or any(info.get("separate") for _, _, info in parameters(g)):
        return len(sc["directions"])
    return 1
