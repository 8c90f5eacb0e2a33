"""The PyTorch backend: differentiable modules for CPU and GPU."""
from .codegen import render

NAME = "torch"


def available() -> tuple[bool, str]:
    return True, "PyTorch runs on every device torch supports"


__all__ = ["render", "NAME", "available"]
