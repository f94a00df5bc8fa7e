"""The pseudo stage: PriMaPs mask maps of the training store at the label
size, stored beside its features with the fingerprint of their [masks]
config.

`shard_masks` is the unit of work (the masks of one shard's images, which
do not depend on how the images are grouped); `pseudo` is the
one-process driver that resumes, writes and prunes."""

from __future__ import annotations

import time
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .._runtime import get_num_threads
from ..config import Config
from ..features import FeatureStore
from .data import ImageSource, label_size
from .files import Paths, _digest, open_store, update_metrics, write_json, writing
from .ui import UI, PipelineError, stage


def _mask_kwargs(cfg: Config) -> dict:
    m = cfg.masks
    return dict(threshold=m.threshold, stop_fraction=m.stop_fraction, gain=m.gain,
                median_size=m.median_size, max_masks=m.max_masks or None)


def masks_of(cfg: Config, features: np.ndarray, size: Tuple[int, int],
             images: Optional[np.ndarray] = None) -> np.ndarray:
    """PriMaPs mask maps of a batch of features at `size`, refined by the
    dense CRF over `images` when they are given."""
    from .. import masks

    crf = images is not None
    return masks(np.ascontiguousarray(features, dtype=np.float32), out_size=size,
                 images=images, crf=crf, **_mask_kwargs(cfg))


def shard_masks(cfg: Config, ids: Sequence[str], feats: Any, size: Tuple[int, int],
                rows: Optional[Sequence[int]] = None, images: Optional[ImageSource] = None,
                bar: Any = None) -> np.ndarray:
    """The mask maps (n, H, W) int32 at `size` of the images `rows` (default
    all) of one shard (its `ids` and features `feats`, any float dtype),
    refined by the dense CRF over `images` when given.  `bar`, if given, is
    moved by the images done."""
    rows = list(range(len(ids))) if rows is None else list(rows)
    maps = []
    # the bar moves every few images per thread (a noise image can take
    # seconds); the masks do not depend on the grouping
    bs = min(cfg.masks.batch_size, 4 * get_num_threads())
    for s in range(0, len(rows), bs):
        part_rows = rows[s:s + bs]
        part = np.asarray(feats[part_rows], dtype=np.float32)
        imgs = images.read([ids[r] for r in part_rows]) if images is not None else None
        if images is not None and (imgs is None or imgs.shape[1:3] != tuple(size)):
            raise PipelineError("the images of the training store cannot be read "
                                f"at the label size {size}: set masks.crf=false")
        maps.append(masks_of(cfg, part, size, imgs))
        if bar is not None:
            bar.update(part.shape[0])
    return np.concatenate(maps) if maps else np.zeros((0, *size), np.int32)


PSEUDO_RECORD = "pseudo.json"


def _mask_record(cfg: Config, size: Tuple[int, int]) -> dict:
    """What the stored masks depend on: the [masks] fields (not the batch
    size) and the label size."""
    m = dict(cfg.masks.__dict__)
    m.pop("batch_size")
    return {"masks": m, "label_size": [int(x) for x in size]}


def mask_tag(cfg: Config, size: Tuple[int, int]) -> str:
    """The fingerprint of the masks the current config makes, recorded
    with every mask shard."""
    return "masks:" + _digest(_mask_record(cfg, size))[:32]


@stage("pseudo")
def pseudo(cfg: Config, ui: UI) -> dict:
    """PriMaPs masks of the training store, stored beside its features.

    Resumable: every mask shard records the fingerprint of the mask config
    it was made with (`mask_tag`); the masks of that fingerprint are reused,
    the rest are computed.  Once every image has masks of the current
    config, the shards of other configs are removed.  `pseudo.json` in the
    store's folder describes the current set.
    """
    paths = Paths(cfg)
    with writing(paths.out), writing(paths.data):  # the masks go into the shared store
        return _pseudo(cfg, paths, ui)


def _pseudo(cfg: Config, paths: Paths, ui: UI) -> dict:
    size = label_size(cfg, paths)
    t0 = time.perf_counter()
    open_store(paths.store("train"), hint=ui.command("extract", cfg))
    images = ImageSource(cfg, "train") if cfg.masks.crf else None
    refined = bool(images)
    n_masks: List[int] = []
    record_path = paths.store("train") / PSEUDO_RECORD
    tag = mask_tag(cfg, size)
    record = {**_mask_record(cfg, size), "tag": tag, "refined": refined, "ids": []}
    reused = 0
    with FeatureStore(paths.store("train"), mode="a") as store:
        done = {i for i in store.mask_ids if store.mask_tag(i) == tag}
        record["ids"] = [i for i in store.ids if i in done]
        write_json(record_path, record)
        if done:
            ui.info(f"pseudo: reusing the masks of {len(done)} of {len(store)} images "
                    f"(same [masks] config)")
        with ui.progress(len(store), "PriMaPs masks") as bar:
            for k in range(store.n_shards):
                ids, feats = store.shard(k)
                todo = [r for r, i in enumerate(ids) if i not in done]
                for r, i in enumerate(ids):
                    if i in done:
                        n_masks.append(int(store.read_masks(i).max()))
                        reused += 1
                bar.update(len(ids) - len(todo))
                if not todo:
                    continue
                m = shard_masks(cfg, ids, feats, size, todo, images if refined else None, bar)
                del feats  # unmap the shard
                n_masks += m.reshape(m.shape[0], -1).max(axis=1).tolist()
                written = [ids[r] for r in todo]
                store.write_masks(written, m, tag=tag)
                record["ids"] += written
                write_json(record_path, record)
        # the set is complete: shards of other configs are obsolete
        pruned = store.prune_masks()
    out = {"images": len(n_masks), "reused": reused, "label_size": list(size),
           "masks_per_image": round(float(np.mean(n_masks)), 2) if n_masks else None,
           "refinement": "dense CRF over the images" if refined else
                         "bilinear upsampling, no CRF (" + ("features only" if cfg.masks.crf
                                                            else "masks.crf = false") + ")",
           "tag": tag, "obsolete_shards_removed": pruned,
           "seconds": round(time.perf_counter() - t0, 3)}
    update_metrics(paths.metrics, "pseudo", out, ui)
    return out
