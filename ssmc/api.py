"""The public entry points: `ssmc.load`, `ssmc.loads`, `ssmc.compile_source`, `ssmc.check`."""
from __future__ import annotations

import itertools
import linecache
import sys
import types
import warnings
from pathlib import Path

from .compiler import Compiled, analyse, run_deep
from .errors import BackendUnavailable, Source
from .frontend.parser import decode, read_source


def _backend(name: str):
    from .backends import get_backend
    return get_backend(name)


_NOTICED: set[str] = set()


class BackendNotice(UserWarning):
    """Which backend `backend="auto"` (or a fallback) picked, and why; said once per process."""


def _notice(message: str) -> None:
    if message not in _NOTICED:
        _NOTICED.add(message)
        warnings.warn(message, BackendNotice, stacklevel=4)


def resolve_backend(name: str, strict: bool = False) -> str:
    """The backend that will run: `name` if available; for "auto" the best available one.

    An unavailable backend falls back to the best available one with a notice, or is an
    error with `strict=True`: nobody runs a slow path without knowing.
    """
    from .backends import AUTO_ORDER
    if name == "auto":
        for cand in AUTO_ORDER:
            mod = _backend(cand)
            ok, why = mod.available()
            if ok and getattr(mod, "preferred", lambda: True)():
                _notice(f"ssmc: backend='auto' picked '{cand}': {why}")
                return cand
        raise BackendUnavailable("no backend is available")
    ok, why = _backend(name).available()
    if ok:
        return name
    if strict:
        raise BackendUnavailable(f"backend '{name}' is unavailable: {why}")
    fallback = resolve_backend("auto")
    _notice(f"ssmc: backend '{name}' is unavailable ({why}); using '{fallback}' instead "
            f"(pass strict=True, or --strict, to make this an error)")
    return fallback


def compile_source(source: Source, backend: str = "numpy", strict: bool = False, *,
                   here: bool = True) -> str:
    """Generated Python source for every block of `source`. here=False generates for the
    backend asked for even where it cannot run on this machine (Triton kernels written on
    a machine without a GPU, to run on one)."""
    return _compile(source, backend, strict, here)[0]


def _compile(source: Source, backend: str, strict: bool, here: bool = True) -> tuple[str, str]:
    """(source text, the backend that generated it), falling back where a spec is beyond a backend.

    Results are kept in a persistent cache (ssmc/cache.py), so a spec compiled once loads fast.
    """
    from . import cache
    from .backends import AUTO_ORDER
    requested = backend
    if here or backend not in AUTO_ORDER:
        backend = resolve_backend(backend, strict)
    k = cache.key(source.text, source.filename, requested, backend, strict)
    hit = cache.get(k)
    if hit is not None:
        for message in hit.get("notices", []):
            _notice(message)
        return hit["source"], hit["backend"]
    before = set(_NOTICED)
    # On a deep stack: the backends' printers walk long chains of named values recursively.
    text, used = run_deep(_generate, source, backend, strict)
    cache.put(k, {"source": text, "backend": used, "notices": sorted(set(_NOTICED) - before)})
    return text, used


def _generate(source: Source, backend: str, strict: bool) -> tuple[str, str]:
    compiled = analyse(source)
    mod = _backend(backend)
    supports = getattr(mod, "supports", None)
    if supports is not None:
        ok, why = supports(compiled)
        if not ok:
            if strict:
                raise BackendUnavailable(f"backend '{backend}' cannot compile this spec: {why}")
            _notice(f"ssmc: backend '{backend}' cannot compile this spec ({why}); using 'torch' instead "
                    f"(pass strict=True, or --strict, to make this an error)")
            backend, mod = "torch", _backend("torch")
    return mod.render(compiled), backend


_LOADED = itertools.count()

#: The first module loaded from each (spec text, file name, backend): what unpickling a
#: layer (pickle, torch.load, copy.deepcopy, a spawned process) finds its class in.
_BY_SPEC: dict[tuple[str, str, str], types.ModuleType] = {}


def module_for_spec(text: str, filename: str, backend: str) -> types.ModuleType:
    """A module compiled from spec `text` for `backend`: the one loaded already in this
    process if there is one (so a copy's class is the original's), else compiled now
    (from the cache when it has the entry). An unavailable backend falls back with a notice."""
    mod = _BY_SPEC.get((text, filename, backend))
    if mod is None:
        mod = loads(text, backend=backend, filename=filename)
    return mod


def _module_from(text: str, source: Source, backend: str) -> types.ModuleType:
    stem = "".join(c if c.isalnum() else "_" for c in Path(source.filename).stem) or "spec"
    mod = types.ModuleType(f"ssmc_generated.{stem}_{next(_LOADED)}")
    # Registered like an imported module, so tools that look modules up (pickle,
    # torch.compile's tracing of globals) find it.
    sys.modules[mod.__name__] = mod
    number = mod.__name__.rsplit("_", 1)[1]
    mod.__dict__["__file__"] = f"<ssmc:{source.filename}:{number}>"
    # The text in linecache under that name: Triton's @jit (compiling for a GPU, not the
    # interpreter) reads a kernel's source through inspect, which finds it there; so do
    # tracebacks. An entry without a modification time is never evicted.
    linecache.cache[mod.__dict__["__file__"]] = (len(text), None, text.splitlines(True), mod.__dict__["__file__"])
    # dont_inherit: the module runs as the same text written to a file would (this file's
    # `from __future__ import annotations` would make Triton kernels' `_tl.constexpr`
    # annotations strings, which Triton's interpreter does not read as constexpr).
    code = compile(text, mod.__dict__["__file__"], "exec", dont_inherit=True)
    exec(code, mod.__dict__)
    mod.__dict__["__ssmc_source__"] = text
    mod.__dict__["__ssmc_backend__"] = backend
    # The spec it came from: a pickled layer refers to its class by this (the module's name
    # means nothing in another process), see ReferenceModule.__reduce_ex__.
    spec = (source.text, source.filename, backend)
    mod.__dict__["__ssmc_spec__"] = spec
    _BY_SPEC.setdefault(spec, mod)
    return mod


def load(path, backend: str = "auto", strict: bool = False) -> types.ModuleType:
    """Compile a `.ssm` file; return a module with one nn.Module class per `ssm` block.

    backend: "torch" (differentiable, CPU or GPU), "numpy" (the float64 reference), or
    "auto" (the best available; says which once). strict=True makes an unavailable
    backend an error instead of a fallback.
    """
    source = read_source(path)
    text, backend = _compile(source, backend, strict)
    return _module_from(text, source, backend)


def loads(text: str | bytes, backend: str = "auto", filename: str = "<string>",
          strict: bool = False) -> types.ModuleType:
    """Like `load`, from spec text."""
    source = decode(text, filename) if isinstance(text, bytes) else Source(text, filename)
    text, backend = _compile(source, backend, strict)
    return _module_from(text, source, backend)


def check(path_or_source) -> Compiled:
    """Parse and analyse a spec; returns the analysed IR graphs."""
    source = path_or_source if isinstance(path_or_source, Source) else read_source(path_or_source)
    return analyse(source)
