"""Twin of crf.c: exact mean-field inference of the fully connected CRF with
dense O(N^2) Gaussian kernels, in float64 (no lattice)."""

from __future__ import annotations

import numpy as np


def positions(H: int, W: int) -> np.ndarray:
    """(N, 2) pixel positions (x, y) = (column, row), row-major order."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x.ravel(), y.ravel()], axis=1).astype(np.float64)


def gaussian(features: np.ndarray) -> np.ndarray:
    """(N, N) exp(-|f_i - f_j|^2 / 2), self term included."""
    f = np.asarray(features, dtype=np.float64)
    d2 = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    return np.exp(-0.5 * d2)


def normalized(K: np.ndarray) -> np.ndarray:
    """D^-1/2 K D^-1/2 with D = diag(K 1): pydensecrf's NORMALIZE_SYMMETRIC."""
    s = 1.0 / np.sqrt(K.sum(axis=1))
    return s[:, None] * K * s[None, :]


def kernels(image: np.ndarray, appearance_theta_xy=67.0, appearance_theta_rgb=3.0,
            smoothness_theta_xy=1.0):
    """The normalised appearance and smoothness kernel matrices of an
    (H, W, 3) image."""
    H, W, _ = image.shape
    pos = positions(H, W)
    rgb = image.reshape(-1, 3).astype(np.float64)
    app = np.concatenate([pos / appearance_theta_xy, rgb / appearance_theta_rgb], axis=1)
    return normalized(gaussian(app)), normalized(gaussian(pos / smoothness_theta_xy))


def log_softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def dense_crf(image, logits, iterations=10, appearance_weight=4.0, appearance_theta_xy=67.0,
              appearance_theta_rgb=3.0, smoothness_weight=3.0, smoothness_theta_xy=1.0,
              min_prob=0.0):
    """Q <- softmax(-U + sum_m w_m D_m^-1/2 K_m D_m^-1/2 Q) from Q = softmax(-U),
    U = -log max(softmax(logits), min_prob), for one image (H, W, 3) and
    logits (L, H, W); float64 (L, H, W)."""
    L, H, W = logits.shape
    A, S = kernels(image, appearance_theta_xy, appearance_theta_rgb, smoothness_theta_xy)
    neg_u = log_softmax(np.asarray(logits, dtype=np.float64).reshape(L, -1))
    if min_prob > 0:
        neg_u = np.maximum(neg_u, np.log(min_prob))
    q = np.exp(log_softmax(neg_u))
    for _ in range(iterations):
        e = neg_u + smoothness_weight * (q @ S) + appearance_weight * (q @ A)
        q = np.exp(log_softmax(e))
    return q.reshape(L, H, W)
