"""The long run of the differential tester: random specs against every backend.

    python -m ssmc.testing.fuzz --minutes 30                     # numpy and torch
    python -m ssmc.testing.fuzz --minutes 30 --backends numpy,torch,triton
    python -m ssmc.testing.fuzz --count 200 --seed 7 --out fuzz-findings

Every spec comes from `ssmc.testing.specgen` (drawn from a seed, so a run is
reproducible), goes through `ssmc.testing.harness.check_spec`, and every finding is
reduced (statements deleted, lengths and sizes shrunk while the same finding
remains) and written to `--out` as a `.ssm` file with the finding, the sizes and the
length in its header: ready to become a regression spec under `tests/`. Invalid
specs (mutations of valid ones) must give a `SpecError` with a line and a column, or
be accepted. The summary counts specs tried and findings per backend and check.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

from .harness import Finding, check_spec


def check_invalid(text: str) -> Finding | None:
    """A mutated spec: accepted, or a SpecError with a position; anything else is a finding."""
    import ssmc
    from ..errors import SpecError
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            ssmc.loads(text, backend="numpy", filename="<mutant>", strict=True)
    except SpecError as e:
        if not (isinstance(e.line, int) and e.line >= 1 and isinstance(e.column, int) and e.column >= 1):
            return Finding("unlocated", "compile", "invalid", f"SpecError without a position: {e.message[:200]}")
        return None
    except Exception as e:  # noqa: BLE001 - the point: nothing but SpecError may escape
        import traceback
        return Finding("crash", "compile", "invalid", f"{type(e).__name__}: {str(e)[:200]}",
                       traceback.format_exc(limit=-6))
    return None


def _statements(text: str) -> list[int]:
    """Indices of the lines that hold one statement inside the block (candidates to delete)."""
    lines = text.split("\n")
    out = []
    for i, ln in enumerate(lines):
        s = ln.strip()
        if not s or s.startswith("ssm ") or s == "}" or s.startswith("#"):
            continue
        out.append(i)
    return out


def signature(f: Finding) -> tuple:
    """What makes two findings the same failure: kind, backend, and the message's gist
    (a crash's exception and its last words; a mismatch's quantity)."""
    gist = f.message.split(":")[0]
    if f.kind in ("rejected", "unlocated"):
        # the error's own words, less the names in quotes (a reduced spec keeps the reason)
        gist = re.sub(r"'[^']*'", "'_'", f.message)
    tail = f.message.rsplit(":", 1)[-1][-40:] if f.kind == "crash" else ""
    return (f.kind, f.backend, gist, tail)


def reduce(text: str, sizes: dict, length: int, finding: Finding, backends, budget_s: float = 60.0):
    """Delete statements and shrink length/sizes while the same failure remains."""
    want = signature(finding)
    deadline = time.monotonic() + budget_s

    def still(t, s, L):
        if time.monotonic() > deadline:
            return False
        try:
            rep = check_spec(t, s, L, backends=backends)
        except Exception:  # noqa: BLE001 - the harness itself crashed: not the same finding
            return False
        return not rep.skipped and any(signature(f) == want for f in rep.findings)

    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        for i in reversed(_statements(text)):
            lines = text.split("\n")
            cand = "\n".join(lines[:i] + lines[i + 1:])
            if still(cand, sizes, length):
                text, changed = cand, True
        for L in (1, 2, 3):
            if L < length and still(text, sizes, L):
                length, changed = L, True
                break
        for d, v in list(sizes.items()):
            for w in (1, 2):
                if w < v and still(text, {**sizes, d: w}, length):
                    sizes, changed = {**sizes, d: w}, True
                    break
    return text, sizes, length


def _write(out: Path, n: int, finding: Finding, text: str, sizes: dict, length: int, seed) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    slug = "-".join(finding.key())
    path = out / f"{n:04d}-{slug}.ssm"
    bes = {"numpy": "numpy", "torch": "numpy,torch", "triton": "numpy,torch,triton"}.get(finding.backend, "numpy")
    head = [f"# finding: {finding}", f"# seed: {seed}", f"# sizes: {json.dumps(sizes)}", f"# length: {length}",
            f"# backends: {bes}"]
    path.write_text("\n".join(head) + "\n" + text + ("\n" if not text.endswith("\n") else ""))
    if finding.detail:
        path.with_suffix(".txt").write_text(finding.detail)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ssmc.testing.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=None, help="run for this long (default: --count specs)")
    ap.add_argument("--count", type=int, default=100, help="number of valid specs (without --minutes)")
    ap.add_argument("--seed", type=int, default=0, help="first seed; spec i is drawn from seed + i")
    ap.add_argument("--backends", default="numpy,torch", help="comma-separated: numpy,torch,triton")
    ap.add_argument("--invalid", type=float, default=0.5, help="mutated specs per valid spec")
    ap.add_argument("--out", default="fuzz-findings", help="folder for reduced reproducers")
    ap.add_argument("--no-reduce", action="store_true", help="write findings as drawn")
    args = ap.parse_args(argv)

    backends = tuple(b for b in args.backends.split(",") if b)
    if "triton" in backends:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from . import specgen

    out = Path(args.out)
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    tried = invalid_tried = skipped = written = compared = 0
    counts: collections.Counter = collections.Counter()
    unsupported: collections.Counter = collections.Counter()
    seen: set = set()
    i = 0
    mutants = specgen.invalid_specs_from_seed if hasattr(specgen, "invalid_specs_from_seed") else None
    t0 = time.monotonic()
    while (deadline is None and tried < args.count) or (deadline is not None and time.monotonic() < deadline):
        seed = args.seed + i
        i += 1
        (gs,) = specgen.example_specs(1, seed)
        rep = check_spec(gs.text, dict(gs.sizes), gs.length, backends=backends, seed=seed)
        tried += 1
        compared += rep.checks_run
        if rep.skipped:
            skipped += 1
        for u in rep.unsupported:
            unsupported[u.split(":")[0]] += 1
        for f in rep.findings:
            counts[f.key()] += 1
        for f in rep.findings:
            # one reproducer per kind of failure (one bug often fails every check)
            sig = signature(f)
            if sig in seen:
                continue
            seen.add(sig)
            text, sizes, length = gs.text, dict(gs.sizes), gs.length
            if not args.no_reduce:
                text, sizes, length = reduce(text, sizes, length, f, backends)
            written += 1
            p = _write(out, written, f, text, sizes, length, seed)
            print(f"finding {f} -> {p}", flush=True)
        if mutants is not None and args.invalid > 0 and (i * args.invalid) % 1 < args.invalid:
            for text, what in mutants(seed):
                invalid_tried += 1
                f = check_invalid(text)
                if f is not None:
                    counts[f.key()] += 1
                    sig = signature(f)
                    if sig not in seen:
                        seen.add(sig)
                        written += 1
                        p = _write(out, written, f, f"# mutation: {what}\n{text}", {}, 0, seed)
                        print(f"finding {f} -> {p}", flush=True)
        if tried % 25 == 0:
            print(f"... {tried} specs, {invalid_tried} mutants, {sum(counts.values())} findings, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)

    print(f"\n{tried} valid specs tried ({skipped} skipped as ill-conditioned draws), "
          f"{invalid_tried} mutated specs, {compared} comparisons, backends {', '.join(backends)}, "
          f"{time.monotonic() - t0:.0f} s")
    if unsupported:
        print("beyond a backend (it falls back to torch with a notice): "
              + ", ".join(f"{b} {n}" for b, n in sorted(unsupported.items())))
    per_backend: collections.Counter = collections.Counter()
    for (kind, be, check), n in sorted(counts.items()):
        per_backend[be] += n
        print(f"  {kind:10s} {be:9s} {check:14s} {n}")
    print("findings per backend: " + (", ".join(f"{b} {n}" for b, n in sorted(per_backend.items())) or "none"))
    if written:
        print(f"{written} reproducers in {out}/")
    return 1 if counts else 0


if __name__ == "__main__":
    sys.exit(main())
