"""The float64 NumPy reference backend: a sequential recurrence, obviously correct."""
from .codegen import render

NAME = "numpy"


def available() -> tuple[bool, str]:
    return True, "NumPy runs everywhere"


__all__ = ["render", "NAME", "available"]
