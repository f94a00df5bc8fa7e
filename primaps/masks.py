"""PriMaPs mask proposals (DESIGN.md 1.1) on the C core."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _core

__all__ = ["masks"]


def masks(
    features: Any,
    threshold: float = 0.4,
    stop_fraction: float = 0.95,
    gain: float = 10.0,
    median_size: int = 3,
    max_masks: Optional[int] = None,
    out_size: Union[int, Sequence[int], None] = None,
    return_soft: bool = False,
    return_info: bool = False,
):
    """PriMaPs mask maps of dense features.

    Parameters
    ----------
    features : array_like, (C, h, w) or (B, C, h, w)
        Dense features (float32; other dtypes and layouts are converted).
        NaN or inf raise ``ValueError``.
    threshold : float in (0, 1)
        psi: a pixel joins a mask when its cosine to the seed is at least
        ``threshold * max``.
    stop_fraction : float in (0, 1]
        The loop runs while fewer than this fraction of pixels are assigned.
    gain : float > 0
        Soft masks become ``clamp(M * gain, 0, 1)`` after the median filter.
    median_size : odd int in [1, 63]
        Side of the median filter (reflect padding); 1 disables it.
    max_masks : int or None
        An upper bound on the number of masks per image (None: no bound).
    out_size : int or (H, W) or None
        Resolution of the map: None keeps (h, w); otherwise the logits
        ``[b, M_1..M_n]`` are upsampled bilinearly (torch's
        ``align_corners=False`` numbers) before the argmax.
    return_soft : bool
        Also return the post-processed soft logits ``[b, M_1..M_n]`` at
        feature resolution: float32 ``(n + 1, h, w)`` (channel k >= 1 is the
        k-th extracted mask, before renumbering), a list of them for a batch.
    return_info : bool
        Also return a dict with ``iterations`` (masks extracted per image)
        and ``n_masks`` (ids in the map per image), int64 arrays of shape
        (B,) (scalars for a single image).

    Returns
    -------
    maps : ndarray of int32, (H, W) or (B, H, W)
        0 = background, 1..n = mask ids, consecutive in extraction order.
    soft : ndarray or list of ndarrays, only with ``return_soft``
    info : dict, only with ``return_info``

    Results are bitwise identical for any thread count
    (``primaps.set_num_threads``).
    """
    maps, soft, iterations, n_masks = _core.masks(
        features,
        threshold=threshold,
        stop_fraction=stop_fraction,
        gain=gain,
        median_size=median_size,
        max_masks=max_masks,
        out_size=out_size,
        return_soft=bool(return_soft),
    )
    single = np.ndim(features) == 3
    if single:
        maps = maps[0]
    out = [maps]
    if return_soft:
        out.append(soft[0] if single else soft)
    if return_info:
        if single:
            out.append({"iterations": int(iterations[0]), "n_masks": int(n_masks[0])})
        else:
            out.append({"iterations": iterations, "n_masks": n_masks})
    return out[0] if len(out) == 1 else tuple(out)
