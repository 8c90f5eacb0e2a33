"""Self-checks of the paper oracles, independent of ssmc.

Each oracle's sequential recurrence is compared with a second, differently
derived formula: closed-form convolution kernels (Vandermonde), explicit
matrix powers, scalar per-channel loops, time reversal by flipping.
"""

import math

import numpy as np
import pytest

from . import papers

TOL = 1e-11


def rel(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def crandn(rng, *shape, std=1.0):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * std / math.sqrt(2)


# ----------------------------------------------------------------------------
# random parameter sets (shaped like the specs' parameters)
# ----------------------------------------------------------------------------

def s4d_params(rng, H, N):
    return {
        "log_dt": np.log(rng.uniform(0.01, 0.5, H)),
        "log_A_real": np.log(rng.uniform(0.1, 1.0, (H, N))),
        "A_imag": math.pi * np.arange(N)[None, :] + rng.uniform(-0.3, 0.3, (H, N)),
        "C": crandn(rng, H, N),
        "D": rng.standard_normal(H),
    }


def lssl_params(rng, H, N):
    return {
        "A": papers.hippo_legs(N),
        "Bv": papers.hippo_legs_B(N),
        "log_dt": np.log(rng.uniform(0.01, 0.3, H)),
        "C": rng.standard_normal((H, N)),
        "D": rng.standard_normal(H),
    }


def s4d_real_params(rng, H, N):
    return {
        "A_re": np.tile(papers.s4d_real(N), (H, 1)) * rng.uniform(0.5, 1.5, (H, N)),
        "B": rng.standard_normal((H, N)),
        "C": rng.standard_normal((H, N)),
        "D": rng.standard_normal(H),
        "log_dt": np.log(rng.uniform(0.01, 0.5, H)),
    }


def s5_params(rng, H, P):
    lam = -rng.uniform(0.1, 1.0, P) + 1j * rng.uniform(-3, 3, P)
    return {
        "Lambda": lam,
        "B": crandn(rng, P, H, std=0.5),
        "C": crandn(rng, H, P, std=0.5),
        "D": rng.standard_normal(H),
        "log_dt": np.log(rng.uniform(0.01, 0.5, P)),
    }


def lru_params(rng, H, N):
    r = rng.uniform(0.5, 0.99, N)
    return {
        "nu_log": np.log(-np.log(r)),
        "theta_log": np.log(rng.uniform(0.01, 2 * math.pi, N)),
        "B": crandn(rng, N, H, std=0.3),
        "C": crandn(rng, H, N, std=0.3),
        "D": rng.standard_normal(H),
    }


def mamba_params(rng, H, N, R):
    return {
        "A_log": np.log(rng.uniform(0.5, 4.0, (H, N))),
        "D": rng.standard_normal(H),
        "dt_bias": rng.uniform(-3, 0, H),
        "dt_proj": rng.standard_normal((H, R)) * 0.5,
        "dt_proj2": rng.standard_normal((R, H)) * 0.5,
        "B_proj": rng.standard_normal((N, H)) * 0.5,
        "C_proj": rng.standard_normal((N, H)) * 0.5,
    }


def mamba2_params(rng, Hd, P, N):
    return {
        "A_log": np.log(rng.uniform(1, 4, Hd)),
        "dt_bias": rng.uniform(-3, 0, Hd),
        "D": rng.standard_normal(Hd),
        "dt_proj": rng.standard_normal((Hd, Hd * P)) * 0.3,
        "B_proj": rng.standard_normal((N, Hd * P)) * 0.3,
        "C_proj": rng.standard_normal((N, Hd * P)) * 0.3,
    }


# ----------------------------------------------------------------------------
# initializers
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("N", [1, 2, 5, 8])
def test_hippo_legs_matches_s4_construction(N):
    # The S4 code's construction: P = sqrt(1 + 2n); A = P P^T; A = tril(A) - diag(n); A = -A
    q = np.sqrt(1 + 2 * np.arange(N, dtype=np.float64))
    A = q[:, None] * q[None, :]
    A = np.tril(A) - np.diag(np.arange(N, dtype=np.float64))
    assert rel(papers.hippo_legs(N), -A) < 1e-15
    assert rel(papers.hippo_legs_B(N), q) < 1e-15


@pytest.mark.parametrize("N", [2, 5, 8])
def test_hippo_legs_normal_part(N):
    S = papers.hippo_legs_normal(N)
    # -1/2 I + skew-symmetric: S + S^T = -I, so it is normal and Re(eig) = -1/2
    assert np.allclose(S + S.T, -np.eye(N), atol=1e-13)
    ev = np.linalg.eigvals(S)
    assert np.allclose(ev.real, -0.5, atol=1e-12)


def test_s4d_inits():
    N = 6
    assert np.allclose(papers.s4d_real(N), -(np.arange(N) + 1))
    lin = papers.s4d_lin(N)
    assert np.allclose(lin.real, -0.5) and np.allclose(lin.imag, math.pi * np.arange(N))
    inv = papers.s4d_inv(N)
    n = np.arange(N)
    assert np.allclose(inv.imag, N / math.pi * (N / (2 * n + 1) - 1))


# ----------------------------------------------------------------------------
# S4D: recurrence == convolution with the Vandermonde kernel
# ----------------------------------------------------------------------------

def causal_conv(K, u):
    """y[b, t, h] = sum_{k<=t} K[k, h] u[b, t-k, h]."""
    Bsz, L, H = u.shape
    y = np.zeros((Bsz, L, H))
    for t in range(L):
        for k in range(t + 1):
            y[:, t] += K[k] * u[:, t - k]
    return y


@pytest.mark.parametrize("Bsz,L,H,N", [(1, 1, 1, 1), (2, 13, 3, 5), (3, 31, 2, 4)])
def test_s4d_recurrence_equals_vandermonde_convolution(Bsz, L, H, N):
    rng = np.random.default_rng(1)
    P = s4d_params(rng, H, N)
    u = rng.standard_normal((Bsz, L, H))
    y, xL = papers.s4d_zoh(P, u)

    A = -np.exp(P["log_A_real"]) + 1j * P["A_imag"]
    dt = np.exp(P["log_dt"])[:, None]
    # K_k = 2 Re(sum_n C dB dA^k), dA^k = exp(k dt A) (Vandermonde in exp(dt A))
    k = np.arange(L)[:, None, None]
    dB = np.expm1(dt * A) / A
    K = 2 * np.real(np.sum(P["C"][None] * dB[None] * np.exp(k * dt[None] * A[None]), axis=-1))
    y_conv = causal_conv(K, u) + P["D"] * u
    assert rel(y, y_conv) < TOL

    # final state in closed form: x_L = sum_k dA^(L-1-k) dB u_k
    xc = np.zeros((Bsz, H, N), complex)
    for s in range(L):
        xc += np.exp((L - 1 - s) * dt * A)[None] * dB[None] * u[:, s, :, None]
    assert rel(xL, xc) < TOL


def test_s4d_initial_state_free_response():
    rng = np.random.default_rng(2)
    Bsz, L, H, N = 2, 9, 3, 4
    P = s4d_params(rng, H, N)
    u = rng.standard_normal((Bsz, L, H))
    x0 = crandn(rng, Bsz, H, N)
    y, xL = papers.s4d_zoh(P, u, x0)
    y0, xL0 = papers.s4d_zoh(P, u)
    A = -np.exp(P["log_A_real"]) + 1j * P["A_imag"]
    dt = np.exp(P["log_dt"])[:, None]
    t = np.arange(1, L + 1)[:, None, None]
    free = 2 * np.real(np.sum(P["C"][None, None] * np.exp(t * dt * A)[None] * x0[:, None], axis=-1))
    assert rel(y, y0 + free) < TOL
    assert rel(xL, xL0 + np.exp(L * dt * A)[None] * x0) < TOL


def test_s4d_chaining():
    rng = np.random.default_rng(3)
    P = s4d_params(rng, 3, 5)
    u = rng.standard_normal((2, 17, 3))
    y, xL = papers.s4d_zoh(P, u)
    y1, x1 = papers.s4d_zoh(P, u[:, :6])
    y2, x2 = papers.s4d_zoh(P, u[:, 6:], x1)
    assert rel(np.concatenate([y1, y2], 1), y) < TOL
    assert rel(x2, xL) < TOL


# ----------------------------------------------------------------------------
# S4D-Real bilinear == LSSL-style dense bilinear with a diagonal matrix
# ----------------------------------------------------------------------------

def test_s4d_real_bilinear_equals_dense_bilinear():
    rng = np.random.default_rng(4)
    Bsz, L, H, N = 2, 11, 3, 5
    P = s4d_real_params(rng, H, N)
    u = rng.standard_normal((Bsz, L, H))
    y, xL = papers.s4d_real_bilinear(P, u)
    I = np.eye(N)
    x = np.zeros((Bsz, H, N))
    yd = np.zeros((Bsz, L, H))
    for h in range(H):
        dt = math.exp(P["log_dt"][h])
        A = np.diag(P["A_re"][h])
        M = np.linalg.solve(I - dt / 2 * A, np.column_stack([I + dt / 2 * A, dt * P["B"][h]]))
        Ab, Bb = M[:, :N], M[:, N]
        for t in range(L):
            x[:, h] = x[:, h] @ Ab.T + Bb[None] * u[:, t, h][:, None]
            yd[:, t, h] = x[:, h] @ P["C"][h] + P["D"][h] * u[:, t, h]
    assert rel(y, yd) < TOL
    assert rel(xL, x) < TOL


# ----------------------------------------------------------------------------
# LSSL: bilinear recurrence == direct matrix powers
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("Bsz,L,H,N", [(1, 1, 1, 1), (2, 7, 3, 5), (1, 23, 2, 6)])
def test_lssl_recurrence_equals_matrix_powers(Bsz, L, H, N):
    rng = np.random.default_rng(5)
    P = lssl_params(rng, H, N)
    u = rng.standard_normal((Bsz, L, H))
    x0 = rng.standard_normal((Bsz, H, N))
    y, xL = papers.lssl_bilinear(P, u, x0)
    A, Bv, I = P["A"], P["Bv"], np.eye(N)
    y_pow = np.zeros((Bsz, L, H))
    x_pow = np.zeros((Bsz, H, N))
    for h in range(H):
        dt = math.exp(P["log_dt"][h])
        Ab = np.linalg.solve(I - dt / 2 * A, I + dt / 2 * A)
        Bb = np.linalg.solve(I - dt / 2 * A, dt * Bv)
        pw = [np.linalg.matrix_power(Ab, k) for k in range(L + 1)]
        for t in range(L):
            # x_t = Ab^(t+1) x0 + sum_{s<=t} Ab^(t-s) Bb u_s
            xt = x0[:, h] @ pw[t + 1].T
            for s in range(t + 1):
                xt = xt + (pw[t - s] @ Bb)[None] * u[:, s, h][:, None]
            y_pow[:, t, h] = xt @ P["C"][h] + P["D"][h] * u[:, t, h]
            if t == L - 1:
                x_pow[:, h] = xt
    assert rel(y, y_pow) < 1e-10
    assert rel(xL, x_pow) < 1e-10


# ----------------------------------------------------------------------------
# S5: recurrence == MIMO convolution
# ----------------------------------------------------------------------------

def test_s5_recurrence_equals_mimo_convolution():
    rng = np.random.default_rng(6)
    Bsz, L, H, Pn = 2, 13, 3, 5
    P = s5_params(rng, H, Pn)
    u = rng.standard_normal((Bsz, L, H))
    y, xL = papers.s5(P, u)
    dt = np.exp(P["log_dt"])
    Lam = P["Lambda"]
    Bb = (np.expm1(Lam * dt) / Lam)[:, None] * P["B"]
    yc = np.zeros((Bsz, L, H))
    for t in range(L):
        for s in range(t + 1):
            K = np.real(P["C"] @ np.diag(np.exp((t - s) * Lam * dt)) @ Bb)  # (H, H)
            yc[:, t] += u[:, s] @ K.T
    yc += P["D"] * u
    assert rel(y, yc) < TOL


# ----------------------------------------------------------------------------
# LRU: |lambda| and gamma two ways, recurrence == powers of lambda
# ----------------------------------------------------------------------------

def test_lru_modulus_and_gamma_two_ways():
    rng = np.random.default_rng(7)
    P = lru_params(rng, 3, 6)
    lam = np.exp(-np.exp(P["nu_log"]) + 1j * np.exp(P["theta_log"]))
    mod = np.exp(-np.exp(P["nu_log"]))
    assert rel(np.abs(lam), mod) < 1e-14
    assert rel(np.angle(lam), np.angle(np.exp(1j * np.exp(P["theta_log"])))) < 1e-12
    g1 = np.sqrt(1 - np.abs(lam) ** 2)
    g2 = np.sqrt(-np.expm1(-2 * np.exp(P["nu_log"])))
    assert rel(g1, g2) < 1e-12


def test_lru_recurrence_equals_powers():
    rng = np.random.default_rng(8)
    Bsz, L, H, N = 2, 19, 3, 5
    P = lru_params(rng, H, N)
    u = rng.standard_normal((Bsz, L, H))
    x0 = crandn(rng, Bsz, N)
    y, xL = papers.lru(P, u, x0)
    lam = np.exp(-np.exp(P["nu_log"]) + 1j * np.exp(P["theta_log"]))
    g = np.sqrt(-np.expm1(-2 * np.exp(P["nu_log"])))
    yc = np.zeros((Bsz, L, H))
    for t in range(L):
        xt = lam ** (t + 1) * x0
        for s in range(t + 1):
            xt = xt + lam ** (t - s) * g * (u[:, s] @ P["B"].T)
        yc[:, t] = np.real(xt @ P["C"].T) + P["D"] * u[:, t]
        if t == L - 1:
            assert rel(xL, xt) < TOL
    assert rel(y, yc) < TOL


# ----------------------------------------------------------------------------
# Mamba / Mamba-2: vectorized oracle == scalar per-channel loops
# ----------------------------------------------------------------------------

def _sp(z):
    return math.log1p(math.exp(z)) if z < 30 else z + math.log1p(math.exp(-z))


@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_equals_scalar_loops(reverse):
    rng = np.random.default_rng(9)
    Bsz, L, H, N, R = 2, 9, 3, 4, 2
    P = mamba_params(rng, H, N, R)
    u = rng.standard_normal((Bsz, L, H))
    x0 = rng.standard_normal((Bsz, H, N))
    y, xL = papers.mamba(P, u, x0, reverse=reverse)
    ys = np.zeros((Bsz, L, H))
    xs = x0.copy()
    order = range(L - 1, -1, -1) if reverse else range(L)
    for b in range(Bsz):
        for t in order:
            r = [sum(P["dt_proj2"][i, j] * u[b, t, j] for j in range(H)) for i in range(R)]
            for h in range(H):
                dt = _sp(sum(P["dt_proj"][h, i] * r[i] for i in range(R)) + P["dt_bias"][h])
                acc = 0.0
                for n in range(N):
                    Bn = sum(P["B_proj"][n, j] * u[b, t, j] for j in range(H))
                    Cn = sum(P["C_proj"][n, j] * u[b, t, j] for j in range(H))
                    a = -math.exp(P["A_log"][h, n])
                    xs[b, h, n] = math.exp(dt * a) * xs[b, h, n] + dt * Bn * u[b, t, h]
                    acc += Cn * xs[b, h, n]
                ys[b, t, h] = acc + P["D"][h] * u[b, t, h]
    assert rel(y, ys) < TOL
    assert rel(xL, xs) < TOL


def test_reverse_is_causal_on_flipped_sequence():
    rng = np.random.default_rng(10)
    u = rng.standard_normal((2, 8, 3))
    cases = [
        (papers.s4d_zoh, s4d_params(rng, 3, 4)),
        (papers.s4d_real_bilinear, s4d_real_params(rng, 3, 4)),
        (papers.lssl_bilinear, lssl_params(rng, 3, 4)),
        (papers.s5, s5_params(rng, 3, 4)),
        (papers.lru, lru_params(rng, 3, 4)),
        (papers.mamba, mamba_params(rng, 3, 4, 1)),
    ]
    for oracle, P in cases:
        y_r, x_r = oracle(P, u, reverse=True)
        y_f, x_f = oracle(P, u[:, ::-1])
        assert rel(y_r, y_f[:, ::-1]) < 1e-14, oracle.__name__
        assert rel(x_r, x_f) < 1e-14, oracle.__name__


def test_mamba2_equals_scalar_loops():
    rng = np.random.default_rng(11)
    Bsz, L, Hd, Pd, N = 2, 7, 3, 2, 4
    P = mamba2_params(rng, Hd, Pd, N)
    u = rng.standard_normal((Bsz, L, Hd, Pd))
    y, xL = papers.mamba2(P, u)
    ys = np.zeros((Bsz, L, Hd, Pd))
    xs = np.zeros((Bsz, Hd, Pd, N))
    for b in range(Bsz):
        for t in range(L):
            flat = [u[b, t, i, j] for i in range(Hd) for j in range(Pd)]   # row-major (Hd, P)
            Bn = [sum(P["B_proj"][n, k] * flat[k] for k in range(Hd * Pd)) for n in range(N)]
            Cn = [sum(P["C_proj"][n, k] * flat[k] for k in range(Hd * Pd)) for n in range(N)]
            for h in range(Hd):
                dt = _sp(sum(P["dt_proj"][h, k] * flat[k] for k in range(Hd * Pd)) + P["dt_bias"][h])
                a = math.exp(-dt * math.exp(P["A_log"][h]))
                for p in range(Pd):
                    acc = 0.0
                    for n in range(N):
                        xs[b, h, p, n] = a * xs[b, h, p, n] + dt * Bn[n] * u[b, t, h, p]
                        acc += Cn[n] * xs[b, h, p, n]
                    ys[b, t, h, p] = acc + P["D"][h] * u[b, t, h, p]
    assert rel(y, ys) < TOL
    assert rel(xL, xs) < TOL


def test_mamba2_with_one_channel_per_head_is_mamba_with_tied_A():
    # Mamba-2 with P = 1 is Mamba whose A is constant along N and whose dt
    # projection is full rank (dt_proj2 = identity).
    rng = np.random.default_rng(12)
    Bsz, L, Hd, N = 2, 10, 3, 4
    P2 = mamba2_params(rng, Hd, 1, N)
    P1 = {
        "A_log": np.repeat(P2["A_log"][:, None], N, axis=1),
        "D": P2["D"],
        "dt_bias": P2["dt_bias"],
        "dt_proj": P2["dt_proj"],
        "dt_proj2": np.eye(Hd),
        "B_proj": P2["B_proj"],
        "C_proj": P2["C_proj"],
    }
    u = rng.standard_normal((Bsz, L, Hd))
    y2, x2 = papers.mamba2(P2, u[..., None])
    y1, x1 = papers.mamba(P1, u)
    assert rel(y2[..., 0], y1) < TOL
    assert rel(x2[:, :, 0, :], x1) < TOL


def test_bidirectional_is_sum_of_directions():
    rng = np.random.default_rng(13)
    H, N = 3, 4
    Pa, Pb = mamba_params(rng, H, N, 1), mamba_params(rng, H, N, 1)
    P = {k: np.stack([Pa[k], Pb[k]]) for k in Pa}
    u = rng.standard_normal((2, 7, H))
    y = papers.bidirectional(papers.mamba, P, u)
    ya, _ = papers.mamba(Pa, u)
    yb, _ = papers.mamba(Pb, u[:, ::-1])
    assert rel(y, ya + yb[:, ::-1]) < 1e-14


def test_softplus_is_stable():
    z = np.array([-800.0, -30.0, -1.0, 0.0, 1.0, 30.0, 800.0])
    ref = np.array([_sp(v) if v < 700 else v for v in z])
    ref[0] = 0.0
    assert np.allclose(papers.softplus(z), ref, rtol=1e-15, atol=1e-300)


# ----------------------------------------------------------------------------
# the gated layers: recurrences against their parallel (attention-like) forms
# ----------------------------------------------------------------------------

def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def rglru_params(rng, H):
    return {"Lambda": rng.uniform(2.0, 6.0, H),
            "r_proj": rng.standard_normal((H, H)) * 0.5, "r_proj_bias": rng.standard_normal(H) * 0.5,
            "i_proj": rng.standard_normal((H, H)) * 0.5, "i_proj_bias": rng.standard_normal(H) * 0.5}


def test_rglru_equals_products_of_gates():
    """h_t = sum_{s<=t} (prod_{s<r<=t} a_r) b_s + (prod_{r<=t} a_r) h_0, a_t in log space."""
    rng = np.random.default_rng(20)
    Bsz, L, H = 2, 11, 3
    P = rglru_params(rng, H)
    u = rng.standard_normal((Bsz, L, H))
    h0 = rng.standard_normal((Bsz, H))
    y, hL = papers.rglru(P, u, h0)
    r = _sig(u @ P["r_proj"].T + P["r_proj_bias"])
    i = _sig(u @ P["i_proj"].T + P["i_proj_bias"])
    log_a = 8.0 * r * -np.logaddexp(0.0, -P["Lambda"])      # log sigmoid(Lambda)^(8 r)
    b = np.sqrt(-np.expm1(2 * log_a)) * i * u
    cum = np.cumsum(log_a, axis=1)                           # sum_{r<=t} log a_r
    y2 = np.zeros_like(y)
    for t in range(L):
        y2[:, t] = np.exp(cum[:, t]) * h0
        for s in range(t + 1):
            y2[:, t] += np.exp(cum[:, t] - cum[:, s]) * b[:, s]
    assert rel(y, y2) < TOL
    assert rel(hL, y2[:, -1]) < TOL


def _gla_params(rng, D, Hd, Dk, Dv, R):
    return {"q_proj": rng.standard_normal((Hd * Dk, D)) * 0.5, "k_proj": rng.standard_normal((Hd * Dk, D)) * 0.5,
            "v_proj": rng.standard_normal((Hd * Dv, D)) * 0.5, "alpha_proj2": rng.standard_normal((R, D)),
            "alpha_proj": rng.standard_normal((Hd * Dk, R)), "alpha_proj_bias": rng.standard_normal(Hd * Dk)}


def test_gla_equals_its_parallel_form():
    """GLA's parallel form (Yang et al. 2024, Sec. 4.2): o_t = sum_{s<=t} (q_t * b_t / b_s) k_s^T v_s
    with b_t = prod_{r<=t} alpha_r, from a zero state."""
    rng = np.random.default_rng(21)
    Bsz, L, D, Hd, Dk, Dv, R = 2, 9, 4, 2, 3, 2, 2
    P = _gla_params(rng, D, Hd, Dk, Dv, R)
    u = rng.standard_normal((Bsz, L, D))
    y, SL = papers.gla(P, u, Hd=Hd)
    q = (u @ P["q_proj"].T).reshape(Bsz, L, Hd, Dk)
    k = (u @ P["k_proj"].T).reshape(Bsz, L, Hd, Dk)
    v = (u @ P["v_proj"].T).reshape(Bsz, L, Hd, Dv)
    g = (u @ P["alpha_proj2"].T) @ P["alpha_proj"].T + P["alpha_proj_bias"]
    logb = np.cumsum(-np.logaddexp(0.0, -g).reshape(Bsz, L, Hd, Dk) / 16.0, axis=1)
    scores = np.einsum("bthk,bshk->bhts", q * np.exp(logb), k * np.exp(-logb))
    scores = scores * np.tril(np.ones((L, L)))
    y2 = np.einsum("bhts,bshv->bthv", scores, v)
    assert rel(y, y2) < TOL
    S2 = np.einsum("bshk,bshv->bhkv", np.exp(logb[:, -1:] - logb) * k, v)
    assert rel(SL, S2) < TOL


def test_retnet_equals_its_parallel_form():
    """RetNet's parallel form (Sun et al. 2023, eq. (5)): (Q K^T * D) V, D_nm = gamma^(n-m) for n >= m."""
    rng = np.random.default_rng(22)
    Bsz, L, D, Hd, Dk, Dv = 2, 10, 4, 3, 2, 3
    P = {"q_proj": rng.standard_normal((Hd * Dk, D)), "k_proj": rng.standard_normal((Hd * Dk, D)),
         "v_proj": rng.standard_normal((Hd * Dv, D))}
    u = rng.standard_normal((Bsz, L, D))
    y, _ = papers.retnet(P, u, Hd=Hd)
    q = (u @ P["q_proj"].T).reshape(Bsz, L, Hd, Dk)
    k = (u @ P["k_proj"].T).reshape(Bsz, L, Hd, Dk)
    v = (u @ P["v_proj"].T).reshape(Bsz, L, Hd, Dv)
    n = np.arange(L)
    y2 = np.zeros_like(y)
    for h in range(Hd):
        gamma = 1 - 2.0 ** (-5 - h)
        Dm = np.where(n[:, None] >= n[None, :], gamma ** (n[:, None] - n[None, :]).clip(0), 0.0)
        y2[:, :, h] = np.einsum("bts,bsv->btv", np.einsum("btk,bsk->bts", q[:, :, h], k[:, :, h]) * Dm, v[:, :, h])
    assert rel(y, y2) < TOL


def test_gss_equals_convolution_with_the_dss_kernel():
    """The DSS inside GSS is a convolution with K_l = 2 Re(sum_n W dB dA^l) (Gupta et al. 2022)."""
    rng = np.random.default_rng(23)
    Bsz, L, E, H, F, N = 2, 12, 4, 3, 5, 2
    P = {"ln_scale": rng.uniform(0.5, 1.5, E), "ln_bias": rng.standard_normal(E) * 0.1,
         "Lambda": -rng.uniform(0.1, 1.0, (H, N)) + 1j * rng.uniform(-3, 3, (H, N)),
         "log_dt": np.log(rng.uniform(0.05, 0.5, H)), "W": crandn(rng, H, N),
         "v_proj": rng.standard_normal((F, E)), "v_proj_bias": rng.standard_normal(F),
         "u_proj": rng.standard_normal((H, E)), "u_proj_bias": rng.standard_normal(H),
         "y_proj2": rng.standard_normal((F, H)), "y_proj2_bias": rng.standard_normal(F),
         "y_proj": rng.standard_normal((E, F)), "y_proj_bias": rng.standard_normal(E)}
    x = rng.standard_normal((Bsz, L, E))
    y, _ = papers.gss(P, x)
    xn = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) * P["ln_scale"] + P["ln_bias"]
    gelu = lambda z: 0.5 * z * (1 + np.tanh(0.7978845608028654 * (z + 0.044715 * z ** 3)))  # noqa: E731
    v = gelu(xn @ P["v_proj"].T + P["v_proj_bias"])
    z = gelu(xn @ P["u_proj"].T + P["u_proj_bias"])
    dt = np.exp(P["log_dt"])[:, None]
    dA = np.exp(dt * P["Lambda"])
    dB = np.expm1(dt * P["Lambda"]) / P["Lambda"]
    K = np.stack([2 * np.real(np.sum(P["W"] * dB * dA ** l, axis=-1)) for l in range(L)])   # (L, H)
    yd = causal_conv(K, z)
    y2 = ((yd @ P["y_proj2"].T + P["y_proj2_bias"]) * v) @ P["y_proj"].T + P["y_proj_bias"] + x
    assert rel(y, y2) < TOL


def test_s7_equals_scalar_loops():
    rng = np.random.default_rng(24)
    Bsz, L, H, N = 2, 8, 3, 4
    P = {"Lambda": rng.standard_normal(N), "w_proj": rng.standard_normal((N, H)) * 0.5,
         "B_proj": rng.standard_normal((N * H, H)) * 0.3, "C_proj": rng.standard_normal((H * N, H)) * 0.3,
         "Dk_proj": rng.standard_normal((H, H)), "x_proj": rng.standard_normal((N, H))}
    u = rng.standard_normal((Bsz, L, H))
    x0 = rng.standard_normal((Bsz, N))
    y, xL = papers.s7(P, u, x0)
    y2 = np.zeros_like(y)
    for b in range(Bsz):
        x = x0[b].copy()
        for t in range(L):
            ut = u[b, t]
            for n in range(N):
                w = P["Lambda"][n] + sum(P["w_proj"][n, h] * ut[h] for h in range(H))
                a = 1 - 1 / (w * w + 0.5)
                assert -1 <= a < 1                               # the reparameterization is stable
                bu = sum(P["B_proj"][n * H + h] @ ut * ut[h] for h in range(H))
                x[n] = a * x[n] + bu + P["x_proj"][n] @ ut
            for h in range(H):
                y2[b, t, h] = sum(P["C_proj"][h * N + n] @ ut * x[n] for n in range(N)) + (P["Dk_proj"][h] @ ut) * ut[h]
        assert rel(xL[b], x) < TOL
    assert rel(y, y2) < TOL
