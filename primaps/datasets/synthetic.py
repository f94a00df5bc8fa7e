"""Seeded synthetic dense features shaped like DINO's, with ground truth.

An image is a partition of the (h, w) grid into spatially coherent regions
(a power diagram: every pixel goes to the centre k minimising
``|p - c_k|^2 - r_k``, so regions are convex cells of unequal sizes), each
region showing one class.  Class prototypes share a common direction, as
ViT features do (their mean is far from zero), and every pixel's feature is
its class prototype plus Gaussian noise:

    F_p = norm * (P_{class(p)} + noise * e_p),    ||P_k|| = 1,
    E ||e_p|| = 1 (approximately),

so ``noise`` is the ratio of the noise norm to the prototype norm.  Channels
have unequal scales (log-normal, shared by prototypes and noise), another
trait of real ViT features.  ``shared`` sets the cosine between two class
prototypes before the channel scaling (about ``shared``).

Image b of a batch depends only on ``(seed, b)``, not on the batch size.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import numpy as np

__all__ = ["SyntheticFeatures", "region_features", "class_prototypes"]


class SyntheticFeatures(NamedTuple):
    """features: float32 (C, h, w) or (B, C, h, w); classes: int32 (h, w)
    or (B, h, w), the class of each pixel; regions: int32 of the same shape,
    the region of each pixel (0..n_regions-1 per image); prototypes: float32
    (n_classes, C), the unit class prototypes (after channel scaling)."""

    features: np.ndarray
    classes: np.ndarray
    regions: np.ndarray
    prototypes: np.ndarray


def class_prototypes(n_classes: int, channels: int, shared: float = 0.3,
                     seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Unit class prototypes (n_classes, C) and the channel scales (C,)."""
    if not 0.0 <= shared < 1.0:
        raise ValueError(f"shared must lie in [0, 1), got {shared!r}")
    rng = np.random.default_rng([seed, 0x9E3779B9])
    common = rng.standard_normal(channels)
    common /= np.linalg.norm(common)
    own = rng.standard_normal((n_classes, channels))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    P = np.sqrt(shared) * common + np.sqrt(1.0 - shared) * own
    scales = np.exp(0.5 * rng.standard_normal(channels))
    P = P * scales
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    return P.astype(np.float32), scales


def _layout(rng: np.random.Generator, h: int, w: int, n_regions: int) -> np.ndarray:
    """Region index of every pixel: a power diagram of n_regions centres."""
    n_regions = max(1, min(n_regions, h * w))
    cy = rng.uniform(0, h, n_regions)
    cx = rng.uniform(0, w, n_regions)
    weight = rng.uniform(0.0, 0.25, n_regions) * (h * h + w * w) / n_regions
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy[None] + 0.5 - cy[:, None, None]) ** 2 + (xx[None] + 0.5 - cx[:, None, None]) ** 2
    lab = np.argmin(d - weight[:, None, None], axis=0)
    _, ids = np.unique(lab, return_inverse=True)  # no gaps
    return ids.reshape(h, w).astype(np.int32)


def region_features(
    shape=(384, 40, 40),
    batch: int | None = None,
    *,
    n_regions: int = 8,
    n_classes: int = 27,
    noise: float = 0.5,
    shared: float = 0.3,
    norm: float = 40.0,
    seed: int = 0,
) -> SyntheticFeatures:
    """DINO-shaped features of coherent regions with class prototypes.

    Parameters
    ----------
    shape : (C, h, w)
        e.g. (384, 40, 40) for ViT-S/8 at 320 px, (768, 40, 40) for ViT-B/8,
        (384, 23, 23) for ViT-S/14 at 322 px.
    batch : int or None
        None gives one image (C, h, w); an int B gives (B, C, h, w).
    n_regions : int
        Regions per image (each showing a class drawn uniformly).
    n_classes : int
        Size of the class prototype pool, shared by all images of a seed.
    noise : float >= 0
        Noise norm relative to the prototype norm.
    shared : float in [0, 1)
        Cosine between class prototypes (before channel scaling).
    norm : float > 0
        Norm of a prototype feature (DINO ViT-S/8 features are of order 40).
    seed : int
        Everything is a function of the seed (and of the image index).
    """
    C, h, w = (int(s) for s in shape)
    if C < 1 or h < 1 or w < 1:
        raise ValueError(f"shape must be (C, h, w) with positive sizes, got {shape!r}")
    if noise < 0 or not np.isfinite(noise):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if not norm > 0:
        raise ValueError(f"norm must be positive, got {norm!r}")
    P, scales = class_prototypes(n_classes, C, shared, seed)
    B = 1 if batch is None else int(batch)
    feats = np.empty((B, C, h, w), np.float32)
    classes = np.empty((B, h, w), np.int32)
    regions = np.empty((B, h, w), np.int32)
    sigma = scales / np.sqrt(np.sum(scales**2))  # E||sigma * g||^2 = 1
    for b in range(B):
        rng = np.random.default_rng([seed, b])
        reg = _layout(rng, h, w, n_regions)
        cls_of_region = rng.integers(0, n_classes, reg.max() + 1)
        cls = cls_of_region[reg]
        e = rng.standard_normal((h, w, C)) * sigma
        f = norm * (P[cls].astype(np.float64) + noise * e)
        feats[b] = f.transpose(2, 0, 1)
        classes[b] = cls
        regions[b] = reg
    if batch is None:
        return SyntheticFeatures(feats[0], classes[0], regions[0], P)
    return SyntheticFeatures(feats, classes, regions, P)
