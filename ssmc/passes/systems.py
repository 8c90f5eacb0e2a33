"""order_systems (the last step of resolve_names): the order in which the systems of a block with several states run.

Each state has its own system (its transition, step and input term). A system may read
another state (GSA-like stacks: the second recurrence driven by the first one's readout):
it then runs after that state's whole scan, reading its per-token values after their
update, as the output does. States that read each other in a cycle are an error (the
scans could not run one after the other). A system reading its own state is left to
check_structure / check_linearity, which say why.

Guarantees afterwards: meta["order"], a list of system indices, dependencies first, else
declaration order; for a block with one state, nothing changes.
"""
from __future__ import annotations

from ..errors import SpecError
from ..ir.graph import Graph
from ..ir.systems import is_multi


def order_systems(g: Graph) -> Graph:
    """Order the systems so that each runs after the states it reads."""
    if not is_multi(g):
        return g
    systems = g.meta["systems"]
    states = [s["state"] for s in systems]
    reads: list[set[int]] = []
    for i, s in enumerate(systems):
        anc = set()
        for n in g.operands(s["system"]):
            anc |= g.ancestors(n) | {n}
        reads.append({j for j, st in enumerate(states) if st in anc and j != i})
    done: list[int] = []
    waiting = list(range(len(systems)))
    while waiting:
        ready = [i for i in waiting if reads[i] <= set(done)]
        if not ready:
            i = waiting[0]
            names = [g.op(states[j]).get("name") for j in waiting]
            tr = systems[i]["transition"]
            raise SpecError("the states " + ", ".join(f"'{n}'" for n in names) + " read each other in a cycle "
                            "(each state's transition, step and input term may read only states that do not "
                            "read it back)", tr["span"], g.meta["source"],
                            hint="a state may read another one only in one direction; the output may read all")
        done.append(ready[0])
        waiting.remove(ready[0])
    g.meta["order"] = done
    g.meta["reads"] = [sorted(r) for r in reads]
    return g
