"""A persistent cache of generated module source, so a spec compiled once loads fast.

Keyed on a fingerprint of ssmc's own code (so an edited compiler never serves stale
output), the backend that was asked for and resolved, and the spec's text and file name. Stored under $SSMC_CACHE_DIR (default ~/.cache/ssmc); SSMC_CACHE=0
turns it off. A damaged or unreadable entry is ignored and rewritten.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from . import __version__


def _dir() -> Path | None:
    if os.environ.get("SSMC_CACHE", "1") == "0":
        return None
    return Path(os.environ.get("SSMC_CACHE_DIR") or Path.home() / ".cache" / "ssmc")


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    import importlib
    h = hashlib.sha256(__version__.encode())
    roots = {Path(__file__).parent} | {Path(importlib.import_module(name).__file__).parent
                                       for name in ("ssmc.backends", "ssmc.grammar")}
    for root in sorted(roots):
        for f in sorted(root.rglob("*")):
            if f.suffix in (".py", ".lark") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def key(text: str, filename: str, requested: str, resolved: str, strict: bool) -> str:
    h = hashlib.sha256()
    for part in (_code_fingerprint(), requested, resolved, str(strict), filename, text):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def get(k: str) -> dict | None:
    d = _dir()
    if d is None:
        return None
    try:
        entry = json.loads((d / f"{k}.json").read_text())
        return entry if isinstance(entry, dict) and "source" in entry else None
    except (OSError, ValueError):
        return None


def put(k: str, entry: dict) -> None:
    d = _dir()
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half an entry.
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, d / f"{k}.json")
    except OSError:
        pass
