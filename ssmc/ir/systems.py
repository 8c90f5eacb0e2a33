"""Several states in one block: one *system* per state.

A block with one state keeps its system in the top-level keys of `Graph.meta` (meta["state"],
meta["system"], meta["algorithm"], ...), as every pass and backend reads them. A block with
several states also has meta["systems"]: one dict per state, in declaration order, holding
those same keys for that state. `focus(g, i)` makes system i the one the top-level keys
describe (saving the one they described before), so a pass written for one system runs on
each in turn (`each_system`), and a backend reads system i as it would read a one-state
block. meta["order"] is the order the systems run in (a state whose input term reads
another state runs after it); meta["focus"] is the index the top-level keys describe.
"""
from __future__ import annotations

from functools import wraps

from .graph import Graph

# What describes one system (the rest of meta is the block's).
SYSTEM_KEYS = ("state", "transition", "discretize", "system", "system_info", "rule", "state_dims",
               "state_complex", "roots", "discretization", "classification", "algorithm", "ssd", "delta",
               "lti_kernel")


def is_multi(g: Graph) -> bool:
    return bool(g.meta.get("systems"))


def count(g: Graph) -> int:
    return len(g.meta["systems"]) if is_multi(g) else 1


def save(g: Graph) -> None:
    """Write the top-level keys back into the system they describe."""
    if is_multi(g):
        i = g.meta.get("focus", 0)
        g.meta["systems"][i] = {k: g.meta.get(k) for k in SYSTEM_KEYS}


def focus(g: Graph, i: int) -> Graph:
    """Make system i the one the top-level keys describe (in place; returns g)."""
    if is_multi(g):
        save(g)
        for k in SYSTEM_KEYS:
            g.meta[k] = g.meta["systems"][i].get(k)
        g.meta["focus"] = i
    return g


def order(g: Graph) -> list[int]:
    """The systems in the order they run (declaration order for one state)."""
    return list(g.meta.get("order") or range(count(g)))


def each_system(p):
    """A pass written for one system, run on every system of a block in turn (in run order),
    the top-level keys left on the first system."""
    @wraps(p)
    def run(g: Graph) -> Graph:
        if not is_multi(g):
            return p(g)
        for i in order(g):
            g = p(focus(g, i))
            save(g)
        return focus(g, 0)
    return run


def state_nodes(g: Graph) -> list[int]:
    if is_multi(g):
        return [s["state"] for s in g.meta["systems"]]
    return [g.meta["state"]] if g.meta.get("state") is not None else []


def system_nodes(g: Graph) -> list[int]:
    if is_multi(g):
        return [s["system"] for s in g.meta["systems"] if s.get("system") is not None]
    return [g.meta["system"]] if g.meta.get("system") is not None else []


def view(g: Graph, i: int) -> Graph:
    """A copy of g focused on system i (for a backend that reads one system at a time)."""
    h = g.copy()
    return focus(h, i)
