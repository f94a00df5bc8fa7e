"""The evaluation protocol of PriMaPs / STEGO: resize the short side, centre crop.

The original applies torchvision's ``Resize(size)`` then ``CenterCrop(crop)`` to
PIL images: the short side goes to ``size`` and the long side to
``int(size * long / short)`` (truncated), the image with PIL's bilinear filter
(antialiased when shrinking), the label with nearest neighbour; the crop
offset is ``round((side - crop) / 2)`` with Python's rounding.  Here the same
PIL calls and the same arithmetic, so the numbers match pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image

__all__ = ["Protocol", "resized_size", "crop_box"]


def resized_size(width: int, height: int, size: int) -> Tuple[int, int]:
    """``(width, height)`` after resizing the short side to `size`, as
    torchvision computes it (the long side truncated)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, crop: int) -> Tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of a centre crop of `crop` pixels."""
    left = int(round((width - crop) / 2.0))
    top = int(round((height - crop) / 2.0))
    return left, top, left + crop, top + crop


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Protocol:
    """Short side resized to `resize`, then a centre crop of `crop` x `crop`.

    Parameters
    ----------
    resize : int
        Length of the short side after resizing (320; 322 for patch-14
        backbones).
    crop : int
        Side of the square centre crop, at most `resize` (320; 322).
    """

    resize: int = 320
    crop: int = 320

    def __post_init__(self) -> None:
        resize = _positive_int("resize", self.resize)
        crop = _positive_int("crop", self.crop)
        if crop > resize:
            raise ValueError(
                f"crop must not exceed resize (the short side), got crop={crop} "
                f"and resize={resize}"
            )
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "crop", crop)

    def image(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> ``(crop, crop, 3)`` uint8 under the protocol."""
        return self._apply(image.convert("RGB"), Image.BILINEAR)

    def label(self, label: np.ndarray) -> np.ndarray:
        """A uint8 ``(H, W)`` label map -> ``(crop, crop)`` uint8, nearest."""
        return self._apply(Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)), Image.NEAREST)

    def _apply(self, im: Image.Image, resample: int) -> np.ndarray:
        size = resized_size(im.width, im.height, self.resize)
        if size != im.size:
            im = im.resize(size, resample)
        box = crop_box(im.width, im.height, self.crop)
        return np.array(im.crop(box))  # writable (torch warns on read-only arrays)

    def apply(
        self, image: Image.Image, label: Optional[np.ndarray]
    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Image and label (or None) under the protocol."""
        return self.image(image), None if label is None else self.label(label)

    def as_dict(self) -> dict:
        """A JSON-ready description, e.g. for a feature store's index."""
        return {
            "resize_short_side": self.resize,
            "center_crop": self.crop,
            "image_resample": "bilinear (PIL, antialiased)",
            "label_resample": "nearest",
        }
