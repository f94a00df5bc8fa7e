"""The configured data set: its loaders, class names and palette, label
size, and the images behind a store's ids (for the dense CRF)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ..config import Config
from .files import Paths, _split_name, load_labels
from .ui import PipelineError


def _dataset(cfg: Config, split: str):
    from .. import datasets

    cls = {"cityscapes": datasets.Cityscapes, "cocostuff": datasets.CocoStuff,
           "potsdam": datasets.Potsdam}[cfg.data.dataset]
    if not cfg.data.root:
        raise PipelineError(f"data.root is not set: the folder of {cls.__name__} "
                            "(e.g. --set data.root=/data/cityscapes)")
    return cls(cfg.data.root, split, resize=cfg.data.resize, crop=cfg.data.crop)


def dataset_info(cfg: Config) -> Tuple[Tuple[str, ...], np.ndarray]:
    """Class names and palette of the configured data set."""
    if cfg.data.dataset == "street":
        from ..datasets.street import CLASS_NAMES, PALETTE

        return CLASS_NAMES, PALETTE
    from ..datasets import cityscapes, cocostuff, potsdam

    mod = {"cityscapes": cityscapes.Cityscapes, "cocostuff": cocostuff.CocoStuff,
           "potsdam": potsdam.Potsdam}[cfg.data.dataset]
    return tuple(mod.class_names), np.asarray(mod.palette)


def n_classes(cfg: Config) -> int:
    return cfg.em.n_classes or len(dataset_info(cfg)[0])


def label_size(cfg: Config, paths: Paths, split: str = "train") -> Tuple[int, int]:
    """(H, W) of the labels (the size of the mask maps of the E-step)."""
    p = paths.labels(split)
    if p.is_file():
        return tuple(load_labels(p)[1].shape[1:])  # type: ignore[return-value]
    if cfg.data.dataset == "street":
        return cfg.data.size, cfg.data.size
    return cfg.data.crop, cfg.data.crop


class ImageSource:
    """The images of a data set split by id (None for generated data)."""

    def __init__(self, cfg: Config, split: str):
        self.ds = None
        if cfg.data.dataset != "street" and cfg.data.root:
            try:
                self.ds = _dataset(cfg, _split_name(cfg, split))
            except (OSError, ValueError):
                self.ds = None  # the folders are gone: features only
        self.index = {i: k for k, i in enumerate(self.ds.ids)} if self.ds else {}

    def __bool__(self) -> bool:
        return self.ds is not None

    def read(self, ids: Sequence[str]) -> Optional[np.ndarray]:
        if self.ds is None or any(i not in self.index for i in ids):
            return None
        return np.stack([self.ds[self.index[i]][0] for i in ids])
