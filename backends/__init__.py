"""Backends, installed as `ssmc.backends`. Each renders analysed IR graphs to module source.

A backend module exposes `NAME`, `available() -> (bool, why)` and
`render(compiled) -> str` (Python source importing only torch, numpy, ssmc.runtime,
and triton for the Triton backend). They are imported lazily.
"""
from __future__ import annotations

import importlib

from ..errors import BackendUnavailable

REGISTRY = {
    "numpy": "ssmc.backends.ref_numpy",
    "torch": "ssmc.backends.torch_backend",
    "triton": "ssmc.backends.triton_backend",
}
# Preference order of backend="auto"; the first available one wins.
AUTO_ORDER = ("triton", "torch", "numpy")


def get_backend(name: str):
    if name not in REGISTRY:
        raise BackendUnavailable(f"unknown backend '{name}'; available: " + ", ".join(sorted(REGISTRY)) + ", auto")
    return importlib.import_module(REGISTRY[name])


def available_backends() -> dict[str, tuple[bool, str]]:
    return {name: get_backend(name).available() for name in REGISTRY}
