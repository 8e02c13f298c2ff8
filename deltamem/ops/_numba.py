"""The numba kernels behind `ops.kernels` (imported only when numba is installed).

The dot products may be summed in any order (`fastmath` reassociation, so that they vectorise);
tanh, exp and sqrt are the exact library functions."""

import math

import numba
import numpy as np

ONE, EPS = np.float32(1.0), np.float32(1e-6)
FAST = {"reassoc", "contract", "nsz"}


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def _dot(a, b):
    acc = np.float32(0.0)
    for j in range(a.shape[0]):
        acc += a[j] * b[j]
    return acc


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def _unit_tanh(x, out):
    """`out = l2norm(tanh(x))` over a 1-D slice."""
    n = np.float32(0.0)
    for j in range(x.shape[0]):
        t = math.tanh(x[j])
        out[j] = t
        n += t * t
    n = max(np.float32(math.sqrt(n)), EPS)
    for j in range(x.shape[0]):
        out[j] = out[j] / n


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def write_step(h, W, c_b, S, standard, m, S_new):
    """h [B, d], W [4 H r, d] (W_q; W_k; W_v; W_b), c_b [H r], S [B, H, r, r] -> m [B, H r], S_new:
    read `S q`, then write the token with the gated delta rule."""
    B, H, r = S.shape[0], S.shape[1], S.shape[2]
    R = H * r
    x = np.empty(4 * R, np.float32)
    q = np.empty(r, np.float32)
    k = np.empty(r, np.float32)
    for b in range(B):
        for o in range(4 * R):
            x[o] = _dot(W[o], h[b])
        for hd in range(H):
            _unit_tanh(x[hd * r:(hd + 1) * r], q)
            _unit_tanh(x[R + hd * r:R + (hd + 1) * r], k)
            for i in range(r):
                row = S[b, hd, i]
                m[b, hd * r + i] = _dot(row, q)
                e = x[2 * R + hd * r + i] - _dot(row, k)
                beta = ONE / (ONE + np.float32(math.exp(-(x[3 * R + hd * r + i] + c_b[hd * r + i]))))
                beta = min(max(beta, EPS), ONE - EPS)
                for j in range(r):
                    s = row[j]
                    S_new[b, hd, i, j] = s + beta * (e * k[j] - s) if standard else s + beta * (e * k[j])


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def read_step(h, W, S, m):
    """h [N, d] (N = B T tokens of B rows), W [>= H r, d] (W_q first), S [B, H, r, r] -> m [N, H r] = S_b q."""
    N = h.shape[0]
    B, H, r = S.shape[0], S.shape[1], S.shape[2]
    T = N // B
    x = np.empty(H * r, np.float32)
    q = np.empty(r, np.float32)
    for n in range(N):
        b = n // T
        for o in range(H * r):
            x[o] = _dot(W[o], h[n])
        for hd in range(H):
            _unit_tanh(x[hd * r:(hd + 1) * r], q)
            for i in range(r):
                m[n, hd * r + i] = _dot(S[b, hd, i], q)


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def add_lowrank(out, m, U, scale):
    """out [N, n] += scale * m [N, k] @ U [n, k]^T, in place."""
    for t in range(out.shape[0]):
        for o in range(out.shape[1]):
            out[t, o] += scale * _dot(U[o], m[t])
