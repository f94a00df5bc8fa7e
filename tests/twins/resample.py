"""Twins of normalize.c and resample.c."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Per-pixel L2 normalisation over axis -3 (channels), float64."""
    x = np.asarray(x, dtype=np.float64)
    n = np.sqrt((x * x).sum(axis=-3, keepdims=True))
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation, align_corners=False
    (the half-pixel convention of torch, source index clamped at 0)."""
    A = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        s = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(s)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        l1 = s - i0
        A[o, i0] += 1.0 - l1
        A[o, i1] += l1
    return A


def upsample_bilinear(x: np.ndarray, size) -> np.ndarray:
    """Separable bilinear resampling of the last two axes: Ay @ x @ Ax.T."""
    x = np.asarray(x, dtype=np.float64)
    H, W = size
    Ay = interp_matrix(x.shape[-2], H)
    Ax = interp_matrix(x.shape[-1], W)
    return np.einsum("Yy,...yx,Xx->...YX", Ay, x, Ax)


def upsample_bilinear_adjoint(y: np.ndarray, in_size) -> np.ndarray:
    """The transpose: Ay.T @ y @ Ax."""
    y = np.asarray(y, dtype=np.float64)
    h, w = in_size
    Ay = interp_matrix(h, y.shape[-2])
    Ax = interp_matrix(w, y.shape[-1])
    return np.einsum("Yy,...YX,Xx->...yx", Ay, y, Ax)
