"""Parameter initializers of the `.ssm` language (spec-language.md, section 5).

Every function here is pure and returns a fresh float64 or complex128 numpy
array. The generated modules cast them to their own dtype.

* Deterministic families take one int ``N``: the HiPPO matrices and their input
  vectors, and the diagonal S4D / DSS / S5 initializations.
* Random draws take a ``shape`` tuple, their scalar arguments and a CPU
  ``torch.Generator``. They draw in float64 with torch and convert with
  ``.numpy()``, so a seed fixes the values. The order of the draws, documented
  for each function, is part of the contract.
* ``linear_*`` and ``conv_*`` copy the default initialization of
  ``torch.nn.Linear`` and of a depthwise ``torch.nn.Conv1d``.

Bad arguments raise ``ValueError`` with a one-line message that starts with
the function's name.

References
----------
[HiPPO]  Gu, Dao, Ermon, Rudra, Re. "HiPPO: Recurrent Memory with Optimal
         Polynomial Projections", NeurIPS 2020.
[HTTYH]  Gu, Johnson, Timalsina, Rudra, Re. "How to Train Your HiPPO: State
         Space Models with Generalized Orthogonal Basis Projections", 2022.
[S4]     Gu, Goel, Re. "Efficiently Modeling Long Sequences with Structured
         State Spaces", ICLR 2022.
[S4D]    Gu, Gupta, Goel, Re. "On the Parameterization and Initialization of
         Diagonal State Space Models", NeurIPS 2022.
[DSS]    Gupta, Gu, Berant. "Diagonal State Spaces are as Effective as
         Structured State Spaces", NeurIPS 2022.
[S5]     Smith, Warrington, Linderman. "Simplified State Space Layers for
         Sequence Modeling", ICLR 2023.
[LRU]    Orvieto et al. "Resurrecting Recurrent Neural Networks for Long
         Sequences", ICML 2023.
[code]   state-spaces/s4, ``src/models/hippo/hippo.py``: ``transition()``
         and ``nplr()``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import numpy as np
import torch

__all__ = [
    "hippo_legs", "hippo_legs_B", "hippo_legt", "hippo_legt_B",
    "hippo_lagt", "hippo_lagt_B", "hippo_fout", "hippo_fout_B",
    "hippo_legs_diag", "s4d_lin", "s4d_inv", "s4d_real",
    "normal", "uniform", "log_uniform", "lru_ring", "zeros", "ones",
    "linear_weight", "linear_bias", "conv_weight", "conv_bias",
    "FAMILIES", "FAMILY_KINDS", "RANDOM", "RANDOM_ARITY",
]


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------

def _check_N(fn: str, N) -> int:
    # bool is an int subclass, but hippo_legs(True) is surely a mistake.
    if isinstance(N, bool) or not isinstance(N, numbers.Integral):
        raise ValueError(f"{fn}: N must be an int, got {N!r}")
    if N < 1:
        raise ValueError(f"{fn}: N must be >= 1, got {N}")
    return int(N)


def _check_shape(fn: str, shape) -> tuple[int, ...]:
    # A bare int is a common slip for a 1-d shape; accept it rather than fail.
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise ValueError(f"{fn}: shape must be a tuple of ints, got {shape!r}")
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 0:
            raise ValueError(
                f"{fn}: shape must hold non-negative ints, got {tuple(shape)!r}")
        out.append(int(d))
    return tuple(out)


def _check_real(fn: str, name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ValueError(f"{fn}: {name} must be a real number, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{fn}: {name} must be finite, got {x}")
    return x


def _check_generator(fn: str, generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"{fn}: generator must be a torch.Generator, got {type(generator).__name__}")
    # The draws are made in float64 on the CPU; a CUDA generator cannot feed them.
    if generator.device.type != "cpu":
        raise ValueError(
            f"{fn}: generator must live on the CPU, got one on {generator.device}")
    return generator


def _rand(shape: tuple[int, ...], generator: torch.Generator) -> np.ndarray:
    # Uniform on [0, 1), float64, CPU: the single source of uniform randomness.
    return torch.rand(shape, generator=generator, dtype=torch.float64).numpy()


def _randn(shape: tuple[int, ...], generator: torch.Generator) -> np.ndarray:
    # Standard normal, float64, CPU: the single source of normal randomness.
    return torch.randn(shape, generator=generator, dtype=torch.float64).numpy()


# --------------------------------------------------------------------------
# HiPPO matrices
# --------------------------------------------------------------------------

def hippo_legs(N: int) -> np.ndarray:
    """HiPPO-LegS transition matrix, (N, N) float64 ([HiPPO] Thm. 2, [S4] eq. 2).

    ``A[n, k] = -sqrt(2n+1) sqrt(2k+1)`` for ``n > k``, ``-(n+1)`` for
    ``n == k`` and 0 above the diagonal. It is used with ``x' = A x + B u``.
    """
    N = _check_N("hippo_legs", N)
    r = np.sqrt(2.0 * np.arange(N) + 1.0)
    A = -np.tril(np.outer(r, r), -1)
    A[np.diag_indices(N)] = -(np.arange(N) + 1.0)
    return A


def hippo_legs_B(N: int) -> np.ndarray:
    """HiPPO-LegS input vector, (N,) float64: ``B[n] = sqrt(2n+1)`` ([HiPPO])."""
    N = _check_N("hippo_legs_B", N)
    return np.sqrt(2.0 * np.arange(N) + 1.0)


def hippo_legt(N: int) -> np.ndarray:
    """HiPPO-LegT transition matrix, (N, N) float64, as S4 uses it ([code] 'legt').

    ``A[n, k] = -1/2 sqrt(2n+1) sqrt(2k+1) * (1 if n >= k else (-1)**(n-k))``

    Without the factor 1/2 this is the LegT matrix of [HTTYH] (sec. 3), i.e.
    the LegT of [HiPPO] (App. D.1) for a window of length theta = 1, written in
    the basis with the sign of ``(-1)**n`` flipped so that B is positive.
    Like state-spaces/s4 (the "halve again for timescale correctness" step of
    ``transition('legt')``), A and B are halved here. The window is then 2
    long: with ``x' = A x + B u`` the state gives
    ``u(t - s) ~ sum_n x_n(t) sqrt(2n+1) P_n(1 - s)`` for ``0 <= s <= 2``.
    """
    N = _check_N("hippo_legt", N)
    n = np.arange(N)
    r = np.sqrt(2.0 * n + 1.0)
    # sign[n, k] = 1 on and below the diagonal, (-1)^(n-k) above it.
    sign = np.where(n[:, None] >= n[None, :], 1.0, (-1.0) ** (n[:, None] - n[None, :]))
    return -0.5 * sign * np.outer(r, r)


def hippo_legt_B(N: int) -> np.ndarray:
    """HiPPO-LegT input vector, (N,) float64: ``B[n] = sqrt(2n+1) / 2``.

    The halved version that goes with ``hippo_legt`` ([code] 'legt').
    """
    N = _check_N("hippo_legt_B", N)
    return 0.5 * np.sqrt(2.0 * np.arange(N) + 1.0)


def hippo_lagt(N: int) -> np.ndarray:
    """HiPPO-LagT transition matrix with beta = 1, (N, N) float64 ([code] 'lagt').

    ``A = I/2 - tril(ones)``: -1/2 on the diagonal, -1 below it, 0 above
    (the translated Laguerre measure of [HiPPO] App. D.2 / [HTTYH]).
    With ``x' = A x + B u`` the state gives
    ``u(t - s) ~ exp(-s/2) sum_n x_n(t) L_n(s)`` (Laguerre polynomials L_n).
    """
    N = _check_N("hippo_lagt", N)
    return np.eye(N) / 2.0 - np.tril(np.ones((N, N)))


def hippo_lagt_B(N: int) -> np.ndarray:
    """HiPPO-LagT input vector with beta = 1, (N,) float64: all ones ([code] 'lagt')."""
    N = _check_N("hippo_lagt_B", N)
    return np.ones(N)


def _fout_B(N: int) -> np.ndarray:
    B = np.zeros(N)
    B[0::2] = math.sqrt(2.0)
    B[0] = 1.0
    return B


def _check_even(fn: str, N: int) -> None:
    # The state comes in (cos, sin) pairs; an odd N would leave a cosine
    # without its sine, and its coefficient would not follow the signal.
    if N % 2:
        raise ValueError(f"{fn}: N must be even (cos/sin pairs), got {N}")


def hippo_fout(N: int) -> np.ndarray:
    """HiPPO-FouT transition matrix, (N, N) float64, even N ([code] 'fout').

    State ``2k`` holds a cosine and ``2k+1`` a sine at frequency k, for
    k = 0 .. N/2 - 1 (state 1, "sin 0", is always 0). With
    ``B = hippo_fout_B(N)``:

        A = pi * R - B B^T,   R[2k+1, 2k] = k,  R[2k, 2k+1] = -k.

    The ``-B B^T`` term is the low-rank correction for the window's far end.
    This is [HTTYH]'s FouT (sec. 3) with A and B halved, like state-spaces/s4:
    the window is 2 long, and with ``x' = A x + B u``,
    ``u(t - s) ~ x_0 + sqrt(2) sum_k (x_2k cos(pi k s) + x_2k+1 sin(pi k s))``
    for ``0 < s < 2``.
    """
    N = _check_N("hippo_fout", N)
    _check_even("hippo_fout", N)
    A = np.zeros((N, N))
    for k in range(1, N // 2):
        A[2 * k + 1, 2 * k] = math.pi * k
        A[2 * k, 2 * k + 1] = -math.pi * k
    B = _fout_B(N)
    return A - np.outer(B, B)


def hippo_fout_B(N: int) -> np.ndarray:
    """HiPPO-FouT input vector, (N,) float64, even N ([code] 'fout').

    ``B[0] = 1``, ``B[2k] = sqrt(2)`` for k >= 1, and 0 at the odd (sine) entries.
    """
    N = _check_N("hippo_fout_B", N)
    _check_even("hippo_fout_B", N)
    return _fout_B(N)


# --------------------------------------------------------------------------
# diagonal initializations
# --------------------------------------------------------------------------

def hippo_legs_diag(N: int) -> np.ndarray:
    """N diagonal modes from the normal part of HiPPO-LegS, (N,) complex128.

    The initialization of DSS, S4D-LegS and S5 ([DSS], [S4D] sec. 4, [S5]): the
    normal part ``S = hippo_legs(2N) + P P^T`` (``P[n] = sqrt(n + 1/2)``) of the
    2N x 2N LegS matrix equals ``-I/2 + K`` with K real skew-symmetric ([S4] sec.
    3.3), so its 2N eigenvalues are ``-1/2 +- i mu`` in conjugate pairs. A real
    2N-dimensional system is the N modes with positive imaginary part plus their
    conjugates, which a ``2 * re(...)`` readout accounts for; those N are returned,
    imaginary part descending. The imaginary parts come from ``eigh(-i K)``, like
    ``nplr()`` in [code]; the real parts are exactly -1/2.
    """
    N = _check_N("hippo_legs_diag", N)
    M = 2 * N
    P = np.sqrt(np.arange(M) + 0.5)
    S = hippo_legs(M) + np.outer(P, P)
    # Taking the skew part drops the rounding of A + P P^T, so K is exactly skew.
    K = 0.5 * (S - S.T)
    mu = np.linalg.eigh(-1j * K)[0]
    # eigh returns mu ascending; mu[::-1] is -mu in exact arithmetic: symmetrize,
    # then keep the positive half, largest first.
    mu = 0.5 * (mu - mu[::-1])
    mu = mu[::-1][:N]
    return (-0.5 + 1j * mu).astype(np.complex128)


def s4d_lin(N: int) -> np.ndarray:
    """S4D-Lin, (N,) complex128: ``-1/2 + i pi n`` ([S4D] sec. 4.2)."""
    N = _check_N("s4d_lin", N)
    return -0.5 + 1j * math.pi * np.arange(N, dtype=np.float64)


def s4d_inv(N: int) -> np.ndarray:
    """S4D-Inv, (N,) complex128: ``-1/2 + i (N/pi) (N/(2n+1) - 1)`` ([S4D] sec. 4.2)."""
    N = _check_N("s4d_inv", N)
    n = np.arange(N, dtype=np.float64)
    return -0.5 + 1j * (N / math.pi) * (N / (2.0 * n + 1.0) - 1.0)


def s4d_real(N: int) -> np.ndarray:
    """S4D-Real, (N,) float64: ``-(n+1)`` ([S4D] sec. 4.2)."""
    N = _check_N("s4d_real", N)
    return -(np.arange(N, dtype=np.float64) + 1.0)


# --------------------------------------------------------------------------
# random draws
# --------------------------------------------------------------------------

# The draws take a keyword argument called ``complex``, which hides the builtin.
_builtin_complex = complex

def normal(shape, mean, std, generator, complex: bool = False) -> np.ndarray:
    """Gaussian draw ``mean + std * z`` of ``shape``.

    Real: one ``torch.randn`` draw of ``shape``. Complex: one draw of
    ``(*shape, 2)`` (last axis = real, imaginary) scaled by 1/sqrt(2). Each
    part then has std ``std/sqrt(2)`` and ``E|z|^2 = std^2``, as ``torch.randn``
    gives for complex dtypes. ``mean`` is added as is: a real mean moves only
    the real part. A complex mean is allowed only when ``complex=True``.
    """
    fn = "normal"
    shape = _check_shape(fn, shape)
    if complex and isinstance(mean, numbers.Complex) and not isinstance(mean, numbers.Real):
        mean_re = _check_real(fn, "mean (real part)", mean.real)
        mean_im = _check_real(fn, "mean (imaginary part)", mean.imag)
        mean = _builtin_complex(mean_re, mean_im)
    else:
        mean = _check_real(fn, "mean", mean)
    std = _check_real(fn, "std", std)
    if std < 0:
        raise ValueError(f"{fn}: std must be >= 0, got {std}")
    generator = _check_generator(fn, generator)
    if not complex:
        return mean + std * _randn(shape, generator)
    z = _randn(shape + (2,), generator)
    z = (z[..., 0] + 1j * z[..., 1]) * (std / math.sqrt(2.0))
    return (mean + z).astype(np.complex128)


def _uniform(fn: str, shape, lo: float, hi: float, generator, is_complex: bool):
    if not math.isfinite(hi - lo):
        raise ValueError(f"{fn}: the range hi - lo overflows, got lo={lo}, hi={hi}")
    out = lo + (hi - lo) * _rand(shape, generator)
    # Floating rounding can give lo + (hi - lo) * u == hi for u just below 1.
    out = np.minimum(out, np.nextafter(hi, lo))
    return out.astype(np.complex128) if is_complex else out


def uniform(shape, lo, hi, generator, complex: bool = False) -> np.ndarray:
    """Uniform draw on ``[lo, hi)`` of ``shape``, ``lo < hi``.

    One ``torch.rand`` draw of ``shape``. With ``complex=True`` the draw is the
    real part and the imaginary part is 0.
    """
    fn = "uniform"
    shape = _check_shape(fn, shape)
    lo = _check_real(fn, "lo", lo)
    hi = _check_real(fn, "hi", hi)
    if not lo < hi:
        raise ValueError(f"{fn}: need lo < hi, got lo={lo}, hi={hi}")
    generator = _check_generator(fn, generator)
    return _uniform(fn, shape, lo, hi, generator, complex)


def log_uniform(shape, lo, hi, generator, complex: bool = False) -> np.ndarray:
    """``exp(uniform(log lo, log hi))`` of ``shape``, ``0 < lo < hi``.

    The usual draw for the step size, e.g. ``dt`` in [0.001, 0.1] in [S4] and
    [S4D]. One ``torch.rand`` draw of ``shape``. With ``complex=True`` the draw
    is the real part and the imaginary part is 0.
    """
    fn = "log_uniform"
    shape = _check_shape(fn, shape)
    lo = _check_real(fn, "lo", lo)
    hi = _check_real(fn, "hi", hi)
    if lo <= 0:
        raise ValueError(f"{fn}: need lo > 0, got lo={lo}")
    if not lo < hi:
        raise ValueError(f"{fn}: need lo < hi, got lo={lo}, hi={hi}")
    generator = _check_generator(fn, generator)
    out = np.exp(_uniform(fn, shape, math.log(lo), math.log(hi), generator, False))
    # exp can round past the ends; keep the draw inside [lo, hi].
    out = np.clip(out, lo, hi)
    return out.astype(np.complex128) if complex else out


def lru_ring(shape, r_min, r_max, generator, complex: bool = True) -> np.ndarray:
    """Complex eigenvalues uniform on the ring ``r_min <= |lambda| <= r_max``.

    As in [LRU] (Lemma 3.2): uniform in area, so ``|lambda|^2`` is uniform on
    ``[r_min^2, r_max^2]``, with phase uniform on ``[0, 2 pi)``. Needs
    ``0 < r_min <= r_max <= 1``. ``r_min == r_max`` (a circle) is allowed.
    Two ``torch.rand`` draws of ``shape``: the modulus first, then the phase,
    the order of ``nu`` and ``theta`` in the LRU code. ``complex`` is there
    only so that every draw can be called the same way; it must be True.
    """
    fn = "lru_ring"
    shape = _check_shape(fn, shape)
    r_min = _check_real(fn, "r_min", r_min)
    r_max = _check_real(fn, "r_max", r_max)
    if not 0.0 < r_min <= 1.0:
        raise ValueError(f"{fn}: r_min must be in (0, 1], got {r_min}")
    if not 0.0 < r_max <= 1.0:
        raise ValueError(f"{fn}: r_max must be in (0, 1], got {r_max}")
    if r_min > r_max:
        raise ValueError(f"{fn}: need r_min <= r_max, got r_min={r_min}, r_max={r_max}")
    if not complex:
        raise ValueError(f"{fn}: draws complex values; the parameter must be complex")
    generator = _check_generator(fn, generator)
    u1 = _rand(shape, generator)
    u2 = _rand(shape, generator)
    r = np.sqrt(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2)
    # Rounding can push sqrt just outside the ring; keep it inside.
    r = np.clip(r, r_min, r_max)
    theta = 2.0 * math.pi * u2
    return (r * np.exp(1j * theta)).astype(np.complex128)


def zeros(shape, complex: bool = False) -> np.ndarray:
    """All zeros of ``shape``: float64, or complex128 with ``complex=True``."""
    shape = _check_shape("zeros", shape)
    return np.zeros(shape, dtype=np.complex128 if complex else np.float64)


def ones(shape, complex: bool = False) -> np.ndarray:
    """All ones of ``shape``: float64, or complex128 with ``complex=True``."""
    shape = _check_shape("ones", shape)
    return np.ones(shape, dtype=np.complex128 if complex else np.float64)


# --------------------------------------------------------------------------
# layers: nn.Linear and depthwise nn.Conv1d defaults
# --------------------------------------------------------------------------

def _check_positive_int(fn: str, name: str, x) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 1:
        raise ValueError(f"{fn}: {name} must be an int >= 1, got {x!r}")
    return int(x)


def _symmetric(fn: str, shape, bound: float, generator) -> np.ndarray:
    generator = _check_generator(fn, generator)
    # U(-bound, bound) from one torch.rand draw of shape.
    return bound * (2.0 * _rand(shape, generator) - 1.0)


def linear_weight(out_features, in_features, generator) -> np.ndarray:
    """``torch.nn.Linear`` default weight, (out, in): U(-1/sqrt(in), 1/sqrt(in)).

    PyTorch uses ``kaiming_uniform_(a=sqrt(5))``. Its bound is
    ``sqrt(3) * sqrt(2 / (1 + 5)) / sqrt(in) = 1 / sqrt(in)``.
    One ``torch.rand`` draw of ``(out, in)``. Same distribution as PyTorch,
    but not bit-identical to its float32 draws.
    """
    fn = "linear_weight"
    out_features = _check_positive_int(fn, "out_features", out_features)
    in_features = _check_positive_int(fn, "in_features", in_features)
    return _symmetric(fn, (out_features, in_features), 1.0 / math.sqrt(in_features), generator)


def linear_bias(out_features, in_features, generator) -> np.ndarray:
    """``torch.nn.Linear`` default bias, (out,): U(-1/sqrt(in), 1/sqrt(in))."""
    fn = "linear_bias"
    out_features = _check_positive_int(fn, "out_features", out_features)
    in_features = _check_positive_int(fn, "in_features", in_features)
    return _symmetric(fn, (out_features,), 1.0 / math.sqrt(in_features), generator)


def conv_weight(channels_shape, K, generator) -> np.ndarray:
    """Depthwise ``torch.nn.Conv1d`` default weight, ``(*channels_shape, K)``.

    With ``groups = channels`` the fan-in is ``K``, so the weight is
    U(-1/sqrt(K), 1/sqrt(K)) (kaiming uniform with a = sqrt(5), as in
    ``nn.Linear``). This is Mamba's short causal conv1d.
    """
    fn = "conv_weight"
    channels_shape = _check_shape(fn, channels_shape)
    K = _check_positive_int(fn, "K", K)
    return _symmetric(fn, channels_shape + (K,), 1.0 / math.sqrt(K), generator)


def conv_bias(channels_shape, K, generator) -> np.ndarray:
    """Depthwise ``torch.nn.Conv1d`` default bias, ``channels_shape``: U(-1/sqrt(K), 1/sqrt(K))."""
    fn = "conv_bias"
    channels_shape = _check_shape(fn, channels_shape)
    K = _check_positive_int(fn, "K", K)
    return _symmetric(fn, channels_shape, 1.0 / math.sqrt(K), generator)


# --------------------------------------------------------------------------
# registries for the compiler
# --------------------------------------------------------------------------

#: Deterministic families, each a function of a single int N.
FAMILIES: dict[str, Callable[[int], np.ndarray]] = {
    "hippo_legs": hippo_legs,
    "hippo_legs_B": hippo_legs_B,
    "hippo_legt": hippo_legt,
    "hippo_legt_B": hippo_legt_B,
    "hippo_lagt": hippo_lagt,
    "hippo_lagt_B": hippo_lagt_B,
    "hippo_fout": hippo_fout,
    "hippo_fout_B": hippo_fout_B,
    "hippo_legs_diag": hippo_legs_diag,
    "s4d_lin": s4d_lin,
    "s4d_inv": s4d_inv,
    "s4d_real": s4d_real,
}

#: For each family: (number of axes, each of size N; whether it is complex).
#: Lets the compiler check dims and complexness without calling the function.
FAMILY_KINDS: dict[str, tuple[int, bool]] = {
    "hippo_legs": (2, False),
    "hippo_legs_B": (1, False),
    "hippo_legt": (2, False),
    "hippo_legt_B": (1, False),
    "hippo_lagt": (2, False),
    "hippo_lagt_B": (1, False),
    "hippo_fout": (2, False),
    "hippo_fout_B": (1, False),
    "hippo_legs_diag": (1, True),
    "s4d_lin": (1, True),
    "s4d_inv": (1, True),
    "s4d_real": (1, False),
}

#: Random draws, each called as ``f(shape, *args, generator=g, complex=c)``.
RANDOM: dict[str, Callable[..., np.ndarray]] = {
    "normal": normal,
    "uniform": uniform,
    "log_uniform": log_uniform,
    "lru_ring": lru_ring,
}

#: How many scalar arguments each random draw takes in a spec.
RANDOM_ARITY: dict[str, int] = {
    "normal": 2,
    "uniform": 2,
    "log_uniform": 2,
    "lru_ring": 2,
}
