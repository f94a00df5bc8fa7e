"""Datasets: loaders for the standard dataset folders and generated data.

``primaps.datasets.synthetic`` generates seeded dense features with ground
truth for benchmarks, tests and the demo.

Loaders of the standard folders (docs/method.md §1.5): :class:`Cityscapes`
(27 classes), :class:`CocoStuff` (27 coarse classes, curated lists) and
:class:`Potsdam` (3 classes).  Items are ``(image, label)`` NumPy arrays under
the evaluation :class:`Protocol` (short side resized, centre crop).
"""

from . import synthetic
from ._base import DatasetFileError, SegmentationDataset, collate
from .cityscapes import Cityscapes
from .cocostuff import CocoStuff
from .potsdam import Potsdam
from .protocol import Protocol

__all__ = [
    "Cityscapes",
    "CocoStuff",
    "Potsdam",
    "Protocol",
    "SegmentationDataset",
    "DatasetFileError",
    "collate",
    "synthetic",
]
