"""Independent oracles, written from the papers' equations.

Plain float64 / complex128 NumPy, one explicit loop over time, no cleverness.
Nothing in this file imports or calls ``ssmc``: it is the yardstick the compiler
is measured against, so it must not share code (or mistakes) with it.

Every oracle has the signature ``oracle(P, u, x0=None, reverse=False)`` where

* ``P`` is a dict of NumPy parameter arrays named as in the ``.ssm`` spec (the
  keys of the generated module's ``state_dict()``);
* ``u`` is the input of shape ``(B, L, *input dims)``;
* ``x0`` is the state entering at the first visited token, shape
  ``(B, *state dims)`` (zeros when ``None``);
* ``reverse`` visits the tokens ``t = L .. 1`` instead of ``1 .. L``;

and returns ``(y, x_final)``: the output ``(B, L, *output dims)`` and the state
after the last visited token.

The ``linear(e, D)`` projections of the specs are stored like ``torch.nn.Linear``:
weight ``(out_features, in_features)`` applied as ``e_flat @ W.T`` (plus
``<name>_bias`` when present).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "s4d_zoh",
    "s4d_real_bilinear",
    "lssl_bilinear",
    "s5",
    "lru",
    "mamba",
    "mamba2",
    "bidirectional",
    "deltanet",
    "gated_deltanet",
    "longhorn",
    "rglru",
    "gla",
    "retnet",
    "gss",
    "s7",
    "gelu_tanh",
    "mamba3",
    "rwkv6",
    "vssd",
    "s5_bidirectional",
    "hydra",
    "linear_attention",
    "gsa",
    "hippo_legs",
    "hippo_legs_B",
    "hippo_legs_normal",
    "s4d_real",
    "s4d_lin",
    "s4d_inv",
    "softplus",
]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def _times(L, reverse):
    """The order in which the tokens are visited."""
    return range(L - 1, -1, -1) if reverse else range(L)


def _zeros_state(x0, shape, dtype):
    if x0 is None:
        return np.zeros(shape, dtype=dtype)
    x0 = np.asarray(x0)
    assert x0.shape == shape, f"initial state has shape {x0.shape}, expected {shape}"
    return x0.astype(dtype, copy=True)


def softplus(z):
    """log(1 + exp(z)), computed without overflow."""
    return np.logaddexp(0.0, z)


def gelu_tanh(z):
    """GELU in its tanh form (Hendrycks & Gimpel 2016, eq. in Sec. 2)."""
    return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))


def _linear(P, name, e_flat):
    """torch.nn.Linear convention: e_flat @ W.T (+ b)."""
    out = e_flat @ P[name].T
    if name + "_bias" in P:
        out = out + P[name + "_bias"]
    return out


# ----------------------------------------------------------------------------
# initializers written from the papers (used to check the compiler's inits)
# ----------------------------------------------------------------------------

def hippo_legs(N):
    """HiPPO-LegS (Gu et al. 2020, eq. (2) / Theorem 2):
    A[n,k] = -sqrt(2n+1) sqrt(2k+1) if n > k; -(n+1) if n == k; 0 if n < k."""
    A = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            if n > k:
                A[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                A[n, k] = -(n + 1)
    return A


def hippo_legs_B(N):
    """B[n] = sqrt(2n+1)."""
    return np.array([math.sqrt(2 * n + 1) for n in range(N)])


def hippo_legs_normal(N):
    """The normal part of HiPPO-LegS (S4, "NPLR"): A + P P^T with
    P[n] = sqrt(n + 1/2); it equals -1/2 I + (skew-symmetric)."""
    p = np.array([math.sqrt(n + 0.5) for n in range(N)])
    return hippo_legs(N) + np.outer(p, p)


def s4d_real(N):
    """S4D-Real: A_n = -(n+1)."""
    return np.array([-(n + 1.0) for n in range(N)])


def s4d_lin(N):
    """S4D-Lin: A_n = -1/2 + i pi n."""
    return np.array([-0.5 + 1j * math.pi * n for n in range(N)])


def s4d_inv(N):
    """S4D-Inv: A_n = -1/2 + i (N/pi) (N/(2n+1) - 1)."""
    return np.array([-0.5 + 1j * (N / math.pi) * (N / (2 * n + 1) - 1) for n in range(N)])


# ----------------------------------------------------------------------------
# S4D (Gu, Gupta, Goel, Re 2022), ZOH, complex diagonal
# ----------------------------------------------------------------------------

def s4d_zoh(P, u, x0=None, reverse=False):
    """S4D-Lin layer, "On the Parameterization and Initialization of Diagonal
    State Space Models", Sec. 3 / Listing 1:

        A  = -exp(log_A_real) + i A_imag            (H, N) complex
        dt = exp(log_dt)                            (H,)
        dA = exp(dt A)
        dB = (exp(dt A) - 1) / A                    (B = 1)
        x_t = dA x_{t-1} + dB u_t
        y_t = 2 Re(sum_n C x_t) + D u_t
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    A = -np.exp(P["log_A_real"]) + 1j * P["A_imag"]            # (H, N)
    N = A.shape[-1]
    dt = np.exp(P["log_dt"])[:, None]                          # (H, 1)
    dA = np.exp(dt * A)
    dB = (np.exp(dt * A) - 1.0) / A
    C = P["C"]
    D = P["D"]
    x = _zeros_state(x0, (Bsz, H, N), np.complex128)
    y = np.zeros((Bsz, L, H))
    for t in _times(L, reverse):
        x = dA * x + dB * u[:, t, :, None]
        y[:, t] = 2.0 * np.real(np.sum(C * x, axis=-1)) + D * u[:, t]
    return y, x


# ----------------------------------------------------------------------------
# S4D-Real with the bilinear transform, real diagonal
# ----------------------------------------------------------------------------

def s4d_real_bilinear(P, u, x0=None, reverse=False):
    """Diagonal real SSM x' = A x + B u, bilinear (Tustin) discretization:

        dA = (1 + dt/2 A) / (1 - dt/2 A)
        dB = dt B / (1 - dt/2 A)
        x_t = dA x_{t-1} + dB u_t
        y_t = sum_n C x_t + D u_t
    Parameters: A_re[H,N], B[H,N] (optional, ones when absent), C[H,N], D[H], log_dt[H].
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    A = P["A_re"]
    N = A.shape[-1]
    Bm = P["B"] if "B" in P else np.ones((H, N))
    dt = np.exp(P["log_dt"])[:, None]
    dA = (1.0 + dt / 2.0 * A) / (1.0 - dt / 2.0 * A)
    dB = dt * Bm / (1.0 - dt / 2.0 * A)
    C, D = P["C"], P["D"]
    x = _zeros_state(x0, (Bsz, H, N), np.float64)
    y = np.zeros((Bsz, L, H))
    for t in _times(L, reverse):
        x = dA * x + dB * u[:, t, :, None]
        y[:, t] = np.sum(C * x, axis=-1) + D * u[:, t]
    return y, x


# ----------------------------------------------------------------------------
# LSSL (Gu et al. 2021), dense HiPPO-LegS matrix, bilinear
# ----------------------------------------------------------------------------

def lssl_bilinear(P, u, x0=None, reverse=False):
    """"Combining Recurrent, Convolutional, and Continuous-time Models with
    Linear State-Space Layers", eq. (3), bilinear / generalized bilinear (alpha=1/2):

        Abar_h = (I - dt_h/2 A)^-1 (I + dt_h/2 A)
        Bbar_h = (I - dt_h/2 A)^-1 dt_h B
        x_t[h] = Abar_h x_{t-1}[h] + Bbar_h u_t[h]
        y_t[h] = sum_n C[h,n] x_t[h,n] + D[h] u_t[h]
    Parameters: A[N,N], Bv[N], C[H,N], D[H], log_dt[H].
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    A = P["A"]
    N = A.shape[0]
    Bv = P["Bv"]
    I = np.eye(N)
    dts = np.exp(P["log_dt"])
    Abar = np.zeros((H, N, N))
    Bbar = np.zeros((H, N))
    for h in range(H):
        dt = dts[h]
        inv = np.linalg.inv(I - dt / 2.0 * A)
        Abar[h] = inv @ (I + dt / 2.0 * A)
        Bbar[h] = inv @ (dt * Bv)
    C, D = P["C"], P["D"]
    x = _zeros_state(x0, (Bsz, H, N), np.float64)
    y = np.zeros((Bsz, L, H))
    for t in _times(L, reverse):
        xn = np.empty_like(x)
        for h in range(H):
            # x[b, h, :] <- Abar_h x[b, h, :] + Bbar_h u[b, t, h]
            xn[:, h, :] = x[:, h, :] @ Abar[h].T + Bbar[h][None, :] * u[:, t, h][:, None]
        x = xn
        y[:, t] = np.sum(C * x, axis=-1) + D * u[:, t]
    return y, x


# ----------------------------------------------------------------------------
# S5 (Smith, Warrington, Linderman 2023), MIMO, complex diagonal, ZOH
# ----------------------------------------------------------------------------

def s5(P, u, x0=None, reverse=False):
    """"Simplified State Space Layers for Sequence Modeling", eq. (6)-(7):

        Lambda_bar = exp(Lambda dt)                             (P,)
        B_bar      = Lambda^-1 (Lambda_bar - 1) * B             (P, H)
        x_t = Lambda_bar x_{t-1} + B_bar u_t
        y_t = Re(C x_t) + D u_t
    Parameters: Lambda[P] complex, B[P,H] complex, C[H,P] complex, D[H], log_dt[P].
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    Lam = P["Lambda"]
    Pn = Lam.shape[0]
    dt = np.exp(P["log_dt"])
    Lam_bar = np.exp(Lam * dt)
    B_bar = ((Lam_bar - 1.0) / Lam)[:, None] * P["B"]         # (P, H)
    C, D = P["C"], P["D"]
    x = _zeros_state(x0, (Bsz, Pn), np.complex128)
    y = np.zeros((Bsz, L, H))
    for t in _times(L, reverse):
        x = Lam_bar * x + u[:, t] @ B_bar.T                     # (B, P)
        y[:, t] = np.real(x @ C.T) + D * u[:, t]                # (B, H)
    return y, x


# ----------------------------------------------------------------------------
# LRU (Orvieto et al. 2023)
# ----------------------------------------------------------------------------

def lru(P, u, x0=None, reverse=False):
    """"Resurrecting Recurrent Neural Networks for Long Sequences", Sec. 3 /
    Appendix A:

        lam   = exp(-exp(nu_log) + i exp(theta_log))            (N,)
        gamma = sqrt(1 - |lam|^2)
        x_t = lam x_{t-1} + gamma * (B u_t)
        y_t = Re(C x_t) + D u_t
    Parameters: nu_log[N], theta_log[N], B[N,H] complex, C[H,N] complex, D[H].
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    lam = np.exp(-np.exp(P["nu_log"]) + 1j * np.exp(P["theta_log"]))
    N = lam.shape[0]
    gamma = np.sqrt(1.0 - np.abs(lam) ** 2)
    Bm, C, D = P["B"], P["C"], P["D"]
    x = _zeros_state(x0, (Bsz, N), np.complex128)
    y = np.zeros((Bsz, L, H))
    for t in _times(L, reverse):
        x = lam * x + gamma * (u[:, t] @ Bm.T)
        y[:, t] = np.real(x @ C.T) + D * u[:, t]
    return y, x


# ----------------------------------------------------------------------------
# Mamba selective SSM (Gu & Dao 2023)
# ----------------------------------------------------------------------------

def mamba(P, u, x0=None, reverse=False):
    """"Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
    Algorithm 2 (S6), with the low-rank dt projection of Sec. 3.6:

        dt_t = softplus(W_dt (W_r u_t) + dt_bias)               (H,)   W_r: H->R (dt_proj2), W_dt: R->H (dt_proj)
        B_t  = W_B u_t,  C_t = W_C u_t                          (N,)
        A    = -exp(A_log)                                      (H, N)
        Abar = exp(dt A),   Bbar u = dt B u                     (zoh on A, Euler on the input)
        x_t  = Abar x_{t-1} + dt_t[h] B_t[n] u_t[h]
        y_t  = sum_n C_t[n] x_t[h, n] + D[h] u_t[h]
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    A = -np.exp(P["A_log"])                                      # (H, N)
    N = A.shape[-1]
    D = P["D"]
    x = _zeros_state(x0, (Bsz, H, N), np.float64)
    y = np.zeros((Bsz, L, H))
    for t in _times(L, reverse):
        ut = u[:, t]                                             # (B, H)
        r = _linear(P, "dt_proj2", ut)                           # (B, R)
        dt = softplus(_linear(P, "dt_proj", r) + P["dt_bias"])   # (B, H)
        Bt = _linear(P, "B_proj", ut)                            # (B, N)
        Ct = _linear(P, "C_proj", ut)                            # (B, N)
        Abar = np.exp(dt[:, :, None] * A[None])                  # (B, H, N)
        BbarU = dt[:, :, None] * Bt[:, None, :] * ut[:, :, None]
        x = Abar * x + BbarU
        y[:, t] = np.sum(Ct[:, None, :] * x, axis=-1) + D * ut
    return y, x


# ----------------------------------------------------------------------------
# Mamba-2 / SSD (Dao & Gu 2024): scalar A per head
# ----------------------------------------------------------------------------

def mamba2(P, u, x0=None, reverse=False, dt_limit=None):
    """"Transformers are SSMs" (SSD), the recurrent form of Sec. 3 / 7:

        dt_t  = softplus(W_dt vec(u_t) + dt_bias)               (Hd,)
                (then limited to [lo, hi] with dt_limit = (lo, hi), as the
                reference Mamba2 module's dt_limit option does)
        B_t   = W_B vec(u_t), C_t = W_C vec(u_t)                (N,)
        a_t   = exp(dt_t A),  A = -exp(A_log)                   scalar per head
        x_t[hd,p,n] = a_t[hd] x_{t-1}[hd,p,n] + dt_t[hd] B_t[n] u_t[hd,p]
        y_t[hd,p]   = sum_n C_t[n] x_t[hd,p,n] + D[hd] u_t[hd,p]
    u has shape (B, L, Hd, P); vec() flattens (Hd, P) in that order.
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, Hd, Pd = u.shape
    A = -np.exp(P["A_log"])                                      # (Hd,)
    N = P["B_proj"].shape[0]
    D = P["D"]
    x = _zeros_state(x0, (Bsz, Hd, Pd, N), np.float64)
    y = np.zeros((Bsz, L, Hd, Pd))
    for t in _times(L, reverse):
        ut = u[:, t]                                             # (B, Hd, P)
        uf = ut.reshape(Bsz, Hd * Pd)
        dt = softplus(_linear(P, "dt_proj", uf) + P["dt_bias"])  # (B, Hd)
        if dt_limit is not None:
            lo, hi = dt_limit
            dt = np.where(dt < lo, lo, np.where(dt > hi, hi, dt))
        Bt = _linear(P, "B_proj", uf)                            # (B, N)
        Ct = _linear(P, "C_proj", uf)                            # (B, N)
        a = np.exp(dt * A)                                       # (B, Hd)
        x = (a[:, :, None, None] * x
             + dt[:, :, None, None] * Bt[:, None, None, :] * ut[:, :, :, None])
        y[:, t] = np.sum(Ct[:, None, None, :] * x, axis=-1) + D[:, None] * ut
    return y, x


# ----------------------------------------------------------------------------
# Mamba-3 (Lahoti et al. 2026): exponential-trapezoidal rule, complex state
# ----------------------------------------------------------------------------

def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def mamba3(P, u, x0=None, reverse=False):
    """"Mamba-3: Improved Sequence Modeling using State Space Principles", the SISO
    recurrence with the exponential-trapezoidal rule and a complex state whose
    transition rotates by data-dependent angles:

        dt_t    = softplus(W_dt vec(u_t) + dt_bias)            (Hd,)
        lam_t   = sigmoid(W_lam vec(u_t))                      (Hd,)  the trapezoid's weight
        theta_t = W_theta vec(u_t)                             (N,)   the angles
        B_t     = W_B vec(u_t) + i W_B2 vec(u_t),  C_t likewise (N,) complex
        alpha_t = exp(dt_t (-exp(A_log) + i theta_t))          (Hd, N)
        beta_t  = (1 - lam_t) dt_t alpha_t,  gamma_t = lam_t dt_t
        x_t = alpha_t x_{t-1} + beta_t B_{t-1} u_{t-1} + gamma_t B_t u_t   (B_{-1} u_{-1} = 0)
        y_t = Re(sum_n C_t[n] x_t[..., n]) + D u_t
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, Hd, Pd = u.shape
    a = -np.exp(P["A_log"])                                      # (Hd,)
    N = P["theta_proj"].shape[0]
    x = _zeros_state(x0, (Bsz, Hd, Pd, N), np.complex128)
    y = np.zeros((Bsz, L, Hd, Pd))
    last = np.zeros((Bsz, Hd, Pd, N), dtype=np.complex128)     # B_{t-1} u_{t-1}
    for t in _times(L, reverse):
        ut = u[:, t]
        uf = ut.reshape(Bsz, Hd * Pd)
        dt = softplus(_linear(P, "dt_proj", uf) + P["dt_bias"])     # (B, Hd)
        lam = _sigmoid(_linear(P, "lam_proj", uf))                  # (B, Hd)
        theta = _linear(P, "theta_proj", uf)                        # (B, N)
        Bt = _linear(P, "B_proj", uf) + 1j * _linear(P, "B_proj2", uf)
        Ct = _linear(P, "C_proj", uf) + 1j * _linear(P, "C_proj2", uf)
        alpha = np.exp(dt[:, :, None] * (a[None, :, None] + 1j * theta[:, None, :]))   # (B, Hd, N)
        beta = (1 - lam)[:, :, None] * dt[:, :, None] * alpha
        gamma = (lam * dt)[:, :, None]
        bu = Bt[:, None, None, :] * ut[:, :, :, None]               # (B, Hd, P, N)
        x = alpha[:, :, None, :] * x + beta[:, :, None, :] * last + gamma[:, :, None, :] * bu
        last = bu
        y[:, t] = np.real(np.sum(Ct[:, None, None, :] * x, axis=-1)) + P["D"][:, None] * ut
    return y, x


# ----------------------------------------------------------------------------
# RWKV-6 / Finch (Peng et al. 2024): time mixing
# ----------------------------------------------------------------------------

def rwkv6(P, x, S0=None, reverse=False):
    """"Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence",
    time mixing (Sec. 4) without the gate, group norm and output projection:

        xx_t   = x_{t-1} - x_t                     (x_{-1} = 0)
        lora_i(z) = W2_i tanh(W1_i z)
        xxx_t  = x_t + xx_t mu_x
        x*_t   = x_t + xx_t (mu_* + lora_*(xxx_t))      for * in w, k, v, r
        r_t = W_r x^r_t, k_t = W_k x^k_t, v_t = W_v x^v_t     (H, K), (H, K), (H, V)
        w_t = exp(-exp(w0 + lora_d(x^w_t)))                   (H, K)
        o_t = r_t (S_{t-1} + diag(u) k_t^T v_t)               (H, V)
        S_t = diag(w_t) S_{t-1} + k_t^T v_t                   (H, K, V)
    The lora weights are named as the spec's linear() calls: outer xw_proj, inner xw_proj2.
    """
    x = np.asarray(x, dtype=np.float64)
    Bsz, L, C = x.shape
    H, K = P["w0"].shape
    V = P["v_proj"].shape[0] // H
    S = _zeros_state(S0, (Bsz, H, K, V), np.float64)
    o = np.zeros((Bsz, L, H, V))
    before = np.zeros((Bsz, C))

    def lora(name, z):
        return _linear(P, name + "_proj", np.tanh(_linear(P, name + "_proj2", z)))

    for t in _times(L, reverse):
        xt = x[:, t]
        xx = before - xt
        before = xt
        xxx = xt + xx * P["mu_x"]
        branch = {c: xt + xx * (P["mu_" + c] + lora("x" + c, xxx)) for c in "wkvr"}
        r = _linear(P, "r_proj", branch["r"]).reshape(Bsz, H, K)
        k = _linear(P, "k_proj", branch["k"]).reshape(Bsz, H, K)
        v = _linear(P, "v_proj", branch["v"]).reshape(Bsz, H, V)
        w = np.exp(-np.exp(P["w0"] + lora("w", branch["w"]).reshape(Bsz, H, K)))
        kv = k[..., :, None] * v[..., None, :]                       # (B, H, K, V)
        o[:, t] = np.einsum("bhk,bhkv->bhv", r, S + P["u"][None, :, :, None] * kv)
        S = w[..., None] * S + kv
    return o, S


# ----------------------------------------------------------------------------
# several states in one layer (issue 9): the carried state is a tuple
# ----------------------------------------------------------------------------

def elu_plus_one(x):
    """phi(x) = elu(x) + 1: x + 1 for x > 0, exp(x) otherwise."""
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def linear_attention(P, u, x0=None, reverse=False, eps=1e-6):
    """Katharopoulos et al. (2020), "Transformers are RNNs", causal linear attention
    with its normaliser (eqs. 16-20), per head h:

        q_t, k_t = W_q u_t, W_k u_t  (H, Dk),   v_t = W_v u_t  (H, Dv)
        S_t = S_{t-1} + phi(k_t) v_t^T                      (H, Dk, Dv)
        z_t = z_{t-1} + phi(k_t)                            (H, Dk)
        y_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)       (H, Dv)

    with phi = elu + 1. x0 and the returned state are the pair (S, z).
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, _ = u.shape
    Wq, Wk, Wv = P["q_proj"], P["k_proj"], P["v_proj"]
    Dv_total = Wv.shape[0]
    S0, z0 = (None, None) if x0 is None else x0
    H, Dk, Dv = P["_dims"]   # the head count and sizes (the projections fix only products)
    S = _zeros_state(S0, (Bsz, H, Dk, Dv), np.float64)
    z = _zeros_state(z0, (Bsz, H, Dk), np.float64)
    assert Dv_total == H * Dv
    y = np.zeros((Bsz, L, H, Dv))
    for t in _times(L, reverse):
        ut = u[:, t]
        q = (ut @ Wq.T).reshape(Bsz, H, Dk)
        k = (ut @ Wk.T).reshape(Bsz, H, Dk)
        v = (ut @ Wv.T).reshape(Bsz, H, Dv)
        fq, fk = elu_plus_one(q), elu_plus_one(k)
        for b in range(Bsz):
            for h in range(H):
                S[b, h] = S[b, h] + np.outer(fk[b, h], v[b, h])
                z[b, h] = z[b, h] + fk[b, h]
                y[b, t, h] = (fq[b, h] @ S[b, h]) / (fq[b, h] @ z[b, h] + eps)
    return y, (S, z)


def gsa(P, u, x0=None, reverse=False):
    """Zhang et al. (2024), "Gated Slot Attention" (eqs. of Sec. 3), per head h with M
    slots and one forget gate alpha_t in (0, 1)^M:

        q_t, k_t = W_q u_t, W_k u_t (H, Dk),  v_t = W_v u_t (H, Dv)
        alpha_t  = sigmoid(W_alpha u_t)                     (H, M)
        K_t = K_{t-1} diag(alpha_t) + k_t (1 - alpha_t)^T   (H, Dk, M)
        V_t = diag(alpha_t) V_{t-1} + (1 - alpha_t) v_t^T   (H, M, Dv)
        o_t = V_t^T softmax(K_t^T q_t / sqrt(Dk))           (H, Dv)

    x0 and the returned state are the pair (K, V).
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, _ = u.shape
    H, Dk, Dv, M = P["_dims"]
    K0, V0 = (None, None) if x0 is None else x0
    K = _zeros_state(K0, (Bsz, H, Dk, M), np.float64)
    V = _zeros_state(V0, (Bsz, H, M, Dv), np.float64)
    y = np.zeros((Bsz, L, H, Dv))
    for t in _times(L, reverse):
        ut = u[:, t]
        q = (ut @ P["q_proj"].T).reshape(Bsz, H, Dk)
        k = (ut @ P["k_proj"].T).reshape(Bsz, H, Dk)
        v = (ut @ P["v_proj"].T).reshape(Bsz, H, Dv)
        alpha = 1.0 / (1.0 + np.exp(-(ut @ P["alpha_proj"].T).reshape(Bsz, H, M)))
        for b in range(Bsz):
            for h in range(H):
                a = alpha[b, h]
                K[b, h] = K[b, h] * a[None, :] + np.outer(k[b, h], 1.0 - a)
                V[b, h] = a[:, None] * V[b, h] + np.outer(1.0 - a, v[b, h])
                score = K[b, h].T @ q[b, h] / math.sqrt(Dk)
                w = np.exp(score - score.max())
                w = w / w.sum()
                y[b, t, h] = V[b, h].T @ w
    return y, (K, V)


# ----------------------------------------------------------------------------
# the delta rule: DeltaNet, Gated DeltaNet, Longhorn
# ----------------------------------------------------------------------------

def _per_head(P, name, uf, Bsz, H):
    """linear(u, H, D): the flattened (H, D) features, split per head."""
    out = _linear(P, name, uf)
    return out.reshape(Bsz, H, -1)


def deltanet(P, u, x0=None, reverse=False):
    """DeltaNet (Schlag et al. 2021; Yang et al. 2024), the delta rule as an error correction
    of the fast weights S (one Dv x Dk matrix per head):

        k_t = W_k u_t / ||W_k u_t||  per head,   q_t = Dk^-1/2 W_q u_t,   v_t = W_v u_t
        beta_t = sigmoid(W_beta u_t)              (H,)
        S_t = S_{t-1} + beta_t (v_t - S_{t-1} k_t) k_t^T
        o_t = S_t q_t                             (H, Dv)

    u (B, L, D); the state (B, H, Dv, Dk)."""
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, _ = u.shape
    H = P["beta_proj"].shape[0]
    Dk = P["kr_proj"].shape[0] // H
    Dv = P["v_proj"].shape[0] // H
    S = _zeros_state(x0, (Bsz, H, Dv, Dk), np.float64).copy()
    o = np.zeros((Bsz, L, H, Dv))
    for t in _times(L, reverse):
        uf = u[:, t]
        kr = _per_head(P, "kr_proj", uf, Bsz, H)
        k = kr / np.sqrt(np.sum(kr * kr, axis=-1, keepdims=True))
        q = _per_head(P, "q_proj", uf, Bsz, H) / math.sqrt(Dk)
        v = _per_head(P, "v_proj", uf, Bsz, H)
        beta = _sigmoid(_linear(P, "beta_proj", uf))            # (B, H)
        for b in range(Bsz):
            for h in range(H):
                err = v[b, h] - S[b, h] @ k[b, h]                # what the memory gets wrong
                S[b, h] = S[b, h] + beta[b, h] * np.outer(err, k[b, h])
                o[b, t, h] = S[b, h] @ q[b, h]
    return o, S


def gated_deltanet(P, u, x0=None, reverse=False):
    """Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025), eq. (10) of the paper:

        S_t = S_{t-1} (alpha_t (I - beta_t k_t k_t^T)) + beta_t v_t k_t^T,   o_t = S_t q_t
        alpha_t = exp(-exp(A_log) * softplus(W_a u_t + dt_bias))   (H,), Mamba-2's gate

    with k, q, v, beta as in DeltaNet."""
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, _ = u.shape
    H = P["beta_proj"].shape[0]
    Dk = P["kr_proj"].shape[0] // H
    Dv = P["v_proj"].shape[0] // H
    S = _zeros_state(x0, (Bsz, H, Dv, Dk), np.float64).copy()
    o = np.zeros((Bsz, L, H, Dv))
    for t in _times(L, reverse):
        uf = u[:, t]
        kr = _per_head(P, "kr_proj", uf, Bsz, H)
        k = kr / np.sqrt(np.sum(kr * kr, axis=-1, keepdims=True))
        q = _per_head(P, "q_proj", uf, Bsz, H) / math.sqrt(Dk)
        v = _per_head(P, "v_proj", uf, Bsz, H)
        beta = _sigmoid(_linear(P, "beta_proj", uf))
        alpha = np.exp(-np.exp(P["A_log"]) * softplus(_linear(P, "alpha_proj", uf) + P["dt_bias"]))
        for b in range(Bsz):
            for h in range(H):
                kk = k[b, h]
                A = alpha[b, h] * (np.eye(Dk) - beta[b, h] * np.outer(kk, kk))
                S[b, h] = S[b, h] @ A + beta[b, h] * np.outer(v[b, h], kk)
                o[b, t, h] = S[b, h] @ q[b, h]
    return o, S


def longhorn(P, u, x0=None, reverse=False):
    """Longhorn (Liu et al. 2025): per channel d, the implicit (closed-form) solution of the
    online regression  min_s ||s - S_{t-1}[d]||^2 + beta_t[d] (s . k_t - u_t[d])^2 :

        eps_t = beta_t / (1 + beta_t k_t^T k_t)          (D,)
        S_t[d] = S_{t-1}[d] - eps_t[d] (S_{t-1}[d] . k_t - u_t[d]) k_t
        y_t = S_t q_t                                     (D,)

    with k_t = W_k u_t, q_t = W_q u_t (N,), beta_t = sigmoid(W_beta u_t) (D,)."""
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, D = u.shape
    N = P["k_proj"].shape[0]
    S = _zeros_state(x0, (Bsz, D, N), np.float64).copy()
    y = np.zeros((Bsz, L, D))
    for t in _times(L, reverse):
        ut = u[:, t]
        k = _linear(P, "k_proj", ut)
        q = _linear(P, "q_proj", ut)
        beta = _sigmoid(_linear(P, "beta_proj", ut))
        for b in range(Bsz):
            eps = beta[b] / (1.0 + beta[b] * (k[b] @ k[b]))
            for d in range(D):
                pred = S[b, d] @ k[b]
                S[b, d] = S[b, d] - eps[d] * (pred - ut[b, d]) * k[b]
            y[b, t] = S[b] @ q[b]
    return y, S


# ----------------------------------------------------------------------------
# bidirectional scans (Vision Mamba style)
# ----------------------------------------------------------------------------

def bidirectional(oracle, P, u, params="separate", merge="add"):
    """A causal and a reverse pass of the whole layer, outputs merged.

    With ``params="separate"`` every parameter has a leading axis of size 2:
    index 0 drives the causal pass, index 1 the reverse pass.
    Returns only ``y`` (a bidirectional layer has no single final state).
    """
    if params == "separate":
        P_f = {k: v[0] for k, v in P.items()}
        P_b = {k: v[1] for k, v in P.items()}
    else:
        P_f = P_b = P
    y_f, _ = oracle(P_f, u, reverse=False)
    y_b, _ = oracle(P_b, u, reverse=True)
    if merge == "add":
        return y_f + y_b
    if merge == "mean":
        return (y_f + y_b) / 2.0
    raise ValueError(merge)


# ----------------------------------------------------------------------------
# Griffin's RG-LRU (De et al. 2024)
# ----------------------------------------------------------------------------

def rglru(P, u, x0=None, reverse=False):
    """"Griffin: Mixing Gated Linear Recurrences with Local Attention for
    Efficient Language Models", Sec. 2.4, eq. (1)-(4), c = 8:

        r_t = sigmoid(W_a x_t + b_a)                            recurrence gate
        i_t = sigmoid(W_x x_t + b_x)                            input gate
        a_t = a^(c r_t),  a = sigmoid(Lambda)
        h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)
    computed as written: a power of sigmoid(Lambda), not in log space.
    Parameters: Lambda[H], r_proj (W_a), r_proj_bias, i_proj (W_x), i_proj_bias.
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    a_base = 1.0 / (1.0 + np.exp(-P["Lambda"]))                 # (H,)
    c = 8.0
    h = _zeros_state(x0, (Bsz, H), np.float64)
    y = np.zeros((Bsz, L, H))
    for t in _times(L, reverse):
        xt = u[:, t]
        r = 1.0 / (1.0 + np.exp(-(xt @ P["r_proj"].T + P["r_proj_bias"])))
        i = 1.0 / (1.0 + np.exp(-(xt @ P["i_proj"].T + P["i_proj_bias"])))
        a = a_base[None, :] ** (c * r)
        h = a * h + np.sqrt(1.0 - a ** 2) * (i * xt)
        y[:, t] = h
    return y, h


# ----------------------------------------------------------------------------
# Gated linear attention (Yang et al. 2024) and RetNet's retention (Sun et al. 2023)
# ----------------------------------------------------------------------------

def _heads(P, name, ut, Hd):
    """A linear map of the token split into heads: (B, D) -> (B, Hd, d)."""
    z = _linear(P, name, ut)
    return z.reshape(z.shape[0], Hd, -1)


def gla(P, u, x0=None, reverse=False, *, Hd):
    """"Gated Linear Attention Transformers with Hardware-Efficient Training",
    Sec. 4.1, per head (the matrix form of the recurrence, one head at a time):

        alpha_t = sigmoid(x_t W_a1 W_a2 + b_a)^(1/16)           (d_k,)
        S_t = diag(alpha_t) S_{t-1} + k_t^T v_t                  (d_k, d_v)
        o_t = q_t S_t                                            (d_v,)
    W_a1 = alpha_proj2 (D -> 16), W_a2 = alpha_proj (16 -> Hd * d_k, bias b_a);
    Hd is the number of heads.
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, _ = u.shape
    Dk = P["q_proj"].shape[0] // Hd
    Dv = P["v_proj"].shape[0] // Hd
    S = _zeros_state(x0, (Bsz, Hd, Dk, Dv), np.float64)
    y = np.zeros((Bsz, L, Hd, Dv))
    for t in _times(L, reverse):
        ut = u[:, t]
        q = _heads(P, "q_proj", ut, Hd)
        k = _heads(P, "k_proj", ut, Hd)
        v = _heads(P, "v_proj", ut, Hd)
        g = _linear(P, "alpha_proj", ut @ P["alpha_proj2"].T)
        alpha = (1.0 / (1.0 + np.exp(-g))).reshape(Bsz, Hd, Dk) ** (1.0 / 16.0)
        Sn = np.empty_like(S)
        for b in range(Bsz):
            for h in range(Hd):
                Sn[b, h] = np.diag(alpha[b, h]) @ S[b, h] + np.outer(k[b, h], v[b, h])
                y[b, t, h] = q[b, h] @ Sn[b, h]
        S = Sn
    return y, S


def retnet(P, u, x0=None, reverse=False, *, Hd):
    """"Retentive Network: A Successor to Transformer for Large Language Models",
    Sec. 2.1 eq. (6) (recurrent form) and Sec. 2.2 (multi-scale: one gamma per head):

        gamma_h = 1 - 2^(-5 - h)
        S_n = gamma_h S_{n-1} + K_n^T V_n                        (d_k, d_v) per head
        Retention(X_n) = Q_n S_n
    without xPos and without the d^-1/2 scale; Hd is the number of heads.
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, _ = u.shape
    Dk = P["q_proj"].shape[0] // Hd
    Dv = P["v_proj"].shape[0] // Hd
    gamma = [1.0 - 2.0 ** (-5 - h) for h in range(Hd)]
    S = _zeros_state(x0, (Bsz, Hd, Dk, Dv), np.float64)
    y = np.zeros((Bsz, L, Hd, Dv))
    for t in _times(L, reverse):
        ut = u[:, t]
        q = _heads(P, "q_proj", ut, Hd)
        k = _heads(P, "k_proj", ut, Hd)
        v = _heads(P, "v_proj", ut, Hd)
        Sn = np.empty_like(S)
        for h in range(Hd):
            Sn[:, h] = gamma[h] * S[:, h] + k[:, h, :, None] * v[:, h, None, :]
            y[:, t, h] = np.einsum("bk,bkv->bv", q[:, h], Sn[:, h])
        S = Sn
    return y, S


# ----------------------------------------------------------------------------
# GSS (Mehta et al. 2023): DSS inside a gated MLP
# ----------------------------------------------------------------------------

def gss(P, u, x0=None, reverse=False):
    """"Long Range Language Modeling via Gated State Spaces", Fig. 1:

        xn = LayerNorm(x)                  (eps 1e-6, learned scale and offset)
        v  = gelu(xn W_v + b_v)            (F,)
        z  = gelu(xn W_u + b_u)            (H,)
        y  = DSS(z): per channel h and mode n, ZOH of Lambda with step dt_h,
             s_t = exp(dt Lambda) s_{t-1} + (exp(dt Lambda) - 1) / Lambda * z_t,
             y_t = 2 Re(sum_n W s_t)
        o  = ((y W_1 + b_1) * v) W_2 + b_2 + x
    with gelu in its tanh form. Parameters named as in examples/gss.ssm.
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, E = u.shape
    Lam = P["Lambda"]
    H, N = Lam.shape
    dt = np.exp(P["log_dt"])[:, None]
    dA = np.exp(dt * Lam)
    dB = (dA - 1.0) / Lam
    s = _zeros_state(x0, (Bsz, H, N), np.complex128)
    out = np.zeros((Bsz, L, E))
    for t in _times(L, reverse):
        xt = u[:, t]
        mu = xt.mean(axis=-1, keepdims=True)
        var = ((xt - mu) ** 2).mean(axis=-1, keepdims=True)
        xn = (xt - mu) / np.sqrt(var + 1e-6) * P["ln_scale"] + P["ln_bias"]
        v = gelu_tanh(_linear(P, "v_proj", xn))
        z = gelu_tanh(_linear(P, "u_proj", xn))
        s = dA * s + dB * z[:, :, None]
        yd = 2.0 * np.real(np.sum(P["W"] * s, axis=-1))        # (B, H)
        out[:, t] = _linear(P, "y_proj", _linear(P, "y_proj2", yd) * v) + xt
    return out, s


# ----------------------------------------------------------------------------
# S7 (Soydan et al. 2024)
# ----------------------------------------------------------------------------

def s7(P, u, x0=None, reverse=False):
    """"S7: Selective and Simplified State Space Layers for Sequence Modeling":
    S5's MIMO recurrence with input-dependent matrices and the stable
    reparameterization f(w) = 1 - 1 / (w^2 + 1/2):

        Abar_k = f(Lambda + W_A u_k)                             (N,)
        x_k = Abar_k x_{k-1} + B(u_k) u_k + b(u_k)               B(u_k): (N, H)
        y_k = C(u_k) x_k + D(u_k) u_k                            C(u_k): (H, N)
    B(u), C(u), D(u), b(u) linear in u (B_proj, C_proj, Dk_proj, x_proj).
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    N = P["Lambda"].shape[0]
    x = _zeros_state(x0, (Bsz, N), np.float64)
    y = np.zeros((Bsz, L, H))
    for t in _times(L, reverse):
        ut = u[:, t]
        w = P["Lambda"] + ut @ P["w_proj"].T
        a = 1.0 - 1.0 / (w ** 2 + 0.5)
        Bk = (ut @ P["B_proj"].T).reshape(Bsz, N, H)
        Ck = (ut @ P["C_proj"].T).reshape(Bsz, H, N)
        Dk = ut @ P["Dk_proj"].T
        bk = ut @ P["x_proj"].T
        x = a * x + np.einsum("bnh,bh->bn", Bk, ut) + bk
        y[:, t] = np.einsum("bhn,bn->bh", Ck, x) + Dk * ut
    return y, x


# ----------------------------------------------------------------------------
# VSSD (Shi, Dong, Xu 2024): non-causal SSD
# ----------------------------------------------------------------------------

def vssd(P, u, x0=None):
    """"VSSD: Vision Mamba with Non-Causal State Space Duality", the non-causal
    form of SSD: the per-token scalar dA_t = dt_t A weights the token instead of
    decaying the state, and every token reads the one global hidden state

        dt_t = softplus(W_dt vec(u_t) + dt_bias),  A = -exp(A_log)       (Hd,)
        B_t  = W_B vec(u_t),  C_t = W_C vec(u_t)                        (N,)
        H[hd,p,n] = x0 + sum_j dt_j[hd] A[hd] B_j[n] u_j[hd,p]
        y_t[hd,p] = sum_n C_t[n] H[hd,p,n] + D[hd] u_t[hd,p]

    (x0: the state entering before the first token, zero by default). Returns
    (y, H). u has shape (B, L, Hd, P).
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, Hd, Pd = u.shape
    A = -np.exp(P["A_log"])
    N = P["B_proj"].shape[0]
    Hs = _zeros_state(x0, (Bsz, Hd, Pd, N), np.float64)
    for b in range(Bsz):
        for j in range(L):
            uf = u[b, j].reshape(Hd * Pd)
            dt = softplus(_linear(P, "dt_proj", uf[None])[0] + P["dt_bias"])
            Bj = _linear(P, "B_proj", uf[None])[0]
            for h in range(Hd):
                for p in range(Pd):
                    for n in range(N):
                        Hs[b, h, p, n] += dt[h] * A[h] * Bj[n] * u[b, j, h, p]
    y = np.zeros((Bsz, L, Hd, Pd))
    for b in range(Bsz):
        for t in range(L):
            Ct = _linear(P, "C_proj", u[b, t].reshape(1, Hd * Pd))[0]
            for h in range(Hd):
                for p in range(Pd):
                    y[b, t, h, p] = sum(Ct[n] * Hs[b, h, p, n] for n in range(N)) + P["D"][h] * u[b, t, h, p]
    return y, Hs


# ----------------------------------------------------------------------------
# S5, bidirectional (Smith, Warrington, Linderman 2023)
# ----------------------------------------------------------------------------

def s5_bidirectional(P, u):
    """S5's bidirectional layer: one Lambda_bar, B_bar (ZOH, steps exp(log_dt))
    for both passes, a forward and a backward state, one output matrix each:

        x_t^f = Lambda_bar x_{t-1}^f + B_bar u_t        (t = 1 .. L)
        x_t^b = Lambda_bar x_{t+1}^b + B_bar u_t        (t = L .. 1)
        y_t   = Re(C1 x_t^f + C2 x_t^b) + D u_t

    P["C"] has shape (2, H, P): C[0] = C1, C[1] = C2. Returns y.
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, H = u.shape
    Lam = P["Lambda"]
    dt = np.exp(P["log_dt"])
    Lam_bar = np.exp(Lam * dt)
    B_bar = ((Lam_bar - 1.0) / Lam)[:, None] * P["B"]
    C1, C2 = P["C"][0], P["C"][1]
    xf = np.zeros((Bsz, L, Lam.shape[0]), dtype=np.complex128)
    xb = np.zeros_like(xf)
    x = np.zeros((Bsz, Lam.shape[0]), dtype=np.complex128)
    for t in range(L):
        x = Lam_bar * x + u[:, t] @ B_bar.T
        xf[:, t] = x
    x = np.zeros((Bsz, Lam.shape[0]), dtype=np.complex128)
    for t in range(L - 1, -1, -1):
        x = Lam_bar * x + u[:, t] @ B_bar.T
        xb[:, t] = x
    return np.real(xf @ C1.T + xb @ C2.T) + P["D"] * u


# ----------------------------------------------------------------------------
# Hydra (Hwang, Lahoti, Dao, Gu 2024): the quasiseparable mixer
# ----------------------------------------------------------------------------

def hydra(P, u):
    """"Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers":

        QS(X) = shift(SS(X)) + flip(shift(SS(flip(X)))) + D X

    SS: Mamba-2's SSD per direction k (0 forward, 1 on the flipped sequence), with the
    direction's own projections W_dt[k], W_B[k], W_C[k] and the shared A, dt_bias:
        dt_t = softplus(W_dt[k] vec(u_t) + dt_bias),  A = -exp(A_log)     (Hd,)
        h_t  = exp(dt_t A) h_{t-1} + dt_t B_t u_t,    SS_t = C_t . h_t
    shift(Y)_t = Y_{t-1}, zero at t = 0; the diagonal is u_t * (W_D vec(u_t) + D)
    per head (shared W_D = y_proj, D). P: the state_dict (direction axis first on
    dt_proj, B_proj, C_proj). Returns y (B, L, Hd, P).
    """
    u = np.asarray(u, dtype=np.float64)
    Bsz, L, Hd, Pd = u.shape
    A = -np.exp(P["A_log"])
    N = P["B_proj"].shape[1]

    def ss(k, seq):
        out = np.zeros((Bsz, L, Hd, Pd))
        for b in range(Bsz):
            h = np.zeros((Hd, Pd, N))
            for t in range(L):
                uf = seq[b, t].reshape(Hd * Pd)
                dt = softplus(P["dt_proj"][k] @ uf + P["dt_bias"])
                Bt = P["B_proj"][k] @ uf
                Ct = P["C_proj"][k] @ uf
                for hd in range(Hd):
                    h[hd] = np.exp(dt[hd] * A[hd]) * h[hd] + dt[hd] * np.outer(seq[b, t, hd], Bt)
                    out[b, t, hd] = h[hd] @ Ct
        return out

    def shift(y):
        s = np.zeros_like(y)
        s[:, 1:] = y[:, :-1]
        return s

    flip = (lambda y: y[:, ::-1])
    y = shift(ss(0, u)) + flip(shift(ss(1, flip(u))))
    diag = np.einsum("hk,blk->blh", P["y_proj"], u.reshape(Bsz, L, Hd * Pd)) + P["D"]
    return y + u * diag[..., None]
