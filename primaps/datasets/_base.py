"""What the dataset loaders share: the item protocol, file reading with errors
that name the file, the label look-up tables and a NumPy collate function."""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .protocol import Protocol

__all__ = ["DatasetFileError", "SegmentationDataset", "collate"]

PathLike = Union[str, "os.PathLike[str]"]
IGNORE = 255


class DatasetFileError(OSError):
    """A dataset file exists but cannot be read, or holds what it should not.

    The message starts with the file's path; ``.path`` holds it too.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


def lookup_table(pairs: Iterable[Tuple[int, int]]) -> np.ndarray:
    """A 256-entry uint8 table, 255 (ignore) wherever `pairs` says nothing."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for src, dst in pairs:
        lut[src] = dst
    return lut


def apply_table(values: np.ndarray, lut: np.ndarray, path: PathLike) -> np.ndarray:
    """Map integer label values through `lut`; values outside 0..255 -> 255."""
    if values.ndim != 2:
        raise DatasetFileError(path, f"a label map must be 2-D, got shape {values.shape}")
    if values.dtype == np.uint8:
        return lut[values]
    if not np.issubdtype(values.dtype, np.integer):
        raise DatasetFileError(path, f"label values must be integers, got {values.dtype}")
    inside = (values >= 0) & (values <= 255)
    return np.where(inside, lut[np.where(inside, values, 0).astype(np.intp)], IGNORE).astype(
        np.uint8
    )


def read_image(path: PathLike) -> Image.Image:
    """The image at `path` as an RGB PIL image, fully decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise DatasetFileError(path, f"cannot read the image ({exc})") from exc


def read_label_png(path: PathLike) -> np.ndarray:
    """The label PNG at `path` as an integer array (mode L, P, I or I;16)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(f"a label map must be single-channel, got mode {im.mode}")
            return np.asarray(im)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DatasetFileError(path, f"cannot read the label map ({exc})") from exc


def require_dir(path: Path, dataset: str, what: str) -> Path:
    """`path` if it is a folder, else a FileNotFoundError that names it."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"{dataset}: expected the folder {path} ({what}), which does not exist"
        )
    return path


def require_file(path: Path, dataset: str, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: expected the file {path} ({what}), which does not exist"
        )
    return path


def report_missing(dataset: str, missing: List[Path], what: str, hint: str = "") -> None:
    """Raise a FileNotFoundError naming the first missing files, if any."""
    if not missing:
        return
    shown = ", ".join(str(p) for p in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise FileNotFoundError(
        f"{dataset}: {len(missing)} {what} missing: expected {shown}{more}{hint}"
    )


def read_id_list(path: Path) -> List[str]:
    """The non-empty, stripped lines of an image-id list."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFileError(path, f"cannot read the image list ({exc})") from exc
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise DatasetFileError(path, "the image list holds no image ids")
    return ids


def names_in(folder: Path) -> set:
    """The entry names of `folder` (one directory scan instead of one stat
    per file, which matters for COCO's 50k images)."""
    with os.scandir(folder) as it:
        return {entry.name for entry in it}


class SegmentationDataset(abc.ABC):
    """Base of the loaders: a list of image files, optional label files, and
    the protocol.

    Items are ``(image, label)``: ``image`` a ``(crop, crop, 3)`` uint8 array,
    ``label`` a ``(crop, crop)`` uint8 array of class ids with 255 = ignore, or
    None for an image without a label.  Plain ``__len__``/``__getitem__`` and
    picklable, so a ``torch.utils.data.DataLoader`` can use it with worker
    processes; pass ``collate_fn=primaps.datasets.collate`` to get NumPy
    batches (and to allow unlabelled items).

    Attributes
    ----------
    ids : list of str
        Image ids in item order (file names without their suffix).
    class_names : tuple of str
        The ``n_classes`` class names, in class-id order.
    palette : ndarray of shape (n_classes, 3), uint8
        A colour per class.
    protocol : Protocol
        Resize and crop applied to every item.
    """

    name = "dataset"
    splits: Tuple[str, ...] = ()
    class_names: Tuple[str, ...] = ()
    palette: np.ndarray = np.zeros((0, 3), dtype=np.uint8)

    def __init__(self, root: PathLike, split: str, resize: int = 320, crop: int = 320) -> None:
        if split not in self.splits:
            raise ValueError(
                f"split must be one of {', '.join(map(repr, self.splits))}, got {split!r}"
            )
        self.root = Path(root)
        self.split = split
        self.protocol = Protocol(resize, crop)
        self.ids: List[str] = []
        self.image_files: List[Path] = []
        self.label_files: List[Optional[Path]] = []
        self._build_index()

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def _build_index(self) -> None:
        """Fill ``ids``, ``image_files`` and ``label_files`` from ``root``."""

    def _read_image(self, path: Path) -> Image.Image:
        return read_image(path)

    @abc.abstractmethod
    def _read_label(self, path: Path) -> np.ndarray:
        """Class ids (uint8, 255 = ignore) of the label file at `path`."""

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        n = len(self.ids)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} items")
        index = int(index) % n
        image = self._read_image(self.image_files[index])
        label_path = self.label_files[index]
        label = None
        if label_path is not None:
            label = self._read_label(label_path)
            if label.shape != (image.height, image.width):
                raise DatasetFileError(
                    label_path,
                    f"the label map is {label.shape[1]}x{label.shape[0]} (WxH) but its "
                    f"image {self.image_files[index]} is {image.width}x{image.height}",
                )
        return self.protocol.apply(image, label)

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """An ``(H, W, 3)`` uint8 picture of a label map (ignore is black)."""
        colors = np.zeros((256, 3), dtype=np.uint8)
        colors[: self.n_classes] = self.palette
        return colors[np.asarray(label, dtype=np.uint8)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"resize={self.protocol.resize}, crop={self.protocol.crop}) with {len(self)} images"
        )


def collate(batch: Sequence[Tuple[np.ndarray, Optional[np.ndarray]]]):
    """Stack dataset items into NumPy batches (a ``collate_fn`` for a DataLoader).

    Returns ``(images, labels)``: images ``(B, H, W, 3)`` uint8; labels
    ``(B, H, W)`` uint8, None when no item has a label, or a list when only
    some have one.
    """
    images = np.stack([item[0] for item in batch])
    labels = [item[1] for item in batch]
    if all(label is None for label in labels):
        return images, None
    if any(label is None for label in labels):
        return images, labels
    return images, np.stack(labels)
