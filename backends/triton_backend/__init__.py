"""The Triton backend: the recurrence and everything of the state's size fused into one
generated kernel per spec, state in registers (forward); see codegen.py for its scope."""
from __future__ import annotations

import importlib.util
import os

from .codegen import render, supports

NAME = "triton"


def available() -> tuple[bool, str]:
    """Triton needs a CUDA GPU, or its CPU interpreter (TRITON_INTERPRET=1, slow: for tests)."""
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed (pip install 'ssmc[triton]')"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "Triton's CPU interpreter (TRITON_INTERPRET=1): correct but slow, for tests"
    import torch
    if torch.cuda.is_available():
        return True, f"Triton on {torch.cuda.get_device_name(0)}"
    return False, "no CUDA GPU here (set TRITON_INTERPRET=1 to run Triton kernels on the CPU interpreter)"


def preferred() -> bool:
    """Whether backend="auto" should pick Triton: only on a GPU, never the interpreter."""
    ok, _ = available()
    if not ok or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return True


__all__ = ["render", "supports", "NAME", "available", "preferred"]
