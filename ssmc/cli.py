"""The `ssmc` command line: check, explain, compile, run.

Errors in a spec print as file:line:col with a caret and exit with status 1, never
with a traceback.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import SsmcError, printable

# SPEC is any path: read_source refuses what is not a regular file (a directory, a FIFO,
# /dev/zero) as a spec error, printed like every other one (exit status 1).
SPEC = click.argument("spec", type=click.Path())

BACKENDS = ("auto", "torch", "triton", "numpy")


def _fail(e: Exception) -> None:
    click.echo(printable(str(e), keep="\n"), err=True)
    sys.exit(1)


def _echo(text: str, **kwargs) -> None:
    """Print text that holds parts of the spec (a description, a file name) with what a
    terminal would act on (escape sequences, bidi overrides) escaped."""
    click.echo(printable(text, keep="\n"), **kwargs)


def run_deep(fn, *args):
    """fn(*args) on the compiler's deep stack (imported when needed: `ssmc --help` stays quick)."""
    from .compiler import run_deep as deep
    return deep(fn, *args)


def _notes(fn, *args, **kwargs):
    """Run fn, printing ssmc's backend notices as plain `note:` lines (not Python warnings)."""
    import warnings

    from .api import BackendNotice
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BackendNotice)
        result = fn(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, BackendNotice):
            _echo(f"note: {str(w.message).removeprefix('ssmc: ')}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return result


def _analyse(spec: str, dump_ir: str | None = None):
    from .compiler import analyse
    from .frontend.parser import read_source
    return analyse(read_source(spec), Path(dump_ir) if dump_ir else None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ssmc")
def main() -> None:
    """ssmc: compile declarative .ssm specs of state space models into PyTorch modules."""


@main.command()
@SPEC
@click.option("--dump-ir", type=click.Path(file_okay=False), default=None,
              help="Write the IR after every pass to DIR/<block>/NN-<pass>.ssmir.")
def check(spec: str, dump_ir: str | None) -> None:
    """Parse and analyse SPEC; print dims, parameters, LTI or selective, and the algorithm."""
    from .explain import summary
    try:
        compiled = _analyse(spec, dump_ir)
    except SsmcError as e:
        _fail(e)
    _echo(run_deep(lambda: "\n\n".join(summary(g) for g in compiled.graphs)))
    _echo(f"\nok: {len(compiled.graphs)} block{'s' if len(compiled.graphs) != 1 else ''} in {spec}")


@main.command()
@SPEC
def explain(spec: str) -> None:
    """Print the derived discrete-time equations and why the algorithm was chosen."""
    from .explain import explain as explain_graph
    try:
        compiled = _analyse(spec)
    except SsmcError as e:
        _fail(e)
    # On a deep stack, like the compiler: explain prints long chains of values recursively.
    _echo(run_deep(lambda: "\n\n".join(explain_graph(g) for g in compiled.graphs)))


@main.command()
@SPEC
@click.option("--backend", "-b", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the module here (default: standard output).")
@click.option("--strict", is_flag=True, help="Make an unavailable backend an error instead of a fallback.")
def compile(spec: str, backend: str, output: str | None, strict: bool) -> None:  # noqa: A001
    """Generate a Python module (importing only torch, numpy and ssmc.runtime) from SPEC."""
    from .api import compile_source, resolve_backend
    from .frontend.parser import read_source
    try:
        if backend == "triton":
            # Generating Triton kernels needs no GPU: the module is written here and runs on one.
            from .backends.triton_backend import available
            ok, why = available()
            if not ok:
                _echo(f"note: {why}: the Triton module is generated anyway, to run where there is a GPU "
                      f"(`ssmc doctor SPEC` compiles its kernels ahead of time for sm_80 and sm_90)", err=True)
            text = _notes(compile_source, read_source(spec), backend, strict, here=False)
        else:
            backend = _notes(resolve_backend, backend, strict=strict)
            text = _notes(compile_source, read_source(spec), backend, strict)
    except SsmcError as e:
        _fail(e)
    if output:
        Path(output).write_text(text)
        _echo(f"wrote {output} ({backend} backend)", err=True)
    else:
        click.echo(text, nl=False)


@main.command()
@SPEC
@click.option("--backend", "-b", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--batch", default=2, show_default=True, help="Batch size of the random input.")
@click.option("--length", default=256, show_default=True, help="Sequence length of the random input.")
@click.option("--seed", default=0, show_default=True)
def run(spec: str, backend: str, batch: int, length: int, seed: int) -> None:
    """Compile SPEC and run every block once on random input on the CPU."""
    import torch

    from .api import load, resolve_backend
    from .explain import summary
    try:
        compiled = _analyse(spec)
        backend = _notes(resolve_backend, backend)
        t0 = time.perf_counter()
        mod = load(spec, backend=backend)
        t_compile = time.perf_counter() - t0
    except SsmcError as e:
        _fail(e)
    _echo(f"compiled {spec} with the {backend} backend in {t_compile:.2f} s\n")
    gen = torch.Generator().manual_seed(seed)
    for g in compiled.graphs:
        _echo(run_deep(summary, g))
        cls = getattr(mod, g.meta["name"])
        layer = cls(seed=seed)
        d = layer.dims
        L = length
        sc = cls.SCAN
        if sc["order"] == "cross2d":
            L = d[sc["rows"]] * d[sc["cols"]]
        inputs = {}
        for i, (name, dims) in enumerate(cls.INPUTS):
            shape = (batch, L) + tuple(d[x] for x in dims)
            # A per-token scalar input is most often a time step: keep it positive.
            t = torch.rand(shape, generator=gen) + 0.5 if not dims and i else torch.randn(shape, generator=gen)
            if name in getattr(cls, "COMPLEX_INPUTS", ()):
                # `input NAME[...] complex`: complex values of the same size
                t = torch.complex(t, torch.randn(shape, generator=gen)) / 2 ** 0.5
            inputs[name] = t
        first, *rest = cls.INPUTS
        t0 = time.perf_counter()
        y = layer(inputs[first[0]], **{n: inputs[n] for n, _ in rest})
        dt = time.perf_counter() - t0
        shape = ", ".join(str(s) for s in inputs[first[0]].shape)
        click.echo(f"  ran on input {first[0]} of shape ({shape}): output {cls.OUTPUT[0]} of shape "
                   f"{tuple(y.shape)}, {y.dtype}, in {dt * 1000:.1f} ms; finite: {bool(torch.isfinite(y).all())}\n")


@main.command()
@click.argument("specs", nargs=-1, type=click.Path())
@click.option("--arch", default=None, help="Compute capabilities to compile for, comma-separated "
              "(default: this GPU's, or 80,90 without one).")
@click.option("--all-configs", is_flag=True, help="Every autotune candidate, not only the default configurations.")
def doctor(specs: tuple[str, ...], arch: str | None, all_configs: bool) -> None:
    """Versions, devices, the Triton target and the caches; per SPEC, its Triton kernels'
    resource use (registers, spills, shared memory), compiled ahead of time (no GPU needed)."""
    import os
    import platform

    import torch
    _echo(f"ssmc {__version__}, Python {platform.python_version()}, torch {torch.__version__}")
    try:
        import triton
        _echo(f"triton {triton.__version__}")
    except ImportError:
        triton = None
        _echo("triton: not installed (pip install 'ssmc[triton]')")
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            gpus.append(10 * major + minor)
            _echo(f"cuda:{i}: {torch.cuda.get_device_name(i)}, sm_{major}{minor}")
    else:
        _echo("devices: no CUDA GPU (torch.cuda.is_available() is False)")
    if os.environ.get("TRITON_INTERPRET") == "1":
        _echo("TRITON_INTERPRET=1: Triton kernels run on Triton's CPU interpreter")
    archs = tuple(int(a) for a in arch.split(",")) if arch else (tuple(sorted(set(gpus))) or (80, 90))
    _echo("triton target: " + (", ".join(f"cuda sm_{a}" for a in sorted(set(gpus))) if gpus else
                               "none here; ahead-of-time compiles target " + ", ".join(f"sm_{a}" for a in archs)))
    from .cache import _path
    where = _path()
    _echo(f"ssmc cache: {where if where is not None else 'off (SSMC_CACHE=0)'} (SSMC_CACHE_DIR)")
    if triton is not None:
        from triton import knobs
        _echo(f"triton cache: {knobs.cache.dir} (TRITON_CACHE_DIR)")
    if not specs or triton is None:
        return
    from . import aot
    bad = []
    for spec in specs:
        try:
            results = _notes(aot.check_spec, spec, Path(spec).name, archs)
        except SsmcError as e:
            _fail(e)
        shown = [r for r in results if all_configs or r.default]
        _echo(f"\n{spec}: {len(results)} kernel configurations compiled"
              + ("" if all_configs else f", the {len(shown)} default ones shown (--all-configs for every one)"))
        _echo(aot.table(shown))
        bad += aot.failures(results)
    for line in bad:
        _echo(f"problem: {line}")


if __name__ == "__main__":  # pragma: no cover
    main()
