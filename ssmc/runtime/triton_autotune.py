"""Block sizes for generated Triton kernels, tuned once per shape and device and remembered.

On a GPU the first launch of a kernel at a new shape times each candidate BLOCK_P
(powers of two up to what the register budget allows) and keeps the fastest, in
memory and in $SSMC_CACHE_DIR/autotune.json (default ~/.cache/ssmc), keyed on the
kernel's source, the shape and the device, so later processes skip the tuning. Under
Triton's CPU interpreter timings mean nothing: the largest block is used, unless
SSMC_AUTOTUNE=1 forces tuning (for tests). SSMC_AUTOTUNE=0 turns tuning off.

Before timing, on a GPU, the candidates that cannot launch on the device (shared memory,
registers or threads past its limits) or that spill registers are pruned (`_prune`), by
compiling each (no launch) and reading the compiled kernel's n_regs, n_spills and shared
memory: a spilling configuration is never timed nor chosen while one that does not spill
remains. Under the ahead-of-time check (`ssmc.aot`) every candidate is compiled for the
target it names and the default is returned.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

_memory: dict[str, int] = {}


def clear_memory() -> None:
    """Forget the choices made in this process (the ahead-of-time check starts afresh per target)."""
    _memory.clear()


def _file() -> Path:
    return Path(os.environ.get("SSMC_CACHE_DIR") or Path.home() / ".cache" / "ssmc") / "autotune.json"


def _key(kernel, shape, device: str) -> str:
    src = getattr(getattr(kernel, "fn", kernel), "__name__", "kernel")
    text = getattr(kernel, "src", None) or src
    digest = hashlib.sha256(str(text).encode()).hexdigest()[:16]
    return f"{src}:{digest}:{shape}:{device}"


def _load() -> dict:
    try:
        data = json.loads(_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(key: str, value: int) -> None:
    try:
        data = _load()
        data[key] = value
        path = _file()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def choose(kernel, shape, args, largest: int, run, candidates=None):
    """The block configuration to launch with: remembered, tuned now, or the default.

    Without `candidates` a configuration is a BLOCK_P (powers of two up to `largest`, the
    default); with them, any of those (ints or tuples; the first is the default)."""
    mode = os.environ.get("SSMC_AUTOTUNE")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if candidates is None:
        candidates = [1 << k for k in range(largest.bit_length()) if (1 << k) <= largest][-4:]
        default = largest
    else:
        candidates = list(candidates)
        default = candidates[0]
    from .. import aot
    if aot.capturing():
        # The ahead-of-time check: every candidate compiled for its target, none timed.
        for config in candidates:
            with aot.candidate(config, config == default):
                run(config)
        return default
    if mode == "0" or (interpreted and mode != "1"):
        return default
    device = next((str(t.device) for t in args if isinstance(t, torch.Tensor)), "cpu")
    if device.startswith("cuda"):
        device = torch.cuda.get_device_name(torch.device(device))
    key = _key(kernel, shape, device)
    if key in _memory:
        return _memory[key]
    stored = _load().get(key)
    # JSON keeps tuples as lists.
    stored = tuple(stored) if isinstance(stored, list) else stored
    if stored in candidates:
        _memory[key] = stored
        return stored
    if device != "cpu" and not interpreted:
        candidates = _prune(candidates, run)
        default = default if default in candidates else candidates[0]
    print(f"ssmc: tuning {key.split(':')[0]} for shape {shape} on {device} "
          f"({len(candidates)} block sizes)...", file=sys.stderr, flush=True)
    best, best_t = default, float("inf")
    for config in candidates:
        run(config)  # compile and warm up
        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            run(config)
        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
        label = ", ".join(f"{k}={v}" for k, v in zip(("BLOCK_P", "BLOCK_T"), config)) \
            if isinstance(config, tuple) else f"BLOCK_P={config}"
        print(f"ssmc:   {label}: {elapsed / 3 * 1e3:.3f} ms", file=sys.stderr, flush=True)
        if elapsed < best_t:
            best, best_t = config, elapsed
    _memory[key] = best
    _save(key, best)
    return best


def _prune(candidates: list, run) -> list:
    """The candidates that launch on this GPU without spilling, decided from their compiled
    kernels (n_regs, n_spills, shared memory; `ssmc.aot.fits`); if none does, the ones
    spilling least (something must run)."""
    from .. import aot
    scored = []
    for config in candidates:
        try:
            kernels = aot.compiled(run, config)
        except Exception:  # a candidate that does not even compile is dropped
            continue
        ok = all(aot.fits(*k) for k in kernels)
        scored.append((config, ok, sum(k[1] for k in kernels)))
    kept = [c for c, ok, _ in scored if ok]
    if kept:
        return kept
    if not scored:
        return list(candidates)
    least = min(s for _, _, s in scored)
    return [c for c, _, s in scored if s == least]
