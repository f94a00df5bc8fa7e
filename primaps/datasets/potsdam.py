"""Potsdam-3 in the IIC / STEGO layout (``.mat`` files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ._base import (
    DatasetFileError,
    SegmentationDataset,
    apply_table,
    lookup_table,
    names_in,
    read_id_list,
    report_missing,
    require_dir,
    require_file,
)

__all__ = ["Potsdam"]

CLASS_NAMES = ("road", "building", "vegetation")
PALETTE = np.array([(58, 0, 68), (0, 130, 122), (255, 230, 0)], dtype=np.uint8)

# 0 road/impervious, 4 car -> 0; 1 building, 5 clutter -> 1;
# 2 low vegetation, 3 tree -> 2; anything else -> 255.
FINE_TO_COARSE = lookup_table([(0, 0), (4, 0), (1, 1), (5, 1), (2, 2), (3, 2)])

SPLIT_FILES = {
    "train": "labelled_train.txt",
    "val": "labelled_test.txt",
    "unlabelled_train": "unlabelled_train.txt",
    "all": "all.txt",
}


# Potsdam tiles are 200 x 200 x 4; a file that declares far more is refused.
MAX_MAT_ELEMENTS = 1 << 28


def load_mat(path: Path, key: str) -> np.ndarray:
    """Array `key` of the MATLAB file at `path`; errors name the file."""
    from scipy.io import loadmat, whosmat

    try:
        # the shapes a file declares are checked before its data is read
        for name, shape, _ in whosmat(str(path)):
            if name == key and int(np.prod(shape, dtype=object)) > MAX_MAT_ELEMENTS:
                raise ValueError(f"variable {key!r} declares shape {shape}, more than "
                                 f"{MAX_MAT_ELEMENTS} elements")
        content = loadmat(str(path), variable_names=[key])
    except FileNotFoundError:
        raise
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, ...
        raise DatasetFileError(path, f"cannot read the MATLAB file ({exc})") from exc
    if key not in content:
        raise DatasetFileError(path, f"the MATLAB file has no variable {key!r}")
    return np.asarray(content[key])


class Potsdam(SegmentationDataset):
    """Potsdam-3: ``root/imgs/<id>.mat`` (key ``img``, 200x200x4 uint8 R, G, B, IR;
    the first three channels are used, 3-channel files are accepted) and
    ``root/gt/<id>.mat`` (key ``gt``, 0 road, 1 building, 2 low vegetation,
    3 tree, 4 car, 5 clutter), with split lists in ``root``.

    Classes: {0, 4} -> 0 road, {1, 5} -> 1 building, {2, 3} -> 2 vegetation,
    anything else 255 (ignore).

    Parameters
    ----------
    root : path
        The folder that holds ``imgs/``, ``gt/`` and the split lists.
    split : {"train", "val", "unlabelled_train", "all"}
        ``labelled_train.txt``, ``labelled_test.txt``, ``unlabelled_train.txt``
        (items have no label: None) and ``all.txt`` (an item has a label when
        its ``gt/<id>.mat`` exists).
    resize, crop : int
        The protocol (320, 320; 322, 322 for patch-14 backbones).
    """

    name = "Potsdam"
    splits = tuple(SPLIT_FILES)
    class_names = CLASS_NAMES
    palette = PALETTE

    def _build_index(self) -> None:
        lst = require_file(
            self.root / SPLIT_FILES[self.split], self.name,
            f"the list of the {self.split} split under root {self.root}",
        )  # fmt: skip
        image_dir = require_dir(self.root / "imgs", self.name, f"imgs/<id>.mat under root {self.root}")
        labelled = self.split in ("train", "val")
        label_dir = self.root / "gt"
        if labelled:
            require_dir(label_dir, self.name, f"gt/<id>.mat under root {self.root}")
        self.ids = read_id_list(lst)
        have_images = names_in(image_dir)
        have_labels = names_in(label_dir) if label_dir.is_dir() else set()
        report_missing(
            self.name,
            [image_dir / f"{i}.mat" for i in self.ids if f"{i}.mat" not in have_images],
            "images are",
        )
        if labelled:
            report_missing(
                self.name,
                [label_dir / f"{i}.mat" for i in self.ids if f"{i}.mat" not in have_labels],
                "label maps are",
            )
        self.image_files = [image_dir / f"{i}.mat" for i in self.ids]
        if self.split == "unlabelled_train":
            self.label_files = [None] * len(self.ids)
        else:
            self.label_files = [
                label_dir / f"{i}.mat" if f"{i}.mat" in have_labels else None for i in self.ids
            ]

    def _read_image(self, path: Path) -> Image.Image:
        img = load_mat(path, "img")
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise DatasetFileError(
                path, f"'img' must have shape (H, W, 3) or (H, W, 4), got {img.shape}"
            )
        if img.dtype != np.uint8:
            if not np.issubdtype(img.dtype, np.integer) or img.min() < 0 or img.max() > 255:
                raise DatasetFileError(
                    path, f"'img' must hold 8-bit values, got dtype {img.dtype}"
                )
            img = img.astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(img[:, :, :3]))

    def _read_label(self, path: Path) -> np.ndarray:
        return apply_table(load_mat(path, "gt"), FINE_TO_COARSE, path)
