#!/usr/bin/env bash
# Downloads, on a machine that reaches PyPI, what benchmarks/bench_triton.py needs on a GPU
# machine that has torch and triton (and einops, transformers, numpy, sympy, networkx, click)
# but no network and no lark. Everything is a small pure-Python file; nothing here installs
# anything, and no CUDA torch is fetched.
#
#   bash benchmarks/peers.sh        # -> benchmarks/.wheels/ (git-ignored), then prints the install line
#
# Versions are pinned to the ones whose APIs bench_triton.py was written against:
# - lark: ssmc's parser (the GPU machine lacks it).
# - fla-core: the `fla.ops` kernels (chunk_simple_gla). Since 0.5 `flash-linear-attention`
#   holds only fla.layers / fla.models and needs transformers; the benchmark imports fla.ops
#   alone, which needs nothing beyond torch, triton and einops. Both are fetched; the install
#   line below installs fla-core only.
# - accelerated-scan: its Triton first-order scan (module accelerated_scan.scalar in 0.3.x).
# - einops: fla-core's one requirement (the GPU image has it; fetched in case it does not).
# - mamba-ssm: PyPI has only its source; its CUDA extension (selective_scan_fn) takes a long
#   nvcc build for nine GPU architectures, so the install line skips it
#   (MAMBA_SKIP_CUDA_BUILD=TRUE): mamba_chunk_scan_combined, which is Triton, then works
#   (bench_triton.py loads it around the package's __init__) and selective_scan_fn's rows say
#   "skipped". Building it there (MAMBA_FORCE_BUILD=TRUE, no skip) is possible but untested.
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=benchmarks/.wheels
PY=${PYTHON:-python3}
mkdir -p "$DEST"

"$PY" -m pip download --no-deps --only-binary=:all: -d "$DEST" \
    lark==1.3.1 einops==0.8.2 fla-core==0.6.0 flash-linear-attention==0.6.0 accelerated-scan==0.3.1

# An sdist: pip prepares its metadata by running its setup.py, which imports torch (the local
# one, hence --no-build-isolation: an isolated build would download torch) and, unless told to
# skip, looks for nvcc.
MAMBA_SKIP_CUDA_BUILD=TRUE "$PY" -m pip download --no-deps --no-build-isolation --no-binary=mamba-ssm \
    -d "$DEST" mamba-ssm==2.3.2.post1 \
    || echo "peers.sh: mamba-ssm not downloaded (optional: its rows will say skipped)" >&2

echo
echo "Downloaded into $DEST:"
ls -1 "$DEST"
echo
echo "On the GPU machine, from the repository root (one line):"
# --no-deps with the files named: a resolver run with --no-index would re-check the installed
# torch's own requirements and can fail on one of them (it did here, on setuptools), although
# everything these packages need at import (torch, triton, einops) is there.
echo "python3 -m pip install --no-index --no-deps $DEST/{lark,einops,fla_core,accelerated_scan}-*.whl" \
     "&& { MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE python3 -m pip install --no-index --no-deps" \
     "--no-build-isolation $DEST/mamba_ssm-2.3.2.post1.tar.gz || true; }" \
     "&& python3 -m pip install --no-index --no-deps --no-build-isolation -e . && python3 benchmarks/bench_triton.py --out gpu.md"
# (--no-build-isolation: pip would otherwise fetch setuptools to build ssmc and mamba-ssm; the
# GPU image has setuptools and wheel. flash-linear-attention's wheel is left out: fla.ops is in
# fla-core, and fla's __init__ would import fla.models against whatever transformers is there.
# If site-packages cannot be written, install with --target /tmp/site, ssmc without -e, and
# export PYTHONPATH=/tmp/site.)
