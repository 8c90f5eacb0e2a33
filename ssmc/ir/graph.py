"""The IR container.

A `Graph` wraps a `networkx.MultiDiGraph`: one node per op, one edge per operand
(`producer -> consumer`, edge key = operand slot), so `x * x` keeps both edges and
operand order lives in the key. Ops are frozen; what passes learn about a node
(its named dims, its time dependence, whether it is complex) lives beside the op
in the node's data as *facts*. Block-level facts (dims, scan order, the system's
classification, the chosen algorithm) live in `Graph.meta`.

Order is always `lexicographical_topological_sort` by node id, so printouts and
generated code are deterministic.
"""
from __future__ import annotations

import copy as _copy
from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx

from ..errors import Span

# Facts a node can carry, set by passes.
FACTS = ("dims", "time", "complex")


@dataclass(frozen=True)
class Op:
    """One operation: its kind and static attributes (operands are edges)."""

    kind: str
    attrs: tuple[tuple[str, Any], ...] = ()
    span: Span | None = field(default=None, compare=False)

    def get(self, key: str, default=None):
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    def replace(self, **changes) -> "Op":
        d = dict(self.attrs)
        d.update(changes)
        return Op(self.kind, tuple(sorted(d.items())), self.span)


def op(kind: str, span: Span | None = None, **attrs) -> Op:
    return Op(kind, tuple(sorted(attrs.items())), span)


class Graph:
    """An IR graph with a narrow mutation API; passes never mutate `nx` directly."""

    def __init__(self) -> None:
        self.nx = nx.MultiDiGraph()
        self.meta: dict[str, Any] = {}
        self._next = 0

    # --- building ---------------------------------------------------------------
    def add(self, o: Op, *operands: int, **facts) -> int:
        n = self._next
        self._next += 1
        self.nx.add_node(n, op=o, **facts)
        for slot, src in enumerate(operands):
            self.nx.add_edge(src, n, key=slot)
        return n

    def set_operand(self, n: int, slot: int, src: int) -> None:
        for u, _, k in list(self.nx.in_edges(n, keys=True)):
            if k == slot:
                self.nx.remove_edge(u, n, key=k)
        self.nx.add_edge(src, n, key=slot)

    def replace_op(self, n: int, o: Op) -> None:
        self.nx.nodes[n]["op"] = o

    def replace_all_uses(self, old: int, new: int) -> None:
        for _, user, slot in list(self.nx.out_edges(old, keys=True)):
            self.nx.remove_edge(old, user, key=slot)
            self.nx.add_edge(new, user, key=slot)
        for key in ("values", "roots"):
            table = self.meta.get(key, {})
            for name, v in list(table.items()):
                if v == old:
                    table[name] = new

    def erase(self, n: int) -> None:
        self.nx.remove_node(n)

    # --- reading ----------------------------------------------------------------
    def op(self, n: int) -> Op:
        return self.nx.nodes[n]["op"]

    def fact(self, n: int, key: str, default=None):
        return self.nx.nodes[n].get(key, default)

    def set_fact(self, n: int, **facts) -> None:
        self.nx.nodes[n].update(facts)

    def operands(self, n: int) -> tuple[int, ...]:
        edges = sorted((k, u) for u, _, k in self.nx.in_edges(n, keys=True))
        return tuple(u for _, u in edges)

    def users(self, n: int) -> list[tuple[int, int]]:
        return sorted((v, k) for _, v, k in self.nx.out_edges(n, keys=True))

    def nodes(self) -> Iterator[int]:
        return iter(sorted(self.nx.nodes))

    def topo(self) -> list[int]:
        return list(nx.lexicographical_topological_sort(self.nx, key=lambda n: n))

    def ancestors(self, n: int) -> set[int]:
        return nx.ancestors(self.nx, n)

    def find(self, kind: str) -> list[int]:
        return [n for n in self.nodes() if self.op(n).kind == kind]

    def one(self, kind: str) -> int | None:
        found = self.find(kind)
        return found[0] if found else None

    def copy(self) -> "Graph":
        g = Graph()
        g.nx = self.nx.copy()
        g.meta = _copy.deepcopy(self.meta)
        g._next = self._next
        return g

    def __len__(self) -> int:
        return self.nx.number_of_nodes()
