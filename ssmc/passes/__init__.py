"""The pass pipeline. Reading PIPELINE tells what ssmc does to a spec, in order.

Each pass is `Graph -> Graph` (`each_system(p)` runs a pass written for one system on
every state's system of a block with several, ssmc/ir/systems.py), returns a new graph, and states in its docstring what
holds afterwards; `verify` checks the structural invariants between passes.
"""
from __future__ import annotations

from pathlib import Path

from ..ir.graph import Graph
from ..ir.verify import verify
from .algorithm import choose_algorithm
from .cse import eliminate_common_subexpressions
from .declarations import check_declarations
from .discretize import discretize
from .linearity import check_linearity
from .resolve import resolve_names
from .shapes import infer_shapes
from .structure import check_structure
from .time import infer_time
from ..ir.systems import each_system

PIPELINE = (
    check_declarations,              # names legal and unique, dims evaluated, block complete
    resolve_names,                   # refs -> edges, dims exist, no cycles; several states ordered
    infer_shapes,                    # named dims of every value, broadcasting by name
    infer_time,                      # static / per-token, real / complex
    each_system(check_structure),    # A, E and step fit the state and the structure
    each_system(check_linearity),    # E linear in the input (sympy); LTI or selective
    each_system(discretize),         # dynamics -> recurrence(Abar, Ebar), derived with sympy
    eliminate_common_subexpressions, # merge equal nodes, drop dead ones
    each_system(choose_algorithm),   # advisory algorithm for the fast backends
)


def run(g: Graph, passes=PIPELINE, dump_dir: Path | None = None) -> Graph:
    """Run the passes in order, verifying after each; optionally dump the IR after each."""
    from ..ir.printer import print_graph

    for i, p in enumerate(passes):
        g = p(g)
        verify(g, after=p.__name__)
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)
            (dump_dir / f"{i:02d}-{p.__name__}.ssmir").write_text(print_graph(g))
    return g
