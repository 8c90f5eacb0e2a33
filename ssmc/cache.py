"""A persistent cache of generated module source, so a spec compiled once loads fast.

Keyed on a fingerprint of ssmc's own code (so an edited compiler never serves stale
output), the backend that was asked for and resolved, and the spec's text and file name. Stored under $SSMC_CACHE_DIR (default ~/.cache/ssmc); SSMC_CACHE=0
turns it off.

An entry's source is executed when it loads, so an entry is trusted only as far as the
place it comes from:
- each entry stores a sha256 digest of its key and contents, checked on load: a damaged
  entry, one stored under another spec's key, or one not written by ssmc is ignored, and
  the spec is compiled again and its entry rewritten;
- a cache directory (or entry file) that another user owns, or that its group or
  everyone may write to, is not used at all: specs compile without the cache, with a
  `CacheNotice` once per process. ssmc creates its directory private (mode 0700) and
  its entries mode 0600.
The digest detects damage, not a forger: what keeps out entries planted by others is
that nobody else can write where the cache is read from.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import tempfile
import warnings
from pathlib import Path

from . import __version__


class CacheNotice(UserWarning):
    """The compiled-module cache is not used (a directory others can write to); said once per process."""


_NOTICED: set[str] = set()


def _notice(message: str) -> None:
    if message not in _NOTICED:
        _NOTICED.add(message)
        warnings.warn(message, CacheNotice, stacklevel=4)


def _unsafe(st: os.stat_result) -> str | None:
    """Why a file or directory with this status must not be trusted (None: it may be)."""
    if os.name != "posix":
        # Elsewhere (Windows) the mode bits do not describe who may write; ACLs do.
        return None
    getuid = getattr(os, "getuid", None)
    if getuid is not None and st.st_uid != getuid():
        return f"is owned by another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by other users (mode {stat.S_IMODE(st.st_mode):#o})"
    return None


def _path() -> Path | None:
    if os.environ.get("SSMC_CACHE", "1") == "0":
        return None
    return Path(os.environ.get("SSMC_CACHE_DIR") or Path.home() / ".cache" / "ssmc")


def _dir(create: bool = False) -> Path | None:
    """The cache directory if it may be used (None: off, missing, or not trusted)."""
    d = _path()
    if d is None:
        return None
    try:
        if create and not d.exists():
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = d.stat()
    except OSError:
        return None
    why = "is not a directory" if not stat.S_ISDIR(st.st_mode) else _unsafe(st)
    if why:
        _notice(f"ssmc: not using the compiled-module cache: {d} {why}, so its entries could be "
                f"someone else's code; compiling without it (fix the directory's owner or mode, "
                f"or set SSMC_CACHE_DIR to a private one)")
        return None
    return d


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


def _digest(k: str, entry: dict) -> str:
    """sha256 over the key and the entry's contents (all but the digest itself)."""
    body = {name: value for name, value in entry.items() if name != "sha256"}
    text = json.dumps({"key": k, "entry": body}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _valid(k: str, entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("source"), str)
            and isinstance(entry.get("backend"), str)
            and isinstance(entry.get("notices", []), list)
            and all(isinstance(m, str) for m in entry.get("notices", []))
            and entry.get("sha256") == _digest(k, entry))


def get(k: str) -> dict | None:
    """The entry stored under key `k`, or None when there is none that may be trusted."""
    d = _dir()
    if d is None:
        return None
    try:
        with open(d / f"{k}.json", "rb") as f:
            if _unsafe(os.fstat(f.fileno())):
                return None
            entry = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return entry if _valid(k, entry) else None


def put(k: str, entry: dict) -> None:
    d = _dir(create=True)
    if d is None:
        return
    entry = dict(entry)
    entry["sha256"] = _digest(k, entry)
    try:
        # Write then rename, so a reader never sees half an entry; mkstemp makes it 0600,
        # and the rename replaces a damaged or foreign entry.
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
            os.replace(tmp, d / f"{k}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass
