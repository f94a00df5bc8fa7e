"""The supervised linear probe: the upper bound the paper reports, on the
same C kernels and resolution trick as PriMaPs-EM."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from . import _core
from ._training import (Adam, ArraySource, as_features, check_float, check_int,
                        check_not_half_arrays,
                        check_reiterable, is_array_tuple, iterable_epoch, progress,
                        WorkspaceOwner, exclusive)
from .crf import check_images, predict_refined, resolve_crf

__all__ = ["LinearProbe"]


class LinearProbe(WorkspaceOwner):
    """Softmax regression with bias on features against ground-truth labels.

    A 1x1 convolution ``z_k = w_k . F_p + b_k`` at feature resolution,
    upsampled bilinearly to the label size, with the cross-entropy against
    the labels (255 = ignore; the mean runs over all pixels, ignored ones
    counting 0, as in the original), trained by Adam.  Scored without
    Hungarian matching.

    Parameters
    ----------
    n_classes : int
        Number of classes K (1 to 255).
    lr : float
        Adam learning rate.
    epochs : int
        Epochs of `fit` (the original trains the probe alongside the
        segmentation head, 52 epochs; it converges much sooner).
    batch_size : int
        Images per step when in-memory arrays are given.
    seed : int
        Seed of the initialisation (that of ``torch.nn.Conv2d``: uniform in
        +-1/sqrt(C)) and of the shuffling.

    Attributes
    ----------
    weight_ : ndarray (K, C), float32
    bias_ : ndarray (K,), float32
    loss_history_ : list of float
        Loss of every step.
    """

    def __init__(self, n_classes: int, lr: float = 5e-3, epochs: int = 10,
                 batch_size: int = 32, seed: int = 0):
        self.n_classes = check_int(n_classes, "n_classes", 1, 255)
        self.lr = check_float(lr, "lr", positive=True)
        self.epochs = check_int(epochs, "epochs", 0)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.seed = check_int(seed, "seed", 0)
        self._rng = np.random.default_rng(self.seed)
        self._ws = _core.em_workspace()
        self.weight_: np.ndarray | None = None
        self.bias_: np.ndarray | None = None
        self._adam: Adam | None = None
        self.loss_history_: list[float] = []

    def __repr__(self) -> str:
        return (f"LinearProbe(n_classes={self.n_classes}, lr={self.lr}, epochs={self.epochs}, "
                f"batch_size={self.batch_size}, seed={self.seed})")

    def _init(self, C: int) -> None:
        bound = 1.0 / np.sqrt(C)
        K = self.n_classes
        self.weight_ = self._rng.uniform(-bound, bound, (K, C)).astype(np.float32)
        self.bias_ = self._rng.uniform(-bound, bound, K).astype(np.float32)
        self._adam = Adam({"weight": self.weight_, "bias": self.bias_}, self.lr)

    @exclusive
    def fit(self, batches: Any, verbose: bool = True) -> "LinearProbe":
        """Train for ``epochs`` epochs (from the current weights if fitted).

        Parameters
        ----------
        batches : tuple (features, labels) of arrays, or an iterable of such
            tuples
            features (n, C, h, w); labels (n, H, W) class ids in [0, K) or
            255 at label resolution.
        verbose : bool
            Show a tqdm progress bar.
        """
        check_not_half_arrays(batches, ("features", "labels"))
        if is_array_tuple(batches):
            if len(batches) != 2:
                raise ValueError("batches must be (features, labels)")
            K = self.n_classes
            src = ArraySource(batches[0], batches[1], maps_name="labels",
                              check_maps=lambda m: _core.as_label_map(m, K))
            it, n_batches = None, src.n_batches(self.batch_size)
        else:
            if not isinstance(batches, Iterable):
                raise TypeError("batches must be (features, labels) arrays or an iterable "
                                f"of such tuples, got {type(batches).__name__}")
            check_reiterable(batches, self.epochs, "batches")
            src, it = None, batches
            n_batches = len(batches) if hasattr(batches, "__len__") else None
        for e in range(self.epochs):
            epoch = (src.epoch(self._rng, self.batch_size) if src is not None
                     else iterable_epoch(it, True, "batches"))
            with progress(n_batches, f"linear probe {e + 1}/{self.epochs}", verbose) as bar:
                for b in epoch:
                    loss = self._step(b)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
        return self

    @exclusive
    def partial_fit(self, batch: Any) -> "LinearProbe":
        """One Adam step on one batch (features (B, C, h, w), labels (B, H, W))."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError("batch must be a tuple (features, labels)")
        labels = np.asarray(batch[1])
        self._step({"features": as_features(batch[0]),
                    "maps": labels[None] if labels.ndim == 2 else labels, "index": None})
        return self

    def _step(self, b: dict) -> float:
        C = b["features"].shape[1]
        if self.weight_ is None:
            self._init(C)
        elif C != self.weight_.shape[1]:
            raise ValueError(f"features have {C} channels but the probe has "
                             f"{self.weight_.shape[1]}")
        loss, dw, db = _core.probe_bwd(self._ws, b["features"], b["maps"], self.weight_,
                                       self.bias_, index=b["index"])
        self._adam.update({"weight": self.weight_, "bias": self.bias_},
                          {"weight": dw, "bias": db})
        self.loss_history_.append(float(loss))
        return float(loss)

    def predict(self, features: Any, size: Any, images: Any = None,
                crf: Any = False) -> np.ndarray:
        """Class of every pixel at `size` (an int or (H, W)): the argmax of
        the logits upsampled bilinearly, or refined by the dense CRF over
        `images` (uint8 (B, H, W, 3) or (H, W, 3)) with ``crf`` as in
        :meth:`PriMaPsEM.predict`.  int32 (B, H, W) or (H, W)."""
        if self.weight_ is None:
            raise RuntimeError("predict needs a fitted probe: call fit first")
        x = as_features(features)
        if x.shape[1] != self.weight_.shape[1]:
            raise ValueError(f"features have {x.shape[1]} channels but the probe has "
                             f"{self.weight_.shape[1]}")
        single = np.ndim(features) == 3
        refiner = resolve_crf(crf)
        if refiner is not None:
            out = predict_refined(refiner, x, self.weight_, self.bias_, size, images, single)
        else:
            if images is not None:
                check_images(images, x.shape[0], single)
            out = _core.em_predict(self._ws, x, self.weight_, size, bias=self.bias_)
        return out[0] if single else out
