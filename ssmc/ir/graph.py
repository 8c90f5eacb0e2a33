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
import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx

from ..errors import Span

# How many answers of Graph.ancestors are kept (per graph, until it changes).
_ANCESTORS_KEPT = 64

# Facts a node can carry, set by passes.
FACTS = ("dims", "time", "complex")


@dataclass(frozen=True)
class Op:
    """One operation: its kind and static attributes (operands are edges)."""

    kind: str
    attrs: tuple[tuple[str, Any], ...] = ()
    span: Span | None = field(default=None, compare=False)

    def __deepcopy__(self, memo) -> "Op":
        # Immutable (attrs are tuples of plain values): every pass copies the graph, sharing ops is safe.
        return self

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
        self._changed()

    def _changed(self) -> None:
        # Passes and backends ask for the order and for ancestors again and again (per
        # param, per value): both are kept until the next change of the graph's edges or
        # nodes, so a spec with thousands of values compiles in about linear time.
        self._topo: list[int] | None = None
        # A few recent answers only: kept for every node of a long chain they would take
        # memory quadratic in its length.
        self._ancestors: OrderedDict[int, frozenset[int]] = OrderedDict()

    # --- building ---------------------------------------------------------------
    def add(self, o: Op, *operands: int, **facts) -> int:
        n = self._next
        self._next += 1
        self.nx.add_node(n, op=o, **facts)
        for slot, src in enumerate(operands):
            self.nx.add_edge(src, n, key=slot)
        self._changed()
        return n

    def set_operand(self, n: int, slot: int, src: int) -> None:
        for u, _, k in list(self.nx.in_edges(n, keys=True)):
            if k == slot:
                self.nx.remove_edge(u, n, key=k)
        self.nx.add_edge(src, n, key=slot)
        self._changed()

    def replace_op(self, n: int, o: Op) -> None:
        self.nx.nodes[n]["op"] = o

    def replace_all_uses(self, old: int, new: int) -> None:
        self.replace_uses({old: new})

    def replace_uses(self, mapping: dict[int, int]) -> None:
        """Every use of each key (operands and the named tables meta["values"], meta["roots"])
        becomes a use of its value, following chains (a -> b, b -> c: a's users read c).

        One call for many nodes: the tables are rewritten once, not once per node."""
        def final(n: int) -> int:
            seen = set()
            while n in mapping and n not in seen:
                seen.add(n)
                n = mapping[n]
            return n

        for old in mapping:
            new = final(old)
            if new == old:
                continue
            for _, user, slot in list(self.nx.out_edges(old, keys=True)):
                self.nx.remove_edge(old, user, key=slot)
                self.nx.add_edge(new, user, key=slot)
        for key in ("values", "roots"):
            table = self.meta.get(key) or {}
            for name, v in table.items():
                if v in mapping:
                    table[name] = final(v)
        # A block with several states keeps each system's roots beside the focused one's.
        for system in self.meta.get("systems") or ():
            table = system.get("roots") or {}
            for name, v in table.items():
                if v in mapping:
                    table[name] = final(v)
        self._changed()

    def erase(self, n: int) -> None:
        self.nx.remove_node(n)
        self._changed()

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
        """The nodes in topological order, the smallest id first among those ready (what
        networkx's lexicographical_topological_sort gives, in linear time and kept)."""
        if self._topo is None:
            pred, succ = self.nx.pred, self.nx.succ
            waiting = {n: sum(len(keys) for keys in pred[n].values()) for n in self.nx}
            ready = [n for n, k in waiting.items() if k == 0]
            heapq.heapify(ready)
            order = []
            while ready:
                u = heapq.heappop(ready)
                order.append(u)
                for v, keys in succ[u].items():
                    waiting[v] -= len(keys)
                    if waiting[v] == 0:
                        heapq.heappush(ready, v)
            if len(order) != len(waiting):
                raise nx.NetworkXUnfeasible("Graph contains a cycle or graph changed during iteration")
            self._topo = order
        return list(self._topo)

    def ancestors(self, n: int) -> frozenset[int]:
        """Every node n depends on (not n itself)."""
        found = self._ancestors.get(n)
        if found is None:
            # A plain walk over the predecessor dicts: backends ask this of every node of a
            # body, and networkx's generic BFS costs several times more per node visited.
            pred = self.nx._pred
            seen: set[int] = set()
            stack = list(pred[n])
            while stack:
                m = stack.pop()
                if m not in seen:
                    seen.add(m)
                    stack.extend(pred[m])
            found = self._ancestors[n] = frozenset(seen)
            if len(self._ancestors) > _ANCESTORS_KEPT:
                self._ancestors.popitem(last=False)
        else:
            self._ancestors.move_to_end(n)
        return found

    def descendants(self, n: int) -> frozenset[int]:
        """Every node that depends on n (not n itself)."""
        return frozenset(nx.descendants(self.nx, n))

    def find(self, kind: str) -> list[int]:
        return [n for n in self.nodes() if self.op(n).kind == kind]

    def one(self, kind: str) -> int | None:
        found = self.find(kind)
        return found[0] if found else None

    def copy(self) -> "Graph":
        g = Graph()
        g.nx = _copy_multidigraph(self.nx)
        g.meta = _copy.deepcopy(self.meta)
        g._next = self._next
        g._topo, g._ancestors = self._topo, OrderedDict(self._ancestors)
        return g

    def __len__(self) -> int:
        return self.nx.number_of_nodes()


def _copy_multidigraph(src: nx.MultiDiGraph) -> nx.MultiDiGraph:
    """What `src.copy()` gives (node and edge data dicts copied, ops and facts shared), built
    straight from networkx's adjacency dicts: every pass copies the graph, and networkx's
    generic copy, one add_node/add_edge at a time, was most of the compile time of a
    large spec."""
    dst = nx.MultiDiGraph()
    dst.graph.update(src.graph)
    dst._node.update((n, dict(d)) for n, d in src._node.items())
    succ, pred = dst._succ, dst._pred
    for n in src._node:
        succ[n] = {}
        pred[n] = {}
    for u, nbrs in src._succ.items():
        out = succ[u]
        for v, keys in nbrs.items():
            # One key dict per (u, v), shared by both directions, as networkx keeps it.
            kd = {k: dict(e) for k, e in keys.items()}
            out[v] = kd
            pred[v][u] = kd
    return dst
