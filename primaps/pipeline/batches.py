"""Shuffled batches of a training store for the fit stage: the whole
store in memory when it fits, else streamed shard window by shard window."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..features import FeatureStore
from .ui import UI

# In-memory training when the features fit in this many bytes (float32);
# larger stores are streamed shard window by shard window.
IN_MEMORY_BYTES = 1 << 30


class Batches:
    """Re-iterable shuffled batches of a training store, or of arrays that
    fit in memory, with a progress bar in images/s for every pass.

    Yields, by `maps`: ``(features, masks)`` ("masks"), ``(features,
    None)`` ("none": EM without masks), ``(features, labels)`` ("labels")
    or bare features ("features").  In memory the features are float32;
    streamed, they are in `dtype` (default: the store's, so a float16 store
    yields float16 batches, which the kernels widen exactly in C).
    """

    def __init__(self, store: FeatureStore, batch_size: int, seed: int, ui: UI,
                 desc: Callable[[], str], maps: str = "masks", shuffle: bool = True,
                 labels: Optional[np.ndarray] = None, in_memory: Optional[bool] = None,
                 dtype: Any = None):
        self.store, self.batch_size, self.seed, self.ui = store, batch_size, seed, ui
        self.dtype = dtype
        self.desc, self.maps, self.shuffle, self.labels = desc, maps, shuffle, labels
        self.n = len(store)
        self.passes = 0
        C_h_w = store.item_shape or (0,)
        nbytes = self.n * int(np.prod(C_h_w)) * 4
        self.features = None
        self.masks = None
        if in_memory if in_memory is not None else nbytes <= IN_MEMORY_BYTES:
            self.features = np.concatenate([np.asarray(f, dtype=np.float32)
                                            for _, f in store.iter_shards()])
            if maps == "masks":
                self.masks = np.stack([store.read_masks(i) for i in store.ids])
        self.row = {i: k for k, i in enumerate(store.ids)}

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def arrays(self, maps: str) -> Optional[tuple]:
        """``(features, masks)`` ("masks") or ``(features, None)`` ("none")
        when the store is held in memory, else None."""
        if self.features is None:
            return None
        return (self.features, self.masks if maps == "masks" else None)

    def _tuple(self, feats: np.ndarray, masks: Optional[np.ndarray], ids) -> Any:
        if self.maps == "masks":
            return feats, masks
        if self.maps == "none":
            return feats, None
        if self.maps == "labels":
            return feats, self.labels[[self.row[i] for i in ids]]
        return feats

    def __iter__(self) -> Iterator[Any]:
        seed = [self.seed, self.passes]
        self.passes += 1
        with self.ui.progress(self.n, self.desc()) as bar:
            if self.features is not None:
                rng = np.random.default_rng(seed)
                order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
                ids = self.store.ids
                for s in range(0, self.n, self.batch_size):
                    idx = order[s:s + self.batch_size]
                    m = self.masks[idx] if self.masks is not None else None
                    yield self._tuple(self.features[idx], m, [ids[i] for i in idx])
                    bar.update(len(idx))
            else:
                pass_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
                it = self.store.batches(self.batch_size, shuffle=self.shuffle, seed=pass_seed,
                                        masks=self.maps == "masks", dtype=self.dtype)
                for item in it:
                    ids, feats = item[0], item[1]
                    yield self._tuple(feats, item[2] if len(item) > 2 else None, ids)
                    bar.update(len(ids))
