"""Twin of masks.c: docs/method.md §1.1 in float64 NumPy, with an exact
eigendecomposition (numpy.linalg.eigh) of the covariance of U at every
iteration, dense soft masks and a dense median filter."""

from __future__ import annotations

import numpy as np


def propose(features, threshold=0.4, stop_fraction=0.95, max_masks=None):
    """The loop: a list of dense soft masks (N,) and their seed pixels."""
    F = np.asarray(features, dtype=np.float64)
    C, h, w = F.shape
    N = h * w
    X = F.reshape(C, N).T
    nrm = np.linalg.norm(X, axis=1, keepdims=True)
    Fh = np.divide(X, nrm, out=np.zeros_like(X), where=nrm > 0)
    U = np.ones(N, bool)
    masks, seeds = [], []
    states = [U.copy()]
    while U.sum() > 0 and (N - U.sum()) / N < stop_fraction:
        if max_masks is not None and len(masks) >= max_masks:
            break
        Xu = X[U]
        D = Xu - Xu.mean(axis=0)
        cov = D.T @ D / len(Xu)
        _, vecs = np.linalg.eigh(cov)
        v = vecs[:, -1]
        s = Fh[U] @ v
        if s.max() < -s.min():
            v, s = -v, -s
        p = int(np.flatnonzero(U)[np.argmax(s)])
        m = np.zeros(N)
        m[U] = Fh[U] @ Fh[p]
        mx = m.max()
        if mx <= 0:
            m = np.zeros(N)
            m[p] = 1.0
        else:
            m[m < threshold * mx] = 0.0
            m /= mx
        masks.append(m)
        seeds.append(p)
        U = U & ~(m > 0)
        states.append(U.copy())
        if len(states) >= 3 and np.array_equal(states[-1], states[-2]) and np.array_equal(
            states[-2], states[-3]
        ):
            break
    return masks, seeds


def median_filter(M, size):
    """size x size median of each plane of M (n, h, w), numpy's reflect
    padding (a dimension of size 1 replicates)."""
    if size == 1 or len(M) == 0:
        return M.copy()
    r = size // 2
    P = np.pad(M, ((0, 0), (r, r), (r, r)), mode="reflect")
    win = np.lib.stride_tricks.sliding_window_view(P, (size, size), axis=(1, 2))
    return np.median(win.reshape(*win.shape[:3], -1), axis=-1)


def logits(features, threshold=0.4, stop_fraction=0.95, gain=10.0, median_size=3, max_masks=None):
    """The post-processed logits [b, M_1..M_n] (n + 1, h, w)."""
    C, h, w = np.shape(features)
    masks, _ = propose(features, threshold, stop_fraction, max_masks)
    M = np.array(masks, dtype=np.float64).reshape(len(masks), h, w)
    M = median_filter(M, median_size)
    M = np.clip(M * gain, 0.0, 1.0)
    nz = M[M != 0]
    level = nz.mean() if nz.size else 0.0
    b = np.clip(level - M.sum(axis=0), 0.0, 1.0)
    return np.concatenate([b[None], M], axis=0)


def argmax_map(L):
    """Argmax over channels (ties: lowest), ids renumbered consecutively."""
    raw = np.argmax(L, axis=0)
    used = np.unique(raw[raw > 0])
    lut = np.zeros(L.shape[0], np.int32)
    lut[used] = np.arange(1, len(used) + 1)
    return lut[raw]


def masks(features, threshold=0.4, stop_fraction=0.95, gain=10.0, median_size=3, max_masks=None):
    """The mask map at feature resolution."""
    return argmax_map(logits(features, threshold, stop_fraction, gain, median_size, max_masks))
