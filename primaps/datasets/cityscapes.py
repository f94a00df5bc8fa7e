"""Cityscapes with the 27 classes of STEGO / PriMaPs (fine annotations)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._base import (
    SegmentationDataset,
    apply_table,
    lookup_table,
    read_label_png,
    report_missing,
    require_dir,
)

__all__ = ["Cityscapes"]

CLASS_NAMES = (
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence",
    "guard rail", "bridge", "tunnel", "pole", "polegroup", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)  # fmt: skip

# The official Cityscapes colours of label ids 7..33, except where two
# classes would look alike: the official ones give polegroup the colour of
# pole and the vehicles (truck, bus, caravan, trailer, train) near-equal dark
# blues, so rail track, guard rail, bridge, polegroup, bus, caravan, trailer
# and train have colours of their own (every pair at least 35 apart in RGB,
# the vehicles at least 60; tests/test_datasets.py checks it).
PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (250, 170, 160), (140, 90, 40),
        (70, 70, 70), (102, 102, 156), (190, 153, 153), (200, 215, 255),
        (60, 20, 60), (150, 120, 90), (153, 153, 153), (60, 110, 110),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
        (0, 140, 190), (255, 100, 160), (160, 0, 200), (0, 200, 160), (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip

FIRST_LABEL_ID = 7
# label id -> class: labelId - 7 for 7..33, everything else 255.
LABEL_ID_TO_CLASS = lookup_table((i, i - FIRST_LABEL_ID) for i in range(7, 34))

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(SegmentationDataset):
    """Cityscapes-27: ``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``root/gtFine/<split>/<city>/*_gtFine_labelIds.png``.

    Class = labelId - 7 for labelIds 7..33, everything else 255 (ignore).

    Parameters
    ----------
    root : path
        The folder that holds ``leftImg8bit/`` and ``gtFine/``.
    split : {"train", "val"}
        2975 and 500 images in the full dataset.
    resize, crop : int
        The protocol: short side to `resize`, centre crop `crop` (320, 320;
        322, 322 for patch-14 backbones).
    """

    name = "Cityscapes"
    splits = ("train", "val")
    class_names = CLASS_NAMES
    palette = PALETTE

    def _build_index(self) -> None:
        image_dir = require_dir(
            self.root / "leftImg8bit" / self.split, self.name,
            f"leftImg8bit/{self.split}/<city>/*{IMAGE_SUFFIX} under root {self.root}",
        )  # fmt: skip
        label_dir = require_dir(
            self.root / "gtFine" / self.split, self.name,
            f"gtFine/{self.split}/<city>/*{LABEL_SUFFIX} under root {self.root}",
        )  # fmt: skip
        missing = []
        for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            for image in sorted(city.glob("*" + IMAGE_SUFFIX)):
                stem = image.name[: -len(IMAGE_SUFFIX)]
                label = label_dir / city.name / (stem + LABEL_SUFFIX)
                if not label.is_file():
                    missing.append(label)
                self.ids.append(stem)
                self.image_files.append(image)
                self.label_files.append(label)
        if not self.ids:
            raise FileNotFoundError(
                f"{self.name}: no images found: expected {image_dir}/<city>/*{IMAGE_SUFFIX}"
            )
        report_missing(self.name, missing, "label maps are")

    def _read_label(self, path: Path) -> np.ndarray:
        return apply_table(read_label_png(path), LABEL_ID_TO_CLASS, path)
