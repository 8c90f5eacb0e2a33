"""Ahead-of-time compile check of the Triton kernels, on a machine without a GPU.

Triton compiles for a named target without a GPU or a driver: this module runs a spec's
Triton module on CPU tensors with a stand-in driver (`_Driver`) that names the target
(sm_80 or sm_90) and turns every kernel launch into a compile (`warmup`), so the kernels
are compiled exactly as a launch on that GPU would compile them: the same signature,
the same specialization, every block-size candidate the autotuner would try
(`triton_autotune.choose` hands them over while a capture runs). Per compiled
configuration it reads, from `ptxas -v` (the wheel's own ptxas) and the PTX:

    registers per thread, spill stores (bytes), stack frame, shared memory (Triton's
    static allocation, what a launch asks for), tensor-core instructions (mma / wgmma),
    float64 instructions, and 32-bit products in address arithmetic (see `_narrow_offsets`)

and whether the configuration can launch on the architecture (`LIMITS`). The command

    python -m ssmc.aot [SPEC ...] [--examples] [--generated N] [--arch 80,90] [--table]

sweeps (default: the examples and 8 generated specs) and exits 1 on a compile error, a
default configuration that cannot launch or spills, or a kernel with 32-bit offset
products. `ssmc doctor SPEC` prints the same table for one spec.

The launch-time pruning on a GPU (`prune`, called by the autotuner) uses the same
reading, from the compiled kernel's metadata (n_regs, n_spills, shared).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

#: What a launch may ask for, per architecture: shared memory per block (the opt-in
#: maximum: sm_80 163 KB, sm_90 227 KB), registers per thread, threads per block, and
#: registers per block (the register file).
LIMITS = {
    80: {"shared": 163 * 1024, "regs": 255, "threads": 1024, "regfile": 65536},
    90: {"shared": 227 * 1024, "regs": 255, "threads": 1024, "regfile": 65536},
}

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Result:
    """One compiled configuration of one kernel."""
    spec: str
    kernel: str
    family: str
    arch: int
    config: str
    default: bool
    dtype: str = ""
    error: str = ""
    regs: int = 0
    spills: int = 0  # bytes of spill stores
    stack: int = 0
    shared: int = 0
    threads: int = 0
    mma: int = 0
    f64: int = 0
    narrow: int = 0  # address offsets with a 32-bit product of two run-time values

    @property
    def unlaunchable(self) -> str:
        """Why this configuration cannot launch on its architecture ('' when it can)."""
        if self.error:
            return ""
        lim = LIMITS[self.arch]
        why = []
        if self.shared > lim["shared"]:
            why.append(f"shared {self.shared} B > {lim['shared']} B")
        if self.regs > lim["regs"]:
            why.append(f"{self.regs} registers > {lim['regs']}")
        if self.threads > lim["threads"]:
            why.append(f"{self.threads} threads > {lim['threads']}")
        if self.regs * self.threads > lim["regfile"]:
            why.append(f"{self.regs} x {self.threads} registers > {lim['regfile']}")
        return "; ".join(why)


def family(name: str) -> str:
    """The kernel family of a kernel's name: scan (generated per spec), ssd, lti; `_bwd`
    for the backward kernels."""
    if name.startswith("_ssd_"):
        return "ssd_bwd" if name == "_ssd_bwd" else "ssd"
    if name.startswith("_vandermonde"):
        return "lti"
    return "scan_bwd" if name.endswith("_bwd") else "scan"


# ---- resource use from ptxas and the compiled text ----------------------------------

_PTXAS = {
    "regs": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spills": re.compile(r"(\d+) bytes spill stores"),
}


def _parse_ptxas(log: str, name: str) -> dict:
    """Registers, stack frame and spill stores of entry `name` from `ptxas -v` output."""
    part = log
    at = log.find(f"'{name}'")
    if at >= 0:
        part = log[at:]
    out = {}
    for key, rx in _PTXAS.items():
        m = rx.search(part)
        out[key] = int(m.group(1)) if m else 0
    return out


def _ptxas(ptx: str, arch: int) -> str:
    """`ptxas -v` of a kernel's PTX with the wheel's ptxas (for kernels Triton loaded from
    its cache, whose compile printed nothing)."""
    from triton.backends.nvidia.compiler import get_ptxas
    m = re.search(r"\.target\s+(sm_\w+)", ptx)
    gpu = m.group(1) if m else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        r = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}", str(src),
                            "-o", str(Path(d) / "k.o")], capture_output=True, text=True)
    return r.stdout + r.stderr


_F64 = re.compile(r"^\s*(?:@%p\d+\s+)?[a-z]+(?:\.[a-z0-9]+)*\.f64\b", re.M)
_MMA = re.compile(r"^\s*(?:@%p\d+\s+)?(?:wgmma\.\S+|mma\.sync\S*)", re.M)


def _count_f64(ptx: str) -> int:
    """float64 arithmetic instructions in the PTX (conversions to/from f64 included)."""
    return len(_F64.findall(ptx))


def _count_mma(ptx: str) -> int:
    return len(_MMA.findall(ptx))


_DEF = re.compile(r"^\s*(%[\w#:]+?)(?::\d+)?\s*=\s*\"?([\w.]+)\"?(.*)$")
_VAL = re.compile(r"%[\w#]+")


def _narrow_offsets(ttir: str) -> int:
    """How many pointer offsets (tt.addptr) in the kernel's Triton IR are computed with a
    32-bit product of two run-time values (an `arith.muli` on i32 neither of whose
    operands is a constant), directly or through further integer arithmetic.

    That is the robust sign of 32-bit address arithmetic: an index times a stride (or
    two sizes) that passes 2^31 wraps in 32 bits before any widening, whatever the PTX
    does afterwards (mul.wide of a wrapped value is still wrapped). Products with a
    constant (a chunk index times BLOCK_T, a program id times BLOCK_P) stay below the
    sizes they index and are allowed; so are sums of bounded i32 terms. A kernel with 0
    computes every product of run-time values that reaches an address in 64 bits."""
    defs: dict[str, tuple[str, list[str], str]] = {}
    uses: list[str] = []
    for line in ttir.splitlines():
        line = line.split(" loc(")[0]
        m = _DEF.match(line)
        if not m:
            continue
        name, op, rest = m.group(1), m.group(2), m.group(3)
        head, _, ty = rest.rpartition(":")
        operands = _VAL.findall(head)
        defs[name] = (op, operands, ty)
        if op == "tt.addptr" and len(operands) >= 2:
            uses.append(operands[1])
    const: dict[str, bool] = {}

    def is_const(v: str) -> bool:
        if v in const:
            return const[v]
        d = defs.get(v)
        const[v] = False
        r = bool(d) and (d[0] == "arith.constant" or (
            d[0] in ("tt.splat", "tt.broadcast", "tt.expand_dims", "arith.extsi", "arith.extui")
            and all(is_const(o) for o in d[1])))
        const[v] = r
        return r

    narrow: dict[str, bool] = {}
    stop = ("tt.load", "tt.addptr", "tt.atomic_rmw", "tt.get_program_id", "arith.constant")

    def is_narrow(v: str) -> bool:
        if v in narrow:
            return narrow[v]
        narrow[v] = False  # cycles (loop-carried values) end here
        d = defs.get(v)
        r = False
        if d and d[0] not in stop:
            op, operands, ty = d
            if op == "arith.muli" and re.search(r"\bi32\b", ty) and not any(is_const(o) for o in operands):
                r = True
            else:
                r = any(is_narrow(o) for o in operands)
        narrow[v] = r
        return r

    return sum(1 for v in uses if is_narrow(v))


# ---- capture: launches become compiles for a named target ----------------------------

class _Driver:
    """What Triton asks the active driver for when it compiles a launch: a device (the
    architecture's number, so that each target has its own kernel cache), a stream and
    the target. Nothing launches (`_capture` makes every launch a warmup)."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", self.arch, 32)

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")

    def is_active(self):
        return True


_state = threading.local()


def capturing() -> bool:
    return getattr(_state, "records", None) is not None


def _label():
    return getattr(_state, "label", None)


@contextlib.contextmanager
def candidate(config, is_default: bool):
    """Launches inside are the autotuner's candidate `config` (the default one or not)."""
    old = getattr(_state, "label", None)
    _state.label = (config, is_default)
    try:
        yield
    finally:
        _state.label = old


_CONFIG_KEYS = ("BLOCK_T", "BLOCK_P", "BLOCK_N", "BLOCK_K", "BLOCK_J", "BLOCK_S", "CK", "DOT")


def _record(fn, args, kwargs, kernel, error, log):
    import torch
    name = fn.__name__
    arch = _state.arch
    names = [p.name for p in fn.params]
    bound = dict(zip(names, args))
    bound.update(kwargs)
    warps = kwargs.get("num_warps", 4)
    stages = kwargs.get("num_stages", 3)
    parts = [f"{k}={bound[k]}" for k in _CONFIG_KEYS if k in bound]
    if kernel is not None:
        warps, stages = kernel.metadata.num_warps, kernel.metadata.num_stages
    parts += [f"w={warps}", f"s={stages}"]
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in args if isinstance(t, torch.Tensor)
                     and t.is_floating_point()})
    label = _label()
    r = Result(spec=_state.spec, kernel=name, family=family(name), arch=arch, config=",".join(parts),
               default=label is None or bool(label[1]), dtype="/".join(dtypes), threads=32 * warps)
    if error is not None:
        r.error = error
    else:
        ptx = kernel.asm.get("ptx", "")
        if isinstance(ptx, bytes):
            ptx = ptx.decode()
        info = _parse_ptxas(log, name) if f"'{name}'" in log else _parse_ptxas(_ptxas(ptx, arch), name)
        r.regs, r.spills, r.stack = info["regs"], info["spills"], info["stack"]
        r.shared = int(kernel.metadata.shared)
        r.mma = _count_mma(ptx)
        r.f64 = _count_f64(ptx)
        ttir = kernel.asm.get("ttir", "")
        r.narrow = _narrow_offsets(ttir if isinstance(ttir, str) else ttir.decode())
    _state.records.append(r)


_installed = False


def _install() -> None:
    """Wrap Triton's launch once: inside `_capture` or `compiled` (this thread only) a
    launch compiles and returns the kernel without launching it; elsewhere it is untouched."""
    global _installed
    if _installed:
        return
    from triton.runtime.jit import JITFunction
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        probe = getattr(_state, "probe", None)
        if probe is not None:
            kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
            probe.append(kernel)
            return kernel
        if not capturing():
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        buf = io.StringIO()
        kernel, error = None, None
        try:
            with contextlib.redirect_stdout(buf):
                kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as e:  # a compile error is a result of the check, not a crash
            text = str(e).strip()
            error = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]
        _record(self, args, kwargs, kernel, error, buf.getvalue())
        return kernel

    run.__wrapped__ = original
    JITFunction.run = run
    _installed = True


def compiled(run, config) -> list[tuple[int, int, int, int, int]]:
    """(n_regs, n_spills, shared, num_warps, arch) of every kernel `run(config)` would launch,
    compiled for the current GPU and not launched (the autotuner's pruning)."""
    import torch
    _install()
    _state.probe = []
    try:
        run(config)
        kernels = list(_state.probe)
    finally:
        _state.probe = None
    major, minor = torch.cuda.get_device_capability()
    out = []
    for k in kernels:
        k._init_handles()
        out.append((int(k.n_regs), int(k.n_spills), int(k.metadata.shared), int(k.metadata.num_warps),
                    10 * major + minor))
    return out


@contextlib.contextmanager
def _capture(arch: int, spec: str, records: list):
    """Within: Triton compiles every launch for sm_<arch> and launches nothing; each compile
    is appended to `records` (a Result)."""
    from triton import knobs
    from triton.runtime.driver import driver
    _install()
    saved_log = knobs.nvidia.dump_ptxas_log
    _state.records, _state.arch, _state.spec, _state.label = records, arch, spec, None
    knobs.nvidia.dump_ptxas_log = True
    driver.set_active(_Driver(arch))
    try:
        yield
    finally:
        knobs.nvidia.dump_ptxas_log = saved_log
        driver._active = None
        _state.records = None


# ---- driving a spec's kernels --------------------------------------------------------

def _is_file(spec) -> bool:
    """Whether `spec` names a file (rather than being a spec's text)."""
    if isinstance(spec, Path):
        return True
    return isinstance(spec, str) and "\n" not in spec and len(spec) < 4096 and Path(spec).is_file()


def _load_triton(path_or_text, name: str):
    """The spec's Triton module, generated whether or not this machine has a GPU."""
    from .api import _generate, _module_from
    from .compiler import run_deep
    from .frontend.parser import Source, read_source
    source = read_source(path_or_text) if _is_file(path_or_text) else Source(str(path_or_text), name)
    text, used = run_deep(_generate, source, "triton", True)
    return _module_from(text, source, used)


def _inputs(cls, layer, batch: int, length: int, dtype, gen):
    import torch
    d = layer.dims
    sc = cls.SCAN
    if sc.get("order") == "cross2d":
        length = d[sc["rows"]] * d[sc["cols"]]
    inputs = {}
    for i, (name, dims) in enumerate(cls.INPUTS):
        shape = (batch, length) + tuple(d[x] for x in dims)
        t = torch.rand(shape, generator=gen) + 0.5 if not dims and i else torch.randn(shape, generator=gen)
        inputs[name] = t.to(dtype)
    return inputs


def _exercise(mod, batch: int, length: int) -> list[str]:
    """Run every block of `mod` forward (float32 and bfloat16 inputs), backward and step,
    so that every kernel it has is launched (under `_capture`: compiled). Returns the
    problems met on the torch side (they are reported, not raised)."""
    import warnings

    import torch
    problems = []
    gen = torch.Generator().manual_seed(0)
    for cls in [v for v in vars(mod).values() if isinstance(v, type) and hasattr(v, "INPUTS")
                and getattr(v, "BACKEND", "") == "triton"]:
        layer = cls(seed=0)
        # Without state (the LTI convolution where the compiler chose it), with the leaving
        # state (the scan kernel), each with and without gradients (the backward kernels).
        for dtype in (torch.float32, torch.bfloat16):
            inputs = _inputs(cls, layer, batch, length, dtype, gen)
            (first, _), *rest = cls.INPUTS
            kw = {n: inputs[n] for n, _ in rest}
            for grad in (False, True):
                for with_state in (False, True):
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            with torch.set_grad_enabled(grad):
                                u = inputs[first].clone().requires_grad_(grad)
                                y = layer(u, **kw, **({"return_state": True} if with_state else {}))
                                if grad:
                                    (y[0] if with_state else y).float().sum().backward()
                    except Exception as e:  # never-launched outputs (garbage) can upset the torch side
                        problems.append(f"{cls.__name__} {dtype} grad={grad} state={with_state}: "
                                        f"{type(e).__name__}: {e}"[:200])
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inputs = _inputs(cls, layer, batch, 1, torch.float32, gen)
                (first, _), *rest = cls.INPUTS
                state = layer.init_state(batch) if hasattr(layer, "init_state") else None
                if state is not None:
                    layer.step(inputs[first][:, 0], state, **{n: inputs[n][:, 0] for n, _ in rest})
        except Exception as e:
            problems.append(f"{cls.__name__} step: {type(e).__name__}: {e}"[:200])
    return problems


def check_spec(spec, name: str | None = None, archs=(80, 90), batch: int = 2, length: int = 80) -> list[Result]:
    """Compile every kernel of one spec (a path or spec text) at every configuration a launch
    would compile, for each architecture; the results, one per configuration."""
    from .runtime import triton_autotune
    name = name or (Path(spec).name if _is_file(spec) else "<spec>")
    os.environ.pop("TRITON_INTERPRET", None)
    mod = _load_triton(spec, name)
    results: list[Result] = []
    for arch in archs:
        recs: list[Result] = []
        triton_autotune.clear_memory()
        with _capture(arch, name, recs):
            _exercise(mod, batch, length)
        results += _dedupe(recs)
    return results


def _dedupe(recs: list[Result]) -> list[Result]:
    seen: dict[tuple, Result] = {}
    for r in recs:
        key = (r.kernel, r.config, r.dtype)
        if key in seen:
            seen[key].default = seen[key].default or r.default
        else:
            seen[key] = r
    return list(seen.values())


# ---- pruning on a GPU ----------------------------------------------------------------

def fits(n_regs: int, n_spills: int, shared: int, num_warps: int, arch: int) -> bool:
    """Whether a compiled configuration launches on sm_<arch> and does not spill."""
    lim = LIMITS.get(arch, LIMITS[80])
    return (n_spills == 0 and shared <= lim["shared"] and n_regs <= lim["regs"]
            and 32 * num_warps <= lim["threads"] and n_regs * 32 * num_warps <= lim["regfile"])


# ---- reporting -----------------------------------------------------------------------

def table(results: list[Result]) -> str:
    head = f"{'spec':24} {'kernel':28} {'sm':>3} {'config':54} {'dflt':4} {'dtype':14} " \
           f"{'regs':>4} {'spill B':>8} {'stack':>6} {'smem':>7} {'mma':>4} {'f64':>5} {'i32*':>4}  note"
    lines = [head, "-" * len(head)]
    for r in results:
        note = r.error or r.unlaunchable
        lines.append(f"{r.spec[:24]:24} {r.kernel[:28]:28} {r.arch:>3} {r.config[:54]:54} "
                     f"{'*' if r.default else '':4} {r.dtype[:14]:14} {r.regs:>4} {r.spills:>8} {r.stack:>6} "
                     f"{r.shared:>7} {r.mma:>4} {r.f64:>5} {r.narrow:>4}  {note}")
    return "\n".join(lines)


def summary(results: list[Result]) -> str:
    """Per kernel family: configurations, compile failures, unlaunchable, spilling,
    defaults spilling, with float64 instructions, with 32-bit offset products."""
    fams = sorted({r.family for r in results})
    head = f"{'family':9} {'configs':>7} {'failed':>6} {'unlaunchable':>12} {'spilling':>8} " \
           f"{'default spilling':>16} {'with f64':>8} {'i32 offsets':>11}"
    lines = [head]
    for f in fams + ["all"]:
        rs = [r for r in results if f == "all" or r.family == f]
        lines.append(f"{f:9} {len(rs):>7} {sum(bool(r.error) for r in rs):>6} "
                     f"{sum(bool(r.unlaunchable) for r in rs):>12} {sum(r.spills > 0 for r in rs):>8} "
                     f"{sum(r.spills > 0 and r.default for r in rs):>16} {sum(r.f64 > 0 for r in rs):>8} "
                     f"{sum(r.narrow > 0 for r in rs):>11}")
    return "\n".join(lines)


def failures(results: list[Result]) -> list[str]:
    """What fails the check: compile errors, unlaunchable defaults, spilling defaults,
    32-bit offset products."""
    out = []
    for r in results:
        where = f"{r.spec} {r.kernel} sm_{r.arch} {r.config}"
        if r.error:
            out.append(f"{where}: compile error: {r.error}")
        elif r.default and r.unlaunchable:
            out.append(f"{where}: the default configuration cannot launch: {r.unlaunchable}")
        elif r.default and r.spills:
            out.append(f"{where}: the default configuration spills {r.spills} bytes")
        if r.narrow:
            out.append(f"{where}: {r.narrow} address offsets with a 32-bit product")
    return out


def examples() -> list[Path]:
    return sorted((ROOT / "examples").glob("*.ssm"))


def generated(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(name, text) of n generated specs the Triton backend generates kernels for."""
    from .backends.triton_backend import supports
    from .compiler import analyse, run_deep
    from .frontend.parser import Source
    from .testing.specgen import example_specs
    out = []
    for i, s in enumerate(example_specs(n, seed)):
        text = getattr(s, "text", s)
        try:
            ok, _ = run_deep(supports, analyse(Source(text, f"gen{seed + i}.ssm")))
        except Exception:
            ok = False
        if ok:
            out.append((f"gen{seed + i}.ssm", text))
    return out


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m ssmc.aot", description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="*", help="spec files (default: the examples and generated specs)")
    ap.add_argument("--generated", type=int, default=None, help="generated specs to add (default 8 without SPECs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated (default 80,90)")
    ap.add_argument("--table", action="store_true", help="print every configuration, not only the summary")
    ap.add_argument("--no-fail", action="store_true", help="exit 0 whatever the check finds")
    ap.add_argument("--json", default=None, help="also write every result to this JSON file")
    ap.add_argument("--from-json", default=None, help="summarize the results a --json run wrote; compile nothing")
    a = ap.parse_args(argv)
    if a.from_json:
        import json
        fields = {f.name for f in dataclasses.fields(Result)}
        stored = [Result(**{k: v for k, v in d.items() if k in fields}) for d in json.loads(Path(a.from_json).read_text())]
        print(table(stored) if a.table else summary(stored))
        return 0
    archs = tuple(int(x) for x in a.arch.split(","))
    work = [(Path(p).name, Path(p)) for p in a.specs]
    if not work:
        work = [(p.name, p) for p in examples()]
        if a.generated is None:
            a.generated = 8
    if a.generated:
        work += generated(a.generated, a.seed)
    results = []
    for name, spec in work:
        rs = check_spec(spec, name, archs)
        print(f"{name}: {len(rs)} configurations", file=sys.stderr, flush=True)
        results += rs
        if a.json:  # after every spec: a long sweep that is stopped keeps what it measured
            import json
            Path(a.json).write_text(json.dumps([dict(dataclasses.asdict(r), unlaunchable=r.unlaunchable)
                                                for r in results], indent=1))
    if a.table:
        print(table(results))
        print()
    print(summary(results))
    bad = failures(results)
    for line in bad:
        print("FAIL", line)
    return 0 if a.no_fail or not bad else 1


if __name__ == "__main__":
    # Through the imported module: the autotuner asks `ssmc.aot` (not `__main__`) whether a capture runs.
    from ssmc import aot as _aot
    sys.exit(_aot.main())
