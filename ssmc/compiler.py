"""Front to back: source text -> analysed IR graphs -> generated module text -> loaded module."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecError, Source
from .frontend.parser import parse, read_source
from .ir.build import build
from .ir.graph import Graph
from . import passes


@dataclass
class Compiled:
    source: Source
    graphs: list[Graph]


def analyse(source: Source, dump_dir=None) -> Compiled:
    """Parse and run the pass pipeline on every block of a spec."""
    try:
        file = parse(source)
        graphs = []
        names = set()
        for block in file.blocks:
            if block.name in names:
                raise SpecError(f"a second block named '{block.name}'", block.name_span, source,
                                hint="each ssm block needs its own name")
            names.add(block.name)
            g = build(block, source)
            graphs.append(passes.run(g, dump_dir=(dump_dir / block.name) if dump_dir else None))
    except RecursionError:
        raise SpecError("the spec is nested too deeply to analyse", None, source,
                        hint="split long expressions into named values") from None
    if not graphs:
        raise SpecError("the file holds no `ssm NAME { ... }` block", None, source)
    return Compiled(source, graphs)


def analyse_path(path, dump_dir=None) -> Compiled:
    return analyse(read_source(path), dump_dir)
