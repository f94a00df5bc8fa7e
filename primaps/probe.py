"""The supervised linear probe: the upper bound the paper reports, on the
same C kernels and resolution trick as PriMaPs-EM."""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from . import _core
from ._training import (Adam, ArraySource, as_features, check_float, check_int,
                        check_not_half_arrays,
                        check_reiterable, is_array_tuple, iterable_epoch, progress_bar,
                        want_progress,
                        WorkspaceOwner, exclusive, read_npz, rng_from_state, rng_state,
                        write_npz_atomic)
from ._layout import check_grid, check_layout, to_nchw
from ._version import __version__
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
    layout, grid :
        How the feature arrays are laid out, as for :class:`PriMaPsEM`.

    Attributes
    ----------
    weight_ : ndarray (K, C), float32
    bias_ : ndarray (K,), float32
    loss_history_ : list of float
        Loss of every step.
    """

    def __init__(self, n_classes: int, lr: float = 5e-3, epochs: int = 10,
                 batch_size: int = 32, seed: int = 0, layout: str | None = None,
                 grid: Any = None):
        self.n_classes = check_int(n_classes, "n_classes", 1, 255)
        self.lr = check_float(lr, "lr", positive=True)
        self.epochs = check_int(epochs, "epochs", 0)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.seed = check_int(seed, "seed", 0)
        self.layout = check_layout(layout)
        self.grid = check_grid(grid)
        if self.grid is not None and self.layout != "tokens":
            raise ValueError("grid is only for layout='tokens'")
        self._rng = np.random.default_rng(self.seed)
        self._ws = _core.em_workspace()
        self.weight_: np.ndarray | None = None
        self.bias_: np.ndarray | None = None
        self._adam: Adam | None = None
        self.loss_history_: list[float] = []

    def _params(self) -> dict:
        return {k: getattr(self, k) for k in (
            "n_classes", "lr", "epochs", "batch_size", "seed", "layout", "grid")}

    @property
    def _fmt(self) -> tuple:
        return (self.layout, self.grid)

    def __repr__(self) -> str:
        return "LinearProbe(" + ", ".join(f"{k}={v!r}" for k, v in self._params().items()) + ")"

    def _init(self, C: int) -> None:
        bound = 1.0 / np.sqrt(C)
        K = self.n_classes
        self.weight_ = self._rng.uniform(-bound, bound, (K, C)).astype(np.float32)
        self.bias_ = self._rng.uniform(-bound, bound, K).astype(np.float32)
        self._adam = Adam({"weight": self.weight_, "bias": self.bias_}, self.lr)

    @exclusive
    def fit(self, batches: Any, progress: bool = False, *,
            verbose: bool | None = None) -> "LinearProbe":
        """Train for ``epochs`` epochs (from the current weights if fitted).

        Parameters
        ----------
        batches : tuple (features, labels) of arrays, or an iterable of such
            tuples
            features (n, C, h, w); labels (n, H, W) class ids in [0, K) or
            255 at label resolution.
        progress : bool, default False
            Show a tqdm progress bar (``verbose`` is its older name).
        """
        verbose = want_progress(progress, verbose)
        check_not_half_arrays(batches, ("features", "labels"))
        if is_array_tuple(batches):
            if len(batches) != 2:
                raise ValueError("batches must be (features, labels)")
            K = self.n_classes
            src = ArraySource(batches[0], batches[1], maps_name="labels",
                              check_maps=lambda m: _core.as_label_map(m, K), fmt=self._fmt)
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
                     else iterable_epoch(it, True, "batches", fmt=self._fmt))
            with progress_bar(n_batches, f"linear probe {e + 1}/{self.epochs}", verbose) as bar:
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
        self._step({"features": as_features(batch[0], fmt=self._fmt),
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
        y = to_nchw(features, self.layout, self.grid)
        x = as_features(y, fmt=("nchw", None))
        if x.shape[1] != self.weight_.shape[1]:
            raise ValueError(f"features have {x.shape[1]} channels but the probe has "
                             f"{self.weight_.shape[1]}")
        single = np.ndim(y) == 3
        refiner = resolve_crf(crf)
        if refiner is not None:
            out = predict_refined(refiner, x, self.weight_, self.bias_, size, images, single)
        else:
            if images is not None:
                check_images(images, x.shape[0], single)
            out = _core.em_predict(self._ws, x, self.weight_, size, bias=self.bias_)
        return out[0] if single else out

    def fit_predict(self, batches: Any, progress: bool = False) -> np.ndarray:
        """`fit` on in-memory arrays (features, labels), then `predict` the
        features at the labels' size."""
        if not is_array_tuple(batches) or len(batches) != 2:
            raise TypeError("fit_predict takes in-memory arrays (features, labels)")
        self.fit(batches, progress)
        return self.predict(batches[0], np.shape(batches[1])[-2:])

    # -------------------------------------------------------- checkpoints

    def save(self, path: str | os.PathLike) -> None:
        """Write the probe (weights, Adam moments, loss history, random
        state) atomically, checksummed like a PriMaPsEM checkpoint."""
        if self.weight_ is None:
            raise RuntimeError("save needs a fitted probe: call fit first")
        arrays = {"weight": self.weight_, "bias": self.bias_,
                  "loss_history": np.asarray(self.loss_history_, dtype=np.float64)}
        arrays.update(self._adam.state_arrays("adam_"))
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "primaps": __version__,
                "params": self._params(),
                "state": {"adam_step": self._adam.step, "rng": rng_state(self._rng)}}
        write_npz_atomic(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LinearProbe":
        """A probe restored from a file written by `save`."""
        arrays, meta = read_npz(path, FORMAT, FORMAT_VERSION)
        try:
            est = cls(**meta["params"])
            K = est.n_classes
            w = np.array(arrays["weight"], dtype=np.float32)
            b = np.array(arrays["bias"], dtype=np.float32)
            if w.ndim != 2 or w.shape[0] != K or b.shape != (K,):
                raise ValueError(f"{path}: weight {w.shape} / bias {b.shape} do not fit "
                                 f"{K} classes")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ValueError(f"{path}: the weights hold NaN or inf")
            est.weight_, est.bias_ = w, b
            est._adam = Adam({"weight": w, "bias": b}, est.lr)
            step = meta["state"]["adam_step"]
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"{path}: adam_step = {step!r} in its metadata, expected an "
                                 "integer >= 0 (a corrupt file)")
            est._adam.load_arrays("adam_", arrays, step)
            for name, shape in (("weight", w.shape), ("bias", b.shape)):
                if est._adam.m[name].shape != shape or est._adam.s[name].shape != shape:
                    raise ValueError(f"{path}: the Adam moments of {name} do not have its "
                                     f"shape {shape}")
            est.loss_history_ = [float(x) for x in arrays["loss_history"]]
            est._rng = rng_from_state(meta["state"]["rng"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path} is an incomplete {FORMAT} file: missing or malformed "
                             f"{e}") from None
        return est


FORMAT = "primaps.LinearProbe"
FORMAT_VERSION = 1
