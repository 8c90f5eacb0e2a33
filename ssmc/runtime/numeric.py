"""NumPy helpers the generated reference code calls: named-dim alignment, the
functions of the language, matrix functions, linear and conv.

Everything works on float64 / complex128 arrays whose trailing axes are named dims
and whose leading axes (batch, time) are left alone.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def align_plan(src: tuple, dst: tuple) -> tuple[list[int], list[bool]]:
    """How named axes `src` become `dst`: the order to permute the source axes into, and
    per target axis whether it comes from the source (else a new, broadcast axis).

    `dst` must contain every name of `src`; a repeated name (a square matrix pair)
    maps occurrence by occurrence. Shared by the NumPy and torch runtimes.
    """
    used = [False] * len(src)
    perm = []
    for d in dst:
        j = next((j for j, s in enumerate(src) if s == d and not used[j]), None)
        if j is not None:
            used[j] = True
        perm.append(j)
    return [j for j in perm if j is not None], [j is not None for j in perm]


def align(a, src: tuple, dst: tuple):
    """Permute and expand the trailing named axes of `a` from dims `src` to dims `dst`;
    leading unnamed axes (batch, time) are kept."""
    a = np.asarray(a)
    lead = a.ndim - len(src)
    order, present = align_plan(src, dst)
    a = np.transpose(a, list(range(lead)) + [lead + j for j in order])
    return a[tuple([slice(None)] * lead + [slice(None) if p else None for p in present])]


def softplus(x):
    return np.logaddexp(0.0, x)


def inv_softplus(y):
    return np.log(np.expm1(y))


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def silu(x):
    return x * sigmoid(x)


def relu(x):
    return np.maximum(x, 0.0)


# math.erf elementwise: correctly rounded to about an ulp, in float64 (NumPy has no erf).
_ERF = np.vectorize(math.erf, otypes=[np.float64])


def erf(x):
    return _ERF(x) if np.ndim(x) else math.erf(x)


def gelu(x):
    """x * Phi(x), Phi the standard normal CDF (torch's exact GELU)."""
    return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))


def gelu_tanh(x):
    """GELU's tanh approximation, x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def minimum(a, b):
    return np.minimum(a, b)


def maximum(a, b):
    return np.maximum(a, b)


def clamp(x, lo=None, hi=None):
    """min(max(x, lo), hi), either bound absent (torch.clamp's meaning, lo > hi gives hi)."""
    if lo is not None:
        x = np.maximum(x, lo)
    if hi is not None:
        x = np.minimum(x, hi)
    return x


def phi1(z):
    """(exp(z) - 1) / z elementwise, with its limit 1 at z = 0."""
    z = np.asarray(z)
    safe = np.where(z == 0, 1.0, z)
    return np.where(z == 0, 1.0, np.expm1(safe) / safe)


def _torch(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def expm(m):
    """Matrix exponential over the last two axes (scaling and squaring, in float64)."""
    return torch.linalg.matrix_exp(_torch(np.asarray(m, dtype=np.result_type(m, np.float64)))).numpy()


def phi1m(m):
    """phi1(M) = M^-1 (exp(M) - I), also for singular M: the top-right block of
    exp([[M, I], [0, 0]])."""
    m = np.asarray(m, dtype=np.result_type(m, np.float64))
    n = m.shape[-1]
    big = np.zeros(m.shape[:-2] + (2 * n, 2 * n), dtype=m.dtype)
    big[..., :n, :n] = m
    big[..., :n, n:] = np.eye(n)
    return expm(big)[..., :n, n:]


def solve(q, p):
    """q^-1 p over the last two axes, broadcasting the leading ones."""
    q, p = np.broadcast_arrays(q, p)
    return np.linalg.solve(q, p)


def matvec(m, v):
    return np.einsum("...ij,...j->...i", m, v)


def dplr(lam, p, q, n=None, diagonal: bool = True, rank_one: bool = False):
    """diag(lam) - P Q^* (Q^* the conjugate transpose over the rank axis; Q^T for real Q).

    `diagonal=False`: lam has no N axis (a scalar times the identity); `rank_one=True`:
    P and Q are [..., N] (no rank axis)."""
    lam, p, q = np.asarray(lam), np.asarray(p), np.asarray(q)
    if not diagonal:
        lam = lam[..., None]
    if rank_one:
        p, q = p[..., None], q[..., None]
    n = p.shape[-2] if n is None else n
    return lam[..., :, None] * np.eye(n) - np.einsum("...nr,...mr->...nm", p, np.conj(q))


def block_diagonal(a, blocks: int):
    """Keep the `blocks` equal diagonal blocks of the last two axes; zero the rest."""
    n = a.shape[-1]
    if n % blocks:
        raise ValueError(f"block_diagonal: size {n} is not divisible by blocks = {blocks}")
    size = n // blocks
    idx = np.arange(n) // size
    return a * (idx[:, None] == idx[None, :])


def linear(e, weight, bias, n_in: int, out_shape: tuple):
    """Flatten the trailing `n_in` axes, apply `weight` (out, in) like nn.Linear, reshape."""
    lead = e.shape[: e.ndim - n_in]
    flat = e.reshape(lead + (-1,))
    y = flat @ np.swapaxes(weight, -1, -2)
    if bias is not None:
        y = y + bias
    return y.reshape(lead + tuple(out_shape))


def causal_conv(e, weight, bias, tail):
    """Depthwise causal convolution along axis 1 (time) of e [B, L, *C] with weight [*C, K].

    y_t = sum_k w[..., k] * e_{t-K+1+k}; `tail` [B, K-1, *C] holds the inputs before
    the first token (zeros at the start). Returns (y, new tail).
    """
    k = weight.shape[-1]
    b, L = e.shape[0], e.shape[1]
    if tail is None:
        tail = np.zeros((b, k - 1) + e.shape[2:], dtype=e.dtype)
    full = np.concatenate([tail.astype(np.result_type(tail, e)), e], axis=1)
    y = np.zeros(e.shape, dtype=np.result_type(full, weight))
    for j in range(k):
        y = y + weight[..., j] * full[:, j: j + L]
    if bias is not None:
        y = y + bias
    return y, full[:, full.shape[1] - (k - 1):]


def shift(e, k: int, tail):
    """e [B, L, *C] shifted k tokens later along axis 1 (time): y_t = e_{t-k}; `tail`
    [B, k, *C] holds the k values before the first token (zeros at the start).
    Returns (y, new tail): the last k values of tail and e together."""
    b, L = e.shape[0], e.shape[1]
    if tail is None:
        tail = np.zeros((b, k) + e.shape[2:], dtype=e.dtype)
    full = np.concatenate([tail.astype(np.result_type(tail, e)), e], axis=1)
    return full[:, :L], full[:, L:]


def prev_state(xs, x0):
    """The state before each token's update: x0 [B, *S] at the first token, then xs [B, L, *S]
    one token later."""
    return np.concatenate([x0[:, None].astype(xs.dtype), xs[:, :-1]], axis=1)

