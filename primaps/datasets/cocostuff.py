"""COCO-Stuff with the 27 coarse classes and the curated image lists of IIC /
STEGO / PriMaPs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ._base import (
    SegmentationDataset,
    apply_table,
    names_in,
    read_id_list,
    read_label_png,
    report_missing,
    require_dir,
    require_file,
)

__all__ = ["CocoStuff"]

CLASS_NAMES = (
    "electronic", "appliance", "food (thing)", "furniture (thing)", "indoor",
    "kitchen", "accessory", "animal", "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food (stuff)", "furniture (stuff)", "rawmaterial",
    "textile", "wall", "window", "building", "ground", "plant", "sky", "solid",
    "structural", "water",
)  # fmt: skip
N_THINGS = 12  # classes 0..11 are things, 12..26 stuff

# Coarse class -> the fine ids (0-indexed stuffthingmaps values) it gathers.
COARSE_TO_FINE = (
    (0, [range(71, 77)]),
    (1, [range(77, 83)]),
    (2, [range(51, 61)]),
    (3, [range(61, 71)]),
    (4, [range(83, 91)]),
    (5, [range(43, 51)]),
    (6, [range(25, 33)]),
    (7, [range(15, 25)]),
    (8, [range(9, 15)]),
    (9, [[0]]),
    (10, [range(33, 43)]),
    (11, [range(1, 9)]),
    (12, [range(101, 103)]),
    (13, [[100], range(113, 118)]),
    (14, [[120, 121, 152, 169]]),
    (15, [[97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164]]),
    (16, [[99, 131, 138, 142]]),
    (17, [[91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167]]),
    (18, [range(170, 177)]),
    (19, [[179, 180]]),
    (20, [[94, 95, 127, 150, 157, 165]]),
    (21, [[110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158]]),
    (22, [[93, 96, 118, 123, 128, 133, 141, 162, 168]]),
    (23, [[105, 156]]),
    (24, [[126, 134, 149, 159, 161, 181]]),
    (25, [[98, 112, 137, 145, 163]]),
    (26, [[119, 147, 154, 177, 178]]),
)
FINE_TO_COARSE = np.full(256, 255, dtype=np.uint8)
for _coarse, _groups in COARSE_TO_FINE:
    for _group in _groups:
        FINE_TO_COARSE[list(_group)] = _coarse
del _coarse, _groups, _group


def _pascal_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map (bits of the index spread over R, G, B)."""
    colors = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors[i] = (r, g, b)
    return colors


# entry 0 of the PASCAL map is black, the colour of ignored pixels: skip it
PALETTE = _pascal_palette(len(CLASS_NAMES) + 1)[1:]

SPLIT_DIRS = {"train": "train2017", "val": "val2017"}
IMAGE_LIST = "Coco164kFull_Stuff_Coarse_7.txt"


class CocoStuff(SegmentationDataset):
    """COCO-Stuff-27 on the curated lists (49,629 train, 2,175 val images).

    Layout: ``root/images/{train2017,val2017}/<id>.jpg``,
    ``root/annotations/{train2017,val2017}/<id>.png`` (the stuffthingmaps:
    fine ids 0..181, 255 unlabelled) and
    ``root/curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse_7.txt``.
    Fine ids map to the 27 coarse classes (``FINE_TO_COARSE``); 255 and any
    value without a coarse class become 255 (ignore).

    Parameters
    ----------
    root : path
        The folder that holds ``images/``, ``annotations/`` and ``curated/``.
    split : {"train", "val"}
    resize, crop : int
        The protocol (320, 320; 322, 322 for patch-14 backbones).
    allow_missing : bool
        By default every image of the curated list must be there with its
        label map (the protocol's numbers are over the whole list), and a
        missing one is a ``FileNotFoundError`` that names it.  With True,
        the ids whose image or label map is absent are left out (a partial
        download); ``n_listed`` keeps the length of the list, and a
        ``UserWarning`` says how many are used.
    """

    name = "COCO-Stuff"
    splits = tuple(SPLIT_DIRS)
    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, root, split: str, resize: int = 320, crop: int = 320,
                 allow_missing: bool = False) -> None:
        if not isinstance(allow_missing, bool):
            raise TypeError(f"allow_missing must be True or False, got {allow_missing!r}")
        self.allow_missing = allow_missing
        self.n_listed = 0
        super().__init__(root, split, resize, crop)

    def _build_index(self) -> None:
        sub = SPLIT_DIRS[self.split]
        lst = require_file(
            self.root / "curated" / sub / IMAGE_LIST, self.name,
            f"the curated image list of the {self.split} split under root {self.root}",
        )  # fmt: skip
        image_dir = require_dir(
            self.root / "images" / sub, self.name, f"images/{sub}/<id>.jpg under root {self.root}"
        )
        label_dir = require_dir(
            self.root / "annotations" / sub, self.name,
            f"annotations/{sub}/<id>.png under root {self.root}",
        )  # fmt: skip
        self.ids = read_id_list(lst)
        have_images, have_labels = names_in(image_dir), names_in(label_dir)
        self.n_listed = len(self.ids)
        if self.allow_missing:
            self.ids = [i for i in self.ids if f"{i}.jpg" in have_images and f"{i}.png" in have_labels]
            if not self.ids:
                raise FileNotFoundError(
                    f"{self.name}: none of the {self.n_listed} images of {lst} is in {image_dir} "
                    f"with its label map in {label_dir}")
            if len(self.ids) < self.n_listed:
                warnings.warn(
                    f"{self.name} {self.split}: {len(self.ids)} of the {self.n_listed} images of "
                    f"the curated list are present; the others are left out (allow_missing=True), "
                    f"so scores are not comparable with the full split's", UserWarning,
                    stacklevel=4)
        missing_images = [image_dir / f"{i}.jpg" for i in self.ids if f"{i}.jpg" not in have_images]
        missing_labels = [label_dir / f"{i}.png" for i in self.ids if f"{i}.png" not in have_labels]
        hint = " (CocoStuff(..., allow_missing=True) uses the ones present)"
        report_missing(self.name, missing_images, "images of the curated list are", hint)
        report_missing(self.name, missing_labels, "label maps of the curated list are", hint)
        self.image_files = [image_dir / f"{i}.jpg" for i in self.ids]
        self.label_files = [label_dir / f"{i}.png" for i in self.ids]

    def _read_label(self, path: Path) -> np.ndarray:
        return apply_table(read_label_png(path), FINE_TO_COARSE, path)
