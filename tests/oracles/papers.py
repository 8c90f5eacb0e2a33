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

def mamba2(P, u, x0=None, reverse=False):
    """"Transformers are SSMs" (SSD), the recurrent form of Sec. 3 / 7:

        dt_t  = softplus(W_dt vec(u_t) + dt_bias)               (Hd,)
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
        Bt = _linear(P, "B_proj", uf)                            # (B, N)
        Ct = _linear(P, "C_proj", uf)                            # (B, N)
        a = np.exp(dt * A)                                       # (B, Hd)
        x = (a[:, :, None, None] * x
             + dt[:, :, None, None] * Bt[:, None, None, :] * ut[:, :, :, None])
        y[:, t] = np.sum(Ct[:, None, None, :] * x, axis=-1) + D[:, None] * ut
    return y, x


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
