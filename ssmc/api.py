"""The public entry points: `ssmc.load`, `ssmc.loads`, `ssmc.compile_source`, `ssmc.check`."""
from __future__ import annotations

import types
from pathlib import Path

from .compiler import Compiled, analyse
from .errors import Source
from .frontend.parser import decode, read_source


def _backend(name: str):
    from .backends import get_backend
    return get_backend(name)


def resolve_backend(name: str, strict: bool = False) -> str:
    if name == "auto":
        return "numpy"
    _backend(name)
    return name


def compile_source(source: Source, backend: str = "numpy") -> str:
    """Generated Python source for every block of `source`."""
    backend = resolve_backend(backend)
    compiled = analyse(source)
    return _backend(backend).render(compiled)


def _module_from(text: str, source: Source, backend: str) -> types.ModuleType:
    mod = types.ModuleType(f"ssmc_generated_{Path(source.filename).stem or 'spec'}")
    mod.__dict__["__file__"] = f"<ssmc:{source.filename}>"
    code = compile(text, mod.__dict__["__file__"], "exec")
    exec(code, mod.__dict__)
    mod.__dict__["__ssmc_source__"] = text
    mod.__dict__["__ssmc_backend__"] = backend
    return mod


def load(path, backend: str = "numpy") -> types.ModuleType:
    """Compile a `.ssm` file; return a module with one nn.Module class per `ssm` block."""
    source = read_source(path)
    backend = resolve_backend(backend)
    return _module_from(compile_source(source, backend), source, backend)


def loads(text: str | bytes, backend: str = "numpy", filename: str = "<string>") -> types.ModuleType:
    """Like `load`, from spec text."""
    source = decode(text, filename) if isinstance(text, bytes) else Source(text, filename)
    backend = resolve_backend(backend)
    return _module_from(compile_source(source, backend), source, backend)


def check(path_or_source) -> Compiled:
    """Parse and analyse a spec; returns the analysed IR graphs."""
    source = path_or_source if isinstance(path_or_source, Source) else read_source(path_or_source)
    return analyse(source)
