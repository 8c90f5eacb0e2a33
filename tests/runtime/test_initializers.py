"""Tests for ssmc.runtime.initializers.

The expected values come from formulas written out here as loops, not from
calls into the module. The HiPPO conventions are also checked by what they
are for: the state of ``x' = A x + B u`` must reconstruct the recent input.
"""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre

from ssmc.runtime import initializers as I


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------
# reference formulas, written entry by entry
# --------------------------------------------------------------------------

def ref_legs(N):
    A = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            if n > k:
                A[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                A[n, k] = -(n + 1)
    return A


def ref_legt(N):
    # [HTTYH] LegT (theta = 1), halved as in state-spaces/s4.
    A = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            s = 1.0 if n >= k else (-1.0) ** (n - k)
            A[n, k] = -0.5 * s * math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
    return A


def ref_lagt(N):
    A = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            if n == k:
                A[n, k] = -0.5
            elif n > k:
                A[n, k] = -1.0
    return A


def ref_fout_B(N):
    B = np.zeros(N)
    for n in range(N):
        if n == 0:
            B[n] = 1.0
        elif n % 2 == 0:
            B[n] = math.sqrt(2)
    return B


def ref_fout(N):
    B = ref_fout_B(N)
    A = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            # Rotation between cosine 2j and sine 2j+1 at angular frequency pi * j.
            if n % 2 == 1 and k == n - 1:
                A[n, k] = math.pi * (n // 2)
            elif k % 2 == 1 and n == k - 1:
                A[n, k] = -math.pi * (k // 2)
            A[n, k] -= B[n] * B[k]
    return A


def ref_legs_normal(N):
    # LegS + P P^T with P[n] = sqrt(n + 1/2): -1/2 on the diagonal and
    # -+ sqrt(2n+1) sqrt(2k+1) / 2 below / above it.
    S = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            v = 0.5 * math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            if n > k:
                S[n, k] = -v
            elif n < k:
                S[n, k] = v
            else:
                S[n, k] = -0.5
    return S


# --------------------------------------------------------------------------
# deterministic families
# --------------------------------------------------------------------------

@pytest.mark.parametrize("N", [1, 2, 5, 16])
def test_legs_matches_entries(N):
    np.testing.assert_allclose(I.hippo_legs(N), ref_legs(N), rtol=1e-14, atol=0)
    B = [math.sqrt(2 * n + 1) for n in range(N)]
    np.testing.assert_allclose(I.hippo_legs_B(N), B, rtol=1e-15)


@pytest.mark.parametrize("N", [1, 2, 5, 16])
def test_legt_lagt_match_entries(N):
    np.testing.assert_allclose(I.hippo_legt(N), ref_legt(N), rtol=1e-14, atol=0)
    np.testing.assert_allclose(
        I.hippo_legt_B(N), [0.5 * math.sqrt(2 * n + 1) for n in range(N)], rtol=1e-15)
    np.testing.assert_array_equal(I.hippo_lagt(N), ref_lagt(N))
    np.testing.assert_array_equal(I.hippo_lagt_B(N), np.ones(N))


@pytest.mark.parametrize("N", [2, 4, 10])
def test_fout_matches_entries(N):
    np.testing.assert_allclose(I.hippo_fout(N), ref_fout(N), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(I.hippo_fout_B(N), ref_fout_B(N))


def _run_zoh(A, B, f, dt, T):
    # Exact ZOH steps of x' = A x + B u from the exponential of the
    # augmented matrix [[A, B], [0, 0]], so a singular A is fine.
    N = len(B)
    M = np.zeros((N + 1, N + 1))
    M[:N, :N] = A * dt
    M[:N, N] = B * dt
    E = torch.linalg.matrix_exp(torch.from_numpy(M)).numpy()
    Ad, Bd = E[:N, :N], E[:N, N]
    x = np.zeros(N)
    steps = int(round(T / dt))
    for j in range(steps):
        # The input is held at its midpoint value over each step.
        x = Ad @ x + Bd * f((j + 0.5) * dt)
    return x


def _signal(t):
    return np.sin(3 * t) + 0.5 * np.cos(2 * t)


def test_legt_state_remembers_a_window_of_length_2():
    # The docstring's claim: u(t - s) ~ sum_n x_n sqrt(2n+1) P_n(1 - s), 0 <= s <= 2.
    N, T = 16, 4.0
    x = _run_zoh(I.hippo_legt(N), I.hippo_legt_B(N), _signal, 2e-3, T)
    s = np.linspace(0, 2, 41)
    rec = sum(x[n] * math.sqrt(2 * n + 1) * legendre.legval(1 - s, np.eye(N)[n]) for n in range(N))
    assert np.max(np.abs(rec - _signal(T - s))) < 1e-2


def test_fout_state_remembers_a_window_of_length_2():
    # u(t - s) ~ x_0 + sqrt(2) sum_k (x_2k cos(pi k s) + x_2k+1 sin(pi k s)).
    # A truncated Fourier series of a non-periodic window converges slowly
    # near its ends, hence the interior points and the loose bound.
    N, T = 32, 4.0
    x = _run_zoh(I.hippo_fout(N), I.hippo_fout_B(N), _signal, 2e-3, T)
    s = np.linspace(0.2, 1.8, 33)
    rec = x[0] * np.ones_like(s)
    for k in range(1, N // 2):
        rec += math.sqrt(2) * (x[2 * k] * np.cos(math.pi * k * s) + x[2 * k + 1] * np.sin(math.pi * k * s))
    assert np.max(np.abs(rec - _signal(T - s))) < 5e-2


@pytest.mark.parametrize("N", [1, 3, 8, 33])
def test_s4d_families_match_formulas(N):
    lin = [complex(-0.5, math.pi * n) for n in range(N)]
    inv = [complex(-0.5, (N / math.pi) * (N / (2 * n + 1) - 1)) for n in range(N)]
    real = [-(n + 1.0) for n in range(N)]
    np.testing.assert_allclose(I.s4d_lin(N), lin, rtol=1e-15)
    np.testing.assert_allclose(I.s4d_inv(N), inv, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(I.s4d_real(N), real)


@pytest.mark.parametrize("N", [1, 2, 7, 16, 64])
def test_legs_diag_is_spectrum_of_normal_part(N):
    w = I.hippo_legs_diag(N)
    # Real parts: exactly -1/2, not just close.
    assert np.all(w.real == -0.5)
    # The same spectrum by another route: the general eigensolver on the
    # normal part of the 2N x 2N LegS matrix built entry by entry; its
    # eigenvalues are w and conj(w), and w is the half with positive imaginary part.
    ev = np.linalg.eigvals(ref_legs_normal(2 * N))
    ev = ev[np.lexsort((ev.real, -ev.imag))][:N]
    scale = max(1.0, np.abs(ev).max())
    np.testing.assert_allclose(w, ev, rtol=0, atol=1e-10 * scale)
    # Deterministic order: imaginary parts descending, all positive.
    assert np.all(np.diff(w.imag) <= 0) and np.all(w.imag > 0)


def test_legs_diag_normal_part_is_legs_plus_rank_one():
    # Ties the two reference matrices together: LegS + P P^T is the normal part.
    N = 12
    P = np.array([math.sqrt(n + 0.5) for n in range(N)])
    np.testing.assert_allclose(ref_legs(N) + np.outer(P, P), ref_legs_normal(N), atol=1e-12)


def test_family_registry_shapes_and_dtypes():
    assert set(I.FAMILIES) == set(I.FAMILY_KINDS)
    for name, f in I.FAMILIES.items():
        ndim, is_complex = I.FAMILY_KINDS[name]
        # 6 is even, which hippo_fout needs.
        out = f(6)
        assert out.shape == (6,) * ndim, name
        assert out.dtype == (np.complex128 if is_complex else np.float64), name


# --------------------------------------------------------------------------
# random draws
# --------------------------------------------------------------------------

# One call per draw, in the calling convention the compiler uses.
DRAWS = [
    ("normal", (0.0, 1.0), False),
    ("normal", (0.0, 1.0), True),
    ("uniform", (-1.0, 2.0), False),
    ("uniform", (-1.0, 2.0), True),
    ("log_uniform", (1e-3, 1e-1), False),
    ("log_uniform", (1e-3, 1e-1), True),
    ("lru_ring", (0.9, 0.999), True),
]


@pytest.mark.parametrize("name,args,cplx", DRAWS)
def test_draws_shape_dtype_and_determinism(name, args, cplx):
    f = I.RANDOM[name]
    assert I.RANDOM_ARITY[name] == len(args)
    a = f((3, 4), *args, generator=gen(1), complex=cplx)
    b = f((3, 4), *args, generator=gen(1), complex=cplx)
    c = f((3, 4), *args, generator=gen(2), complex=cplx)
    assert a.shape == (3, 4)
    assert a.dtype == (np.complex128 if cplx else np.float64)
    # Same seed, same values; another seed, other values.
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_registries_agree():
    assert set(I.RANDOM) == set(I.RANDOM_ARITY) == {"normal", "uniform", "log_uniform", "lru_ring"}


def test_draws_follow_the_documented_torch_calls():
    # The draw order is part of the contract: check it against torch directly.
    u = torch.rand((5,), generator=gen(3), dtype=torch.float64).numpy()
    np.testing.assert_allclose(I.uniform((5,), 2.0, 4.0, gen(3)), 2.0 + 2.0 * u, rtol=1e-15)
    z = torch.randn((5, 2), generator=gen(4), dtype=torch.float64).numpy()
    expected = 1.0 + 3.0 * (z[:, 0] + 1j * z[:, 1]) / math.sqrt(2)
    np.testing.assert_allclose(I.normal((5,), 1.0, 3.0, gen(4), complex=True), expected, rtol=1e-14)


N_SAMPLES = 200_000


def test_normal_statistics_real():
    x = I.normal((N_SAMPLES,), 1.5, 2.0, gen())
    # Standard error of the mean is 2 / sqrt(2e5) ~ 0.0045.
    assert abs(x.mean() - 1.5) < 0.03
    assert abs(x.std() - 2.0) < 0.03


def test_normal_statistics_complex():
    z = I.normal((N_SAMPLES,), 1.0, 2.0, gen(), complex=True)
    # Each part has std / sqrt(2); the mean moves only the real part.
    assert abs(z.real.std() - 2.0 / math.sqrt(2)) < 0.03
    assert abs(z.imag.std() - 2.0 / math.sqrt(2)) < 0.03
    assert abs(z.real.mean() - 1.0) < 0.03
    assert abs(z.imag.mean()) < 0.03
    # Total power matches std^2, like torch.randn for complex dtypes.
    assert abs(np.mean(np.abs(z - 1.0) ** 2) - 4.0) < 0.1


def test_uniform_statistics():
    x = I.uniform((N_SAMPLES,), -1.0, 3.0, gen())
    assert x.min() >= -1.0 and x.max() < 3.0
    # With 2e5 draws the sample reaches both ends closely.
    assert x.min() < -0.99 and x.max() > 2.99
    assert abs(x.mean() - 1.0) < 0.03
    # Variance of U(a, b) is (b - a)^2 / 12.
    assert abs(x.var() - 16 / 12) < 0.03
    z = I.uniform((100,), 0.0, 1.0, gen(), complex=True)
    assert np.all(z.imag == 0)


def test_log_uniform_statistics():
    lo, hi = 1e-3, 1e-1
    x = I.log_uniform((N_SAMPLES,), lo, hi, gen())
    assert x.min() >= lo and x.max() <= hi
    # log x is uniform on [log lo, log hi].
    lx = np.log(x)
    assert abs(lx.mean() - 0.5 * (math.log(lo) + math.log(hi))) < 0.03
    assert abs(np.mean(x < math.sqrt(lo * hi)) - 0.5) < 0.01
    z = I.log_uniform((100,), lo, hi, gen(), complex=True)
    assert np.all(z.imag == 0) and np.all(z.real >= lo)


def test_lru_ring_statistics():
    r_min, r_max = 0.4, 0.9
    lam = I.lru_ring((N_SAMPLES,), r_min, r_max, gen())
    r = np.abs(lam)
    assert r.min() >= r_min - 1e-12 and r.max() <= r_max + 1e-12
    # Uniform in area: |lambda|^2 is uniform on [r_min^2, r_max^2], so half
    # the draws lie inside the circle of squared radius at the midpoint.
    mid = 0.5 * (r_min ** 2 + r_max ** 2)
    assert abs(np.mean(r ** 2 < mid) - 0.5) < 0.01
    assert abs(np.mean(r ** 2) - mid) < 0.005
    # Phase uniform on [0, 2 pi): each quadrant gets a quarter.
    phase = np.mod(np.angle(lam), 2 * math.pi)
    for q in range(4):
        frac = np.mean((phase >= q * math.pi / 2) & (phase < (q + 1) * math.pi / 2))
        assert abs(frac - 0.25) < 0.01


def test_lru_ring_circle():
    # r_min == r_max is allowed and puts every draw on that circle.
    lam = I.lru_ring((50,), 0.95, 0.95, gen())
    np.testing.assert_allclose(np.abs(lam), 0.95, rtol=1e-14)


def test_zeros_ones():
    assert I.zeros((2, 3)).dtype == np.float64 and not I.zeros((2, 3)).any()
    assert I.ones((4,), complex=True).dtype == np.complex128
    np.testing.assert_array_equal(I.ones((2, 2)), np.ones((2, 2)))
    assert I.zeros(()).shape == ()


# --------------------------------------------------------------------------
# layer defaults
# --------------------------------------------------------------------------

def test_linear_init_bounds_match_torch():
    out_f, in_f = 64, 50
    w = I.linear_weight(out_f, in_f, gen())
    b = I.linear_bias(out_f, in_f, gen(1))
    assert w.shape == (out_f, in_f) and b.shape == (out_f,)
    assert w.dtype == np.float64
    bound = 1 / math.sqrt(in_f)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # 3200 uniform draws come close to the bound and have std bound / sqrt(3).
    assert np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
    # PyTorch's own layer stays within the same bound.
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_f, out_f)
    assert layer.weight.abs().max().item() <= bound + 1e-7
    assert layer.weight.abs().max().item() > 0.98 * bound


def test_conv_init_bounds_match_torch():
    K = 4
    w = I.conv_weight((8, 3), K, gen())
    b = I.conv_bias((8, 3), K, gen(1))
    assert w.shape == (8, 3, K) and b.shape == (8, 3)
    bound = 1 / math.sqrt(K)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.9 * bound
    # A depthwise Conv1d has fan-in K, hence the same bound.
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(24, 24, K, groups=24)
    assert conv.weight.abs().max().item() <= bound + 1e-7
    assert conv.weight.abs().max().item() > 0.9 * bound


def test_layer_inits_are_deterministic():
    np.testing.assert_array_equal(I.linear_weight(3, 5, gen(7)), I.linear_weight(3, 5, gen(7)))
    assert not np.array_equal(I.conv_weight((4,), 3, gen(7)), I.conv_weight((4,), 3, gen(8)))


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

BAD_CALLS = [
    ("hippo_legs", lambda: I.hippo_legs(0)),
    ("hippo_legs_B", lambda: I.hippo_legs_B(-1)),
    ("hippo_legt", lambda: I.hippo_legt(2.5)),
    ("hippo_lagt", lambda: I.hippo_lagt(True)),
    ("hippo_fout", lambda: I.hippo_fout(5)),
    ("hippo_fout_B", lambda: I.hippo_fout_B(3)),
    ("hippo_legs_diag", lambda: I.hippo_legs_diag(0)),
    ("s4d_lin", lambda: I.s4d_lin(0)),
    ("s4d_inv", lambda: I.s4d_inv("4")),
    ("s4d_real", lambda: I.s4d_real(0)),
    ("normal", lambda: I.normal((2,), 0.0, -1.0, gen())),
    ("normal", lambda: I.normal((2,), 1j, 1.0, gen())),
    ("normal", lambda: I.normal((2,), 0.0, 1.0, None)),
    ("normal", lambda: I.normal((2, -1), 0.0, 1.0, gen())),
    ("uniform", lambda: I.uniform((2,), 1.0, 1.0, gen())),
    ("uniform", lambda: I.uniform((2,), 2.0, 1.0, gen())),
    ("uniform", lambda: I.uniform((2,), 0.0, float("inf"), gen())),
    ("log_uniform", lambda: I.log_uniform((2,), 0.0, 1.0, gen())),
    ("log_uniform", lambda: I.log_uniform((2,), -1.0, 1.0, gen())),
    ("log_uniform", lambda: I.log_uniform((2,), 0.1, 0.01, gen())),
    ("lru_ring", lambda: I.lru_ring((2,), 0.0, 0.9, gen())),
    ("lru_ring", lambda: I.lru_ring((2,), 0.5, 1.5, gen())),
    ("lru_ring", lambda: I.lru_ring((2,), 0.9, 0.5, gen())),
    ("lru_ring", lambda: I.lru_ring((2,), 0.5, 0.9, gen(), complex=False)),
    ("zeros", lambda: I.zeros("abc")),
    ("linear_weight", lambda: I.linear_weight(0, 3, gen())),
    ("linear_bias", lambda: I.linear_bias(3, 0, gen())),
    ("conv_weight", lambda: I.conv_weight((4,), 0, gen())),
    ("conv_bias", lambda: I.conv_bias((4,), 2, "seed")),
]


@pytest.mark.parametrize("fn,call", BAD_CALLS, ids=[f"{fn}-{i}" for i, (fn, _) in enumerate(BAD_CALLS)])
def test_bad_arguments_raise_value_error(fn, call):
    with pytest.raises(ValueError) as info:
        call()
    msg = str(info.value)
    # One line, naming the function that was called.
    assert msg.startswith(fn + ":")
    assert "\n" not in msg
