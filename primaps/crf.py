"""Dense CRF refinement: the fully connected CRF of Krähenbühl & Koltun
(2011) with Gaussian edge potentials, mean-field inference on a
permutohedral lattice (Adams et al. 2010), in C; no pydensecrf needed.

The model and its defaults are those of the original PriMaPs / STEGO recipe
on pydensecrf: Potts compatibility, an appearance kernel (position and RGB)
and a smoothness kernel (position), each normalised symmetrically as
pydensecrf's default ``NORMALIZE_SYMMETRIC`` does. With ``K_m`` a kernel's
Gaussian matrix (self term included), ``D_m = diag(K_m 1)`` and the unary
``U = -log_softmax(logits)``, every iteration sets, per pixel over labels::

    Q = softmax(-U + sum_m w_m D_m^-1/2 K_m D_m^-1/2 Q)

starting from ``Q = softmax(-U)``. The pydensecrf calls with the same
numbers are::

    d = pydensecrf.densecrf.DenseCRF2D(W, H, L)
    d.setUnaryEnergy(-log_softmax(logits).reshape(L, -1))  # min_prob=0
    d.addPairwiseGaussian(sxy=smoothness_theta_xy, compat=smoothness_weight)
    d.addPairwiseBilateral(sxy=appearance_theta_xy, srgb=appearance_theta_rgb,
                           rgbim=image, compat=appearance_weight)
    Q = d.inference(iterations)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core

__all__ = ["DenseCRF", "dense_crf"]


def dense_crf(
    image: npt.ArrayLike,
    logits: npt.ArrayLike,
    iterations: int = 10,
    *,
    appearance_weight: float = 4.0,
    appearance_theta_xy: float = 67.0,
    appearance_theta_rgb: float = 3.0,
    smoothness_weight: float = 3.0,
    smoothness_theta_xy: float = 1.0,
    min_prob: float = 0.0,
) -> npt.NDArray[np.float32]:
    """Mean-field marginals of the dense CRF over an image.

    Parameters
    ----------
    image : array_like of uint8, shape (H, W, 3) or (B, H, W, 3)
        RGB image(s). Any other dtype is a ``TypeError``: the colour width
        ``appearance_theta_rgb`` is in 0..255 intensity units.
    logits : array_like, shape (L, H, W) or (B, L, H, W)
        Per-label scores at image resolution: logits or log-probabilities
        (the unary is ``-log_softmax(logits)``, the same for both, since
        the two differ by a per-pixel constant). Must be finite: to pass
        probabilities ``p``, give ``np.log(np.maximum(p, 1e-5))`` as
        pydensecrf's ``unary_from_softmax`` does. Converted to float32.
    iterations : int, default 10
        Mean-field updates; 0 returns ``softmax(logits)``.
    appearance_weight, appearance_theta_xy, appearance_theta_rgb : float
        Weight (>= 0; 0 drops the kernel), spatial width in pixels and
        colour width in intensity units (> 0) of the appearance kernel
        ``exp(-|p_i-p_j|^2 / 2 theta_xy^2 - |I_i-I_j|^2 / 2 theta_rgb^2)``.
    smoothness_weight, smoothness_theta_xy : float
        Weight (>= 0) and width in pixels (> 0) of the smoothness kernel
        ``exp(-|p_i-p_j|^2 / 2 theta_xy^2)``.
    min_prob : float in [0, 1), default 0
        A floor on the softmax in the unary, ``U = -log max(softmax(logits),
        min_prob)``; 0 means none. pydensecrf's ``unary_from_softmax``, which
        the original PriMaPs code calls, floors at 1e-5.

    Returns
    -------
    ndarray of float32, shaped like `logits`
        The marginals ``Q``; they sum to 1 over labels at every pixel.
        ``Q.argmax(-3)`` is the refined label map.

    Notes
    -----
    The appearance kernel is filtered on a permutohedral lattice, as
    pydensecrf does, with the same numbers (marginals within about 2e-5 of
    pydensecrf2's on a 320 x 320 image). The smoothness kernel, a Gaussian
    of the positions alone, is separable: for ``smoothness_theta_xy <= 4``
    it is computed exactly, by filtering the pixel grid along rows and
    columns, where pydensecrf approximates it with a lattice whose entries
    are off by up to 0.1 at ``theta_xy = 1``; wider smoothness kernels use
    the lattice. So with the default parameters the label maps agree with
    pydensecrf2's on about 99.8 % of the pixels (the rest are near ties),
    and with the exact model (an O(N^2) evaluation) more closely than
    pydensecrf2's do (see ``benchmarks/RESULTS.md``).
    Probabilities below 1e-30 are flushed to 0 inside the iterations.
    To reproduce the original PriMaPs refinement, pass ``min_prob=1e-5``
    and the image with its channels reversed (``image[..., ::-1]``): the
    original hands pydensecrf a BGR array. The exact Gaussian does not
    depend on the channel order, the lattice does, slightly.
    A batch runs its images in parallel when it holds at least as many
    images as threads; otherwise the threads share each image (the halves
    of the lattice's construction and of each splat, the blur, the rows).
    The result is bitwise the same for every thread count. For many calls
    on images of one size, :class:`DenseCRF` reuses its buffers and its
    smoothness kernel.
    """
    return _core.dense_crf(
        image,
        logits,
        iterations,
        appearance_weight=appearance_weight,
        appearance_theta_xy=appearance_theta_xy,
        appearance_theta_rgb=appearance_theta_rgb,
        smoothness_weight=smoothness_weight,
        smoothness_theta_xy=smoothness_theta_xy,
        min_prob=min_prob,
    )


@dataclass(frozen=True)
class DenseCRF:
    """A reusable dense CRF: :func:`dense_crf` with fixed parameters and a
    context kept between calls.

    The context holds the working buffers and the smoothness kernel, which
    depends only on the image size, so repeated calls on
    images of one size (a dataset at 320 x 320) skip that work and the cost
    of touching freshly allocated memory. Results are the same as those of
    :func:`dense_crf`. Calls from several threads are safe (a call that
    finds the context busy uses a temporary one).

    Parameters
    ----------
    iterations, appearance_weight, appearance_theta_xy,
    appearance_theta_rgb, smoothness_weight, smoothness_theta_xy, min_prob
        As in :func:`dense_crf`.

    Examples
    --------
    >>> crf = primaps.DenseCRF(iterations=10)          # doctest: +SKIP
    >>> q = crf(images, logits)  # (B, H, W, 3) uint8, (B, L, H, W)
    """

    iterations: int = 10
    appearance_weight: float = 4.0
    appearance_theta_xy: float = 67.0
    appearance_theta_rgb: float = 3.0
    smoothness_weight: float = 3.0
    smoothness_theta_xy: float = 1.0
    min_prob: float = 0.0
    _context: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Check the parameters now rather than at the first call.
        _core.dense_crf(
            np.zeros((1, 1, 3), np.uint8),
            np.zeros((1, 1, 1), np.float32),
            **self._params(),
        )
        object.__setattr__(self, "_context", _core.crf_context())

    def _params(self) -> dict:
        return {
            "iterations": self.iterations,
            "appearance_weight": self.appearance_weight,
            "appearance_theta_xy": self.appearance_theta_xy,
            "appearance_theta_rgb": self.appearance_theta_rgb,
            "smoothness_weight": self.smoothness_weight,
            "smoothness_theta_xy": self.smoothness_theta_xy,
            "min_prob": self.min_prob,
        }

    def __call__(
        self, image: npt.ArrayLike, logits: npt.ArrayLike
    ) -> npt.NDArray[np.float32]:
        """Marginals for `image` (H, W, 3) / (B, H, W, 3) uint8 and `logits`
        (L, H, W) / (B, L, H, W); see :func:`dense_crf`."""
        return _core.dense_crf(image, logits, context=self._context, **self._params())


# ------------------------------------------------ refinement of predictions

#: The CRF of the original PriMaPs code (``primaps_modules/crf.py``): the
#: defaults, with pydensecrf's ``unary_from_softmax`` floor of 1e-5.
ORIGINAL_MIN_PROB = 1e-5


def check_images(images: Any, n_images: int | None, single: bool) -> np.ndarray:
    """`images` as a uint8 array (B, H, W, 3) for a batch of `n_images`, or
    (H, W, 3) made (1, H, W, 3) when `single`; TypeError / ValueError naming
    ``images`` otherwise."""
    a = images if isinstance(images, np.ndarray) else None
    if a is None:
        if not isinstance(images, (list, tuple)):
            raise TypeError(f"images must be a uint8 array, got {type(images).__name__}")
        a = np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"images must be a uint8 array (RGB, 0..255), got dtype {a.dtype}")
    want = "(H, W, 3)" if single else "(B, H, W, 3)"
    if a.ndim != (3 if single else 4) or a.shape[-1] != 3:
        raise ValueError(f"images must have shape {want} for "
                         f"{'one image' if single else 'a batch'}, got {a.shape}")
    if single:
        a = a[None]
    if n_images is not None and a.shape[0] != n_images:
        raise ValueError(f"images must hold one image per features image ({n_images}), "
                         f"got {a.shape[0]}")
    if a.shape[1] < 1 or a.shape[2] < 1:
        raise ValueError(f"images must have at least one pixel, got {a.shape}")
    return a


def resolve_crf(crf: Any) -> "DenseCRF | None":
    """None for ``crf=False``; the original's CRF for ``crf=True``; a given
    :class:`DenseCRF` as is."""
    if isinstance(crf, DenseCRF):
        return crf
    if crf is None or isinstance(crf, (bool, np.bool_)):
        return DenseCRF(min_prob=ORIGINAL_MIN_PROB) if crf else None
    raise TypeError(f"crf must be a bool or a primaps.DenseCRF, got {type(crf).__name__}")


def as_size2(size: Any, name: str = "size") -> tuple:
    """An int or a pair of ints as (H, W)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return (int(size), int(size))
    try:
        h, w = size
        return (int(h), int(w))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair (H, W), got {size!r}") from None


def refine_argmax(crf: "DenseCRF", images: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Labels of `images` (B, H, W, 3) uint8 RGB: ``argmax`` over channels of
    the CRF's marginals for `logits` (B, L, h, w) upsampled bilinearly to
    (H, W), the image handed over in BGR order as the original does (ties
    go to the lowest channel). int32 (B, H, W)."""
    B, H, W = images.shape[:3]
    up = logits if logits.shape[-2:] == (H, W) else _core.upsample_bilinear(logits, (H, W))
    q = crf(images[..., ::-1], up)
    return q.argmax(axis=1).astype(np.int32)


def predict_refined(refiner: "DenseCRF", x: np.ndarray, weight: np.ndarray,
                    bias: np.ndarray | None, size: Any, images: Any,
                    single: bool) -> np.ndarray:
    """Labels of the linear model ``z = weight . F (+ bias)`` on features `x`
    (B, C, h, w) refined by the CRF `refiner` over `images` at `size`, which
    must be their size: the logits at feature resolution, upsampled
    bilinearly, CRF, argmax. int32 (B, H, W). A few images at a time (as
    many as threads: they run in parallel)."""
    from ._runtime import get_num_threads

    if images is None:
        raise ValueError("crf needs the images: pass images=(B, H, W, 3) uint8")
    B = x.shape[0]
    imgs = check_images(images, B, single)
    H, W = imgs.shape[1:3]
    if as_size2(size) != (H, W):
        raise ValueError(f"size must be the images' size {(H, W)} with crf, got {size!r}")
    K = weight.shape[0]
    out = np.empty((B, H, W), np.int32)
    step = max(1, get_num_threads())
    for b0 in range(0, B, step):
        xb = np.asarray(x[b0:b0 + step], dtype=np.float32)
        n, C, h, w = xb.shape
        logits = np.matmul(weight.astype(np.float32), xb.reshape(n, C, h * w))
        if bias is not None:
            logits += np.asarray(bias, np.float32)[:, None]
        if not np.all(np.isfinite(logits)):
            raise ValueError("features contains NaN or inf")
        out[b0:b0 + n] = refine_argmax(refiner, imgs[b0:b0 + n], logits.reshape(n, K, h, w))
    return out
