"""PriMaPs mask proposals (docs/method.md §1.1) on the C core."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _core
from ._layout import to_nchw
from ._runtime import get_num_threads
from .crf import as_size2, check_images, refine_argmax, resolve_crf

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
    images: Any = None,
    crf: Any = False,
    layout: Optional[str] = None,
    grid: Union[int, Sequence[int], None] = None,
):
    """PriMaPs mask maps of dense features.

    Parameters
    ----------
    features : array_like, (C, h, w) or (B, C, h, w)
        Dense features (float32; other dtypes and memory orders are
        converted), a NumPy array or a torch tensor (also a permuted view).
        NaN or inf raise ``ValueError``.  Other layouts with `layout`.
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
    images : array_like of uint8, (H, W, 3) or (B, H, W, 3), optional
        The RGB images of the features, for ``crf``.
    crf : bool or DenseCRF, default False
        Refine the masks with the dense CRF at image resolution, as the
        original pipeline does (docs/method.md §1.1, 1.4): the logits
        ``[b, M_1..M_n]`` are upsampled bilinearly to the images' size, the
        unary is ``-log max(softmax, 1e-5)``, the image goes in BGR order
        (the original's numbers: ``dense_crf(image[..., ::-1], logits,
        min_prob=1e-5)``), and the map is the argmax of the marginals, its
        ids renumbered consecutively. ``True`` uses that CRF; a
        :class:`DenseCRF` sets other parameters (its ``min_prob`` too).
        Needs `images`; the map is at the images' size (`out_size`, if
        given, must equal it).
    layout : {None, "nchw", "nhwc", "tokens"}
        None (default): channels-first maps, and a shape that fits another
        layout far better is a ValueError naming the layout to pass (a last
        axis of a usual feature size, e.g. 384, much larger than the first:
        channels-last; (B, N, C) with N a square number, or one more:
        tokens); where a real channels-first input could have the shape,
        a ``LayoutWarning`` instead.  ``"nchw"``: channels-first, no check.
        ``"nhwc"``: channels-last maps (B, h, w, C) or (h, w, C).
        ``"tokens"``: ViT patch tokens (B, N, C) or (N, C), with or
        without a leading CLS token.  Converted to channels-first views, no
        copy where the memory is already channels-first.
    grid : int or (h, w), optional
        The patch grid of ``layout="tokens"`` (default: the square grid of
        N or N - 1 tokens).

    Returns
    -------
    maps : ndarray of int32, (H, W) or (B, H, W)
        0 = background, 1..n = mask ids, consecutive in extraction order.
    soft : ndarray or list of ndarrays, only with ``return_soft``
    info : dict, only with ``return_info``

    Results are bitwise identical for any thread count
    (``primaps.set_num_threads``).
    """
    features = to_nchw(features, layout, grid)
    refiner = resolve_crf(crf)
    single = np.ndim(features) == 3
    if np.ndim(features) not in (3, 4):
        # features are checked before the images are counted against them:
        # the binding's TypeError / ValueError names them
        _core.masks(features)
    if refiner is not None:
        if images is None:
            raise ValueError("crf needs the images: pass images=(B, H, W, 3) uint8")
        imgs = check_images(images, None if single else len(features), single)
        size = imgs.shape[1:3]
        if out_size is not None and as_size2(out_size, "out_size") != size:
            raise ValueError(f"out_size must be None or the images' size {size} with crf, "
                             f"got {out_size}")
        maps, soft, iterations, n_masks = _core.masks(
            features, threshold=threshold, stop_fraction=stop_fraction, gain=gain,
            median_size=median_size, max_masks=max_masks, return_soft=True)
        maps = np.empty((len(soft),) + size, np.int32)
        n_masks = np.asarray(n_masks).copy()
        # Images with as many channels go through the CRF together, as many
        # at a time as threads (they then run in parallel).
        step = max(1, get_num_threads())
        for n_ch in sorted({a.shape[0] for a in soft}):
            idx = [b for b, a in enumerate(soft) if a.shape[0] == n_ch]
            for k in range(0, len(idx), step):
                part = idx[k:k + step]
                labels = refine_argmax(refiner, imgs[part], np.stack([soft[b] for b in part]))
                for b, lab in zip(part, labels):
                    maps[b] = _renumber(lab)
                    n_masks[b] = maps[b].max()
    else:
        if images is not None:
            check_images(images, None if single else len(features), single)
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


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Channel ids (0 = background) made consecutive 1..m in channel order
    (the order of extraction), dropping the masks that won no pixel."""
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lut[labels]
