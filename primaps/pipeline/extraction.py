"""The extract stage: images of the data set folders (or the generated
street scenes) -> feature stores and label files, shard by shard.

`extract_shard` is the unit of work: the features of one shard's images
through the configured backbone, in the layout the store keeps."""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..config import Config, ConfigError
from ..features import FeatureStore
from .data import _dataset
from .files import SPLITS, Paths, _split_name, save_labels, writing
from .ui import UI, PipelineError, stage


def _import_callable(spec: str, cfg_dir: Optional[Path]) -> Callable:
    """The function named by "module:function" (the cwd and the config's
    folder are searched first)."""
    mod_name, _, fn_name = spec.partition(":")
    for p in ([str(cfg_dir)] if cfg_dir else []) + [os.getcwd()]:
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise PipelineError(f"backbone.callable {spec!r}: cannot import {mod_name!r}: "
                            f"{e}") from None
    fn = mod
    for part in fn_name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise PipelineError(f"backbone.callable {spec!r}: {mod_name} has no {fn_name!r}")
    if not callable(fn):
        raise PipelineError(f"backbone.callable {spec!r} is not callable")
    return fn


def _feature_fn(cfg: Config, cfg_dir: Optional[Path]) -> Callable[[np.ndarray], np.ndarray]:
    b = cfg.backbone
    if b.callable:
        return _import_callable(b.callable, cfg_dir)
    from .. import backbones

    model = backbones.load(b.name, b.weights or None, device=b.device)
    return lambda images: model.extract(images, batch_size=b.batch_size, flip=b.flip)


def _callable_features(cfg: Config, out: Any, n: int) -> np.ndarray:
    """The backbone's output for n images as (n, C, h, w), after
    backbone.layout (a view where possible)."""
    from .._layout import to_nchw

    b = cfg.backbone
    what = {"": "(B, C, h, w)", "nchw": "(B, C, h, w)", "nhwc": "(B, h, w, C)",
            "tokens": "(B, N, C)"}[b.layout]
    try:
        feats = to_nchw(out, b.layout or None, b.grid or None, "the backbone's output",
                        ndims=(4,))
    except ValueError as e:
        raise PipelineError(f"backbone {b.callable or b.name}: {e} (set backbone.layout, "
                            "e.g. --set backbone.layout=nhwc)") from None
    feats = np.asarray(feats)
    if feats.ndim != 4 or feats.shape[0] != n:
        raise PipelineError(f"the feature function returned shape {np.shape(out)} for {n} "
                            f"images; expected {what} (backbone.layout = {b.layout!r})")
    return feats


def extract_shard(cfg: Config, fn: Callable[[np.ndarray], np.ndarray],
                  images: np.ndarray) -> np.ndarray:
    """The features of a batch of images (B, H, W, 3) as (B, C, h, w): the
    backbone `fn` (see `_feature_fn`), its output put in that layout."""
    return _callable_features(cfg, fn(images), images.shape[0])


def _extract_street(cfg: Config, paths: Paths, ui: UI) -> dict:
    from ..datasets.street import street_scenes

    d = cfg.data
    t = time.perf_counter()
    data = street_scenes(d.n_train + d.n_val, seed=cfg.run.seed, size=d.size)
    out = {"generated_s": round(time.perf_counter() - t, 3)}
    parts = {"train": slice(0, d.n_train), "val": slice(d.n_train, None)}
    for split, sl in parts.items():
        feats, labels = data.features[sl], data.labels[sl]
        ids = [f"street_{split}_{i:05d}" for i in range(len(feats))]
        # a store of the same data (same seed and size) is reused as it is
        protocol = {"generated": "street_scenes", "seed": cfg.run.seed, "size": d.size,
                    "n_train": d.n_train, "n_val": d.n_val}
        try:
            store = FeatureStore(paths.store(split), dtype=cfg.backbone.dtype,
                                 backbone="street", protocol=protocol)
        except ValueError as e:
            if "protocol" not in str(e):
                raise
            old = FeatureStore(paths.store(split), mode="r").protocol
            raise PipelineError(
                f"{paths.store(split)} holds the street scenes of {old}, not of {protocol} "
                f"(the generated data depend on the seed and data.*): pass another --out, or "
                f"--features {paths.out} with a new --out to train on the data already "
                "there") from None
        with store:
            step = cfg.backbone.shard_size
            todo = [k for k, i in enumerate(ids) if i not in store]
            with ui.progress(len(todo), f"store {split}") as bar:
                for s in range(0, len(todo), step):
                    part = todo[s:s + step]
                    store.append([ids[k] for k in part], feats[part])
                    bar.update(len(part))
        save_labels(paths.labels(split), ids, labels)
        out[split] = {"images": len(ids), "feature_shape": list(feats.shape[1:]),
                      "label_shape": list(labels.shape[1:])}
    return out


@stage("extract")
def extract(cfg: Config, ui: UI, cfg_dir: Optional[Path] = None) -> dict:
    """Images of the data set folders -> feature stores and label files.

    Resumable: images already in a store are skipped.  The generated street
    scenes need no backbone.
    """
    paths = Paths(cfg)
    if paths.shared:
        raise ConfigError(f"extract writes the features of run.out ({paths.out}); with "
                          f"--features {paths.data} the features are read from that folder: "
                          "drop --features to extract into run.out")
    with writing(paths.out):
        return _extract(cfg, paths, ui, cfg_dir)


def _extract(cfg: Config, paths: Paths, ui: UI, cfg_dir: Optional[Path]) -> dict:
    t0 = time.perf_counter()
    if cfg.data.dataset == "street":
        out = _extract_street(cfg, paths, ui)
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return out
    # the data set folders first: a missing path is reported before a
    # missing torch or weights file
    datasets = {split: _dataset(cfg, _split_name(cfg, split)) for split in SPLITS}
    fn = _feature_fn(cfg, cfg_dir)
    out: Dict[str, Any] = {}
    for split in SPLITS:
        ds = datasets[split]
        n = len(ds) if not cfg.data.limit else min(cfg.data.limit, len(ds))
        ids = ds.ids[:n]
        store = FeatureStore(paths.store(split), dtype=cfg.backbone.dtype,
                             backbone=cfg.backbone.callable or cfg.backbone.name,
                             protocol={**ds.protocol.as_dict(), "flip_average": cfg.backbone.flip})
        labels: List[Optional[np.ndarray]] = [None] * n
        with store, ui.progress(n, f"extract {split}") as bar:
            step = cfg.backbone.shard_size
            for s in range(0, n, step):
                part = range(s, min(n, s + step))
                items = [ds[k] for k in part]
                for k, (_, lab) in zip(part, items):
                    labels[k] = lab
                todo = [k for k in part if ids[k] not in store]
                if todo:
                    images = np.stack([items[k - s][0] for k in todo])
                    store.append([ids[k] for k in todo], extract_shard(cfg, fn, images))
                bar.update(len(part))
            shape = store.item_shape
        if all(lab is not None for lab in labels) and labels:
            save_labels(paths.labels(split), ids, np.stack(labels))
        out[split] = {"images": n, "feature_shape": list(shape or ()),
                      "labelled": all(lab is not None for lab in labels)}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
