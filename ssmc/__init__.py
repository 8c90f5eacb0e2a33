"""ssmc: a compiler for state space models.

    import ssmc
    mod = ssmc.load("mamba.ssm", backend="torch")
    layer = mod.Mamba(H=64, N=16, seed=0)
    y = layer(u)
"""
__version__ = "0.1.0"

from .errors import BackendUnavailable, ShapeError, SpecError, SsmcError  # noqa: E402
from .api import BackendNotice, check, compile_source, load, loads  # noqa: E402

__all__ = ["load", "loads", "check", "compile_source", "SpecError", "SsmcError", "ShapeError",
           "BackendUnavailable", "BackendNotice", "__version__"]
