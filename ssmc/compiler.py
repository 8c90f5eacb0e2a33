"""Front to back: source text -> analysed IR graphs -> generated module text -> loaded module."""
from __future__ import annotations

import gc
import sys
import threading
from dataclasses import dataclass

from .errors import SpecError, Source
from .frontend.nesting import MAX_NESTING, check_nesting
from .frontend.parser import parse, read_source
from .ir.build import build
from .ir.graph import Graph
from . import passes


@dataclass
class Compiled:
    source: Source
    graphs: list[Graph]


# A chain of named values (a1 = a0 + 1, a2 = a1 + 1, ...) is one deep expression to the
# stages that walk values recursively (sympy, explain, the backends' printers), one level
# or more per value. They run in a worker thread with a stack that holds MAX_NESTING
# levels (frontend/nesting.py refuses deeper blocks) with a wide margin, and a recursion
# limit to match. The stack is address space: only the pages a walk reaches are used.
_DEEP_STACK_BYTES = 1 << 30
_DEEP_RECURSION_LIMIT = 60 * MAX_NESTING + 20_000
_deep_lock = threading.Lock()
_deep_state = {"running": 0, "limit": None}
_in_deep = threading.local()


def run_deep(fn, *args, **kwargs):
    """fn(*args, **kwargs) on a stack deep enough for any spec within MAX_NESTING, with the
    cyclic garbage collector paused (compiling allocates many objects and no cycles worth
    collecting; collections over a large heap made compile time grow with the spec's
    square). Exceptions reach the caller as they are."""
    if getattr(_in_deep, "active", False):
        return fn(*args, **kwargs)
    result: dict = {}

    def work():
        _in_deep.active = True
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = e

    was_enabled = gc.isenabled()
    gc.disable()
    with _deep_lock:
        if _deep_state["running"] == 0:
            _deep_state["limit"] = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_deep_state["limit"], _DEEP_RECURSION_LIMIT))
        _deep_state["running"] += 1
        worker = threading.Thread(target=work, name="ssmc-compile", daemon=True)
        try:
            old = threading.stack_size(_DEEP_STACK_BYTES)
            try:
                worker.start()
            finally:
                threading.stack_size(old)
        except (RuntimeError, ValueError, MemoryError):
            worker = None  # no thread with such a stack here: run on this one
    try:
        if worker is None:
            work()
        else:
            worker.join()
    finally:
        _in_deep.active = False
        with _deep_lock:
            _deep_state["running"] -= 1
            if _deep_state["running"] == 0 and sys.getrecursionlimit() == max(_deep_state["limit"],
                                                                                _DEEP_RECURSION_LIMIT):
                sys.setrecursionlimit(_deep_state["limit"])
        if was_enabled:
            gc.enable()
    if "error" in result:
        raise result["error"]
    return result["value"]


def analyse(source: Source, dump_dir=None) -> Compiled:
    """Parse and run the pass pipeline on every block of a spec."""
    return run_deep(_analyse, source, dump_dir)


def _analyse(source: Source, dump_dir=None) -> Compiled:
    block = None
    try:
        file = parse(source)
        graphs = []
        names = set()
        for block in file.blocks:
            if block.name in names:
                raise SpecError(f"a second block named '{block.name}'", block.name_span, source,
                                hint="each ssm block needs its own name")
            names.add(block.name)
            check_nesting(block, source)
            g = build(block, source)
            graphs.append(passes.run(g, dump_dir=(dump_dir / block.name) if dump_dir else None))
    except RecursionError:
        # Not expected within MAX_NESTING; where it happens anyway (a Python whose C stack
        # limits are lower), still a located error.
        raise SpecError(f"the block is nested too deeply to analyse (more than this Python's stack "
                        f"holds; the language's limit is {MAX_NESTING} levels)",
                        block.name_span if block is not None else None, source,
                        hint="shorten long chains of named values and split long expressions") from None
    if not graphs:
        raise SpecError("the file holds no `ssm NAME { ... }` block", None, source)
    return Compiled(source, graphs)


def analyse_path(path, dump_dir=None) -> Compiled:
    return analyse(read_source(path), dump_dir)
