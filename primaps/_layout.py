"""Feature layouts: channels-first maps, channels-last maps and ViT tokens.

Every entry that takes features computes on channels-first maps
``(B, C, h, w)``.  ``layout="nhwc"`` takes channels-last maps ``(B, h, w,
C)``, ``layout="tokens"`` takes patch tokens ``(B, N, C)`` (with or without
a leading CLS token) on a grid of ``h x w`` patches; both become
channels-first *views* (no copy: a kernel that needs dense memory copies
once, where it reads them).  The default, ``layout=None``, takes
channels-first maps and refuses a shape that fits another layout far better
(a ``ValueError`` naming the `layout` to pass); where a legitimate
channels-first input could have that shape, it warns instead, and
``layout="nchw"`` says the input is meant as it is (no check, no warning).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

LAYOUTS = (None, "nchw", "nhwc", "tokens")

# Feature sizes of the usual backbones (ResNets, ViT-S/B/L/H/g, DINO,
# DINOv2, CLIP, ...): a last axis of one of these sizes, larger than the
# others, is channels.
USUAL_CHANNELS = frozenset({64, 96, 128, 192, 256, 320, 384, 512, 640, 768, 1024, 1152,
                            1280, 1408, 1536, 2048})

GridLike = Union[int, Sequence[int], None]


class LayoutWarning(UserWarning):
    """A channels-first input whose shape also fits another layout."""


def check_layout(layout: Any, name: str = "layout") -> Optional[str]:
    if layout is not None and not isinstance(layout, str):
        raise TypeError(f"{name} must be None, 'nchw', 'nhwc' or 'tokens', got "
                        f"{type(layout).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"{name} must be None, 'nchw', 'nhwc' or 'tokens', got {layout!r}")
    return layout


def check_grid(grid: GridLike, name: str = "grid") -> Optional[Tuple[int, int]]:
    if grid is None:
        return None
    if isinstance(grid, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or (h, w), got bool")
    if isinstance(grid, (int, np.integer)):
        g = (int(grid), int(grid))
    else:
        try:
            g = tuple(int(v) for v in grid)  # type: ignore[union-attr]
            ok = len(g) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                     for v in grid)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise TypeError(f"{name} must be an int or a pair (h, w) of ints, got {grid!r}")
    if min(g) < 1:
        raise ValueError(f"{name} must be positive, got {grid!r}")
    return g  # type: ignore[return-value]


def _square(n: int) -> bool:
    r = math.isqrt(n)
    return r * r == n


def _token_grid(N: int, grid: Optional[Tuple[int, int]], shape) -> Tuple[Tuple[int, int], int]:
    """(h, w) and the number of leading tokens to drop (0, or 1 for CLS)."""
    if grid is not None:
        h, w = grid
        if N == h * w:
            return grid, 0
        if N == h * w + 1:
            return grid, 1
        raise ValueError(f"features of shape {tuple(shape)} hold {N} tokens, which is neither "
                         f"grid {h} x {w} = {h * w} nor that plus a CLS token")
    for drop in (0, 1):
        if N - drop > 0 and _square(N - drop):
            r = math.isqrt(N - drop)
            return (r, r), drop
    raise ValueError(f"features of shape {tuple(shape)} hold {N} tokens, not a square grid "
                     "(with or without a CLS token): pass grid=(h, w)")


def _suspect(shape: Sequence[int], single: bool) -> Tuple[Optional[str], bool]:
    """(the layout a channels-first `shape` probably is, whether the guess
    is sure enough for an error rather than a warning)."""
    a, b, c = shape[-3:]
    if c in USUAL_CHANNELS and c > max(a, b):
        return "nhwc", c >= 4 * a
    if single and c in USUAL_CHANNELS and b >= 4 and c > a and (
            _square(b) or _square(b - 1)):
        return "tokens", True  # (B, N, C) tokens read as one (C, h, w) map
    if single and b >= 17 and b > max(a, c) and (_square(b) or _square(b - 1)):
        return "tokens", False  # tokens of a model with an unusual width
    return None, False


def to_nchw(x: Any, layout: Optional[str] = None, grid: GridLike = None,
            name: str = "features", ndims: Tuple[int, ...] = (3, 4)) -> np.ndarray:
    """`x` (an array, memmap or tensor) as channels-first features, a view
    where possible: ``(C, h, w)`` stays 3-D and ``(B, C, h, w)`` 4-D (of the
    entries that take both; `ndims` lists what the entry takes).

    A torch tensor that requires grad is a TypeError with the
    ``.detach()`` hint; anything else NumPy cannot convert is left to the
    caller's checks."""
    layout = check_layout(layout)
    g = check_grid(grid)
    if g is not None and layout != "tokens":
        raise ValueError("grid is only for layout='tokens'")
    a = _as_array(x, name)
    if a is None:
        return x
    if layout == "tokens":
        if a.ndim not in (2, 3):
            raise ValueError(f"{name} with layout='tokens' must have shape (B, N, C) or (N, C), "
                             f"got {a.shape}")
        single = a.ndim == 2
        t = a[None] if single else a
        (h, w), drop = _token_grid(t.shape[1], g, a.shape)
        t = t[:, drop:]
        out = t.reshape(t.shape[0], h, w, t.shape[2]).transpose(0, 3, 1, 2)
        return out[0] if single and 3 in ndims else out
    if layout == "nhwc":
        if a.ndim == 3:
            return a.transpose(2, 0, 1)
        if a.ndim == 4:
            return a.transpose(0, 3, 1, 2)
        raise ValueError(f"{name} with layout='nhwc' must have shape (B, h, w, C) or (h, w, C), "
                         f"got {a.shape}")
    if layout is None and a.ndim in (3, 4):
        guess, sure = _suspect(a.shape, a.ndim == 3)
        if guess is not None:
            msg = _hint(name, a.shape, guess)
            if sure:
                raise ValueError(msg)
            warnings.warn(msg + f", or layout='nchw' if (C, h, w) = {tuple(a.shape[-3:])} is "
                          "right", LayoutWarning, stacklevel=3)
    return a


def _hint(name: str, shape, guess: str) -> str:
    s = tuple(shape)
    if guess == "nhwc":
        lead = "B, " if len(s) == 4 else ""
        return (f"{name} of shape {s} look channels-last ({lead}h, w, C = {s[-1]}); "
                f"primaps takes (B, C, h, w): pass layout='nhwc' (or move the channels first, "
                f"e.g. x.permute(0, 3, 1, 2) for a tensor)")
    N = s[1]
    return (f"{name} of shape {s} look like ViT patch tokens (B = {s[0]}, N = {N}, C = {s[2]}); "
            f"primaps takes maps (B, C, h, w): pass layout='tokens' (and grid=(h, w) unless "
            f"the grid is square)")


def _as_array(x: Any, name: str) -> Optional[np.ndarray]:
    """x as an ndarray without a copy where NumPy allows (None if it cannot
    be converted: the caller's checks name the problem)."""
    if isinstance(x, np.ndarray):
        return x
    if getattr(x, "requires_grad", False):
        raise TypeError(f"{name} is a tensor that requires grad: pass {name}.detach() "
                        "(and .cpu() for a GPU tensor)")
    if type(x).__module__.startswith("torch") and hasattr(x, "numpy"):
        try:
            return x.detach().cpu().numpy()  # keeps the strides of a permuted view
        except (RuntimeError, TypeError):
            pass
    if isinstance(x, (str, bytes)) or x is None:
        return None
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        return None
    return a if a.dtype.kind in "iuf" else None
