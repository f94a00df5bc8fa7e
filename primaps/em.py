"""PriMaPs-EM: class prototypes fitted to PriMaPs pseudo labels by a
stochastic EM with a momentum teacher (Hahn et al., TMLR 2024; docs/method.md
§1.2), on the C kernels of ``csrc/em*.c``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from . import _core
from ._training import (Adam, ArraySource, as_features, check_float, check_int,
                        check_not_half_arrays,
                        check_reiterable, ema_decay, ema_update, is_array, is_array_tuple,
                        iterable_epoch, progress_bar, read_npz, rng_from_state, rng_state,
                        WorkspaceOwner, exclusive, want_progress, write_npz_atomic)
from ._layout import check_grid, check_layout, to_nchw
from ._version import __version__
from .crf import check_images, predict_refined, resolve_crf

FORMAT = "primaps.PriMaPsEM"
FORMAT_VERSION = 2  # 2: the metadata carry their own CRC-32 and the provenance
# init_pca keeps the pixel sample of batches (in their dtype) up to this
# size for the sign pass, instead of reading the batches a second time.
KEEP_SAMPLE_BYTES = 2 << 30

__all__ = ["PriMaPsEM", "Prototypes", "ema_decay"]


@dataclass
class Prototypes:
    """Weight-normalised prototypes: ``theta_k = g_k v_k / ||v_k||``.

    Attributes
    ----------
    v : ndarray of shape (K, C), float32
        Directions (any norm).
    g : ndarray of shape (K,), float32
        Magnitudes.
    """

    v: np.ndarray
    g: np.ndarray

    def theta(self) -> np.ndarray:
        """The effective prototypes ``g v / ||v||``, float32 (K, C)."""
        return _core.weightnorm_fwd(self.v, self.g)

    def copy(self) -> "Prototypes":
        return Prototypes(self.v.copy(), self.g.copy())


class PriMaPsEM(WorkspaceOwner):
    """Prototypes for K classes fitted to PriMaPs pseudo labels by EM.

    Prototypes are a weight-normalised 1x1 convolution without bias,
    ``theta_k = g_k v_k / ||v_k||``; the logits of a pixel are
    ``theta_k . F_p`` on the raw features.  Training (docs/method.md §1.2):

    1. `init_pca`: ``v`` = the top-K principal directions of a sample of the
       features (signs: the pole with the more extreme cosine similarity to
       the sample is positive), ``g = 1``;
    2. `warmup`: ``warmup_epochs`` epochs of the batch cosine K-means loss
       ``-mean_p max_k cos(v_k, F_p)`` (Adam; the K-means baseline);
    3. `fit`: ``epochs`` epochs of EM.  The teacher's label-resolution argmax,
       reduced to its mode over every PriMaPs mask, gives pseudo labels
       (background: ignore); the student takes an Adam step on the focal
       loss (class weights ``(1 - chi_k)^gamma`` from the batch's mean class
       confidences ``chi``, mean over all pixels); after every
       ``ema_every``-th step the teacher moves towards the student
       (``ema_decay`` schedule: two copies, then ``min(beta, 1 - 1/j)``).

    Logits are computed at feature resolution and upsampled (the exact
    "resolution trick"), so label maps of any size cost little.

    Parameters
    ----------
    n_classes : int
        Number of classes K (1 to 255; label 255 means ignore).
    lr : float
        Adam learning rate (warm-up and EM).
    focal_gamma : float
        Exponent gamma of the focal class weights.
    ema_decay : float
        Final decay beta of the teacher.
    ema_every : int
        Steps between teacher updates.
    warmup_epochs : int
        K-means epochs run by `fit` before the EM (0 skips them).
    epochs : int
        EM epochs of `fit`.
    batch_size : int
        Images per step when in-memory arrays are given (iterables come
        batched).
    hflip : bool
        Mirror each image of a batch left-right with probability 1/2,
        features and masks together.  With precomputed features this leaves
        the loss and its gradient unchanged up to rounding (the model is
        per-pixel and the upsampling mirror-symmetric); the original applies
        the flip to the images, before the backbone.
    seed : int
        Seed of the shuffling and flips.
    layout : {None, "nchw", "nhwc", "tokens"}
        How every feature array given to the estimator is laid out (see
        :func:`primaps.masks`): None (default) channels-first maps
        ``(B, C, h, w)``, refusing shapes that fit another layout far
        better; ``"nchw"`` the same without that check; ``"nhwc"``
        channels-last maps; ``"tokens"`` ViT patch tokens ``(B, N, C)``,
        with or without a CLS token.
    grid : int or (h, w), optional
        The patch grid of ``layout="tokens"`` (default: the square one).

    Attributes
    ----------
    student_, teacher_ : Prototypes
        ``v`` (K, C) and ``g`` (K,) of the student and the teacher.
    loss_history_ : list of float
        Focal loss of every EM step.
    warmup_loss_history_ : list of float
        K-means loss of every warm-up step.
    step_ : int
        EM steps taken (the student's Adam steps).
    ema_updates_ : int
        Teacher updates made.
    epoch_, warmup_epoch_ : int
        Completed EM and warm-up epochs: `fit` continues from them.
    provenance : dict or None
        JSON-ready description of the inputs the estimator is trained on
        (the command line records the fingerprints of the feature store,
        the masks and the training config); saved in every checkpoint,
        covered by its checksum, and restored by `load`.
    """

    def __init__(self, n_classes: int, lr: float = 5e-3, focal_gamma: float = 2.0,
                 ema_decay: float = 0.98, ema_every: int = 10, warmup_epochs: int = 2,
                 epochs: int = 50, batch_size: int = 32, hflip: bool = True,
                 seed: int = 0, layout: str | None = None, grid: Any = None):
        self.n_classes = check_int(n_classes, "n_classes", 1, 255)
        self.lr = check_float(lr, "lr", positive=True)
        self.focal_gamma = check_float(focal_gamma, "focal_gamma")
        self.ema_decay = check_float(ema_decay, "ema_decay")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
        self.ema_every = check_int(ema_every, "ema_every", 1)
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", 0)
        self.epochs = check_int(epochs, "epochs", 0)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.hflip = bool(hflip)
        self.seed = check_int(seed, "seed", 0)
        self.layout = check_layout(layout)
        self.grid = check_grid(grid)
        if self.grid is not None and self.layout != "tokens":
            raise ValueError("grid is only for layout='tokens'")
        self._rng = np.random.default_rng(self.seed)
        self._ws = _core.em_workspace()
        self.student_: Prototypes | None = None
        self.teacher_: Prototypes | None = None
        self._adam: Adam | None = None
        self._km_adam: Adam | None = None
        self.loss_history_: list[float] = []
        self.warmup_loss_history_: list[float] = []
        self.step_ = 0
        self.ema_updates_ = 0
        self.epoch_ = 0
        self.warmup_epoch_ = 0
        self.provenance: dict | None = None

    # ------------------------------------------------------------ helpers

    def _params(self) -> dict:
        return {k: getattr(self, k) for k in (
            "n_classes", "lr", "focal_gamma", "ema_decay", "ema_every",
            "warmup_epochs", "epochs", "batch_size", "hflip", "seed", "layout", "grid")}

    @property
    def _fmt(self) -> tuple:
        return (self.layout, self.grid)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"PriMaPsEM({args})"

    def _require_fitted(self, what: str) -> None:
        if self.student_ is None:
            raise RuntimeError(
                f"{what} needs prototypes: call init_pca and warmup, init_from, "
                "fit or load first")

    def _set_start(self, v: np.ndarray) -> None:
        """Student and teacher start from v with g = 1; fresh EM state."""
        K = v.shape[0]
        self.student_ = Prototypes(np.array(v, dtype=np.float32), np.ones(K, np.float32))
        self.teacher_ = self.student_.copy()
        self._reset_em()

    def _reset_em(self) -> None:
        self._adam = Adam({"v": self.student_.v, "g": self.student_.g}, self.lr)
        self.step_ = 0
        self.ema_updates_ = 0
        self.epoch_ = 0
        self.loss_history_ = []

    def _check_protos(self, v: Any, name: str) -> np.ndarray:
        a = None if isinstance(v, (str, bytes)) else np.asarray(v)
        if a is None or a.dtype.kind not in "iuf":
            what = type(v).__name__ if a is None else f"dtype {a.dtype}"
            raise TypeError(f"{name} must be a numeric array of shape ({self.n_classes}, C), "
                            f"got {what}")
        v = np.array(a, dtype=np.float32)
        if v.ndim != 2 or v.shape[0] != self.n_classes:
            raise ValueError(f"{name} must have shape ({self.n_classes}, C), got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN or inf")
        return v

    def _check_channels(self, C: int, name: str = "features") -> None:
        if self.student_ is not None and C != self.student_.v.shape[1]:
            raise ValueError(
                f"{name} have {C} channels but the prototypes have "
                f"{self.student_.v.shape[1]}")

    def _flips(self, B: int) -> np.ndarray | None:
        if not self.hflip:
            return None
        return self._rng.random(B) < 0.5

    def _source(self, batches: Any, what: str, need_maps: bool):
        """(ArraySource or None, the iterable) for `batches`."""
        check_not_half_arrays(batches, ("features", "masks", "student_features"))
        if is_array_tuple(batches):
            if not need_maps:
                return ArraySource(batches[0], fmt=self._fmt), None
            if len(batches) < 2:
                raise ValueError(f"{what} must be (features, masks[, student_features]); "
                                 "masks may be None (pseudo labels: the teacher's argmax)")
            src = ArraySource(batches[0], batches[1], batches[2] if len(batches) > 2 else None,
                              maps_name="masks", check_maps=_core.as_mask_map, fmt=self._fmt)
            return src, None
        if is_array(batches):
            if need_maps:
                raise ValueError(f"{what} must be (features, masks[, student_features]) "
                                 "or an iterable of such tuples, got one array")
            return ArraySource(batches, fmt=self._fmt), None
        if not isinstance(batches, Iterable):
            raise TypeError(f"{what} must be a tuple of arrays or an iterable of batches, "
                            f"got {type(batches).__name__}")
        return None, batches

    def _epoch(self, src, it, what: str, need_maps: bool) -> Iterator[dict]:
        if src is not None:
            return src.epoch(self._rng, self.batch_size)
        return iterable_epoch(it, need_maps, what, maps_optional=need_maps, fmt=self._fmt)

    @staticmethod
    def _n_batches(src, it, batch_size: int) -> int | None:
        if src is not None:
            return src.n_batches(batch_size)
        try:
            return len(it)
        except TypeError:
            return None

    # --------------------------------------------------------- initialise

    @exclusive
    def init_pca(self, features: Any, max_pixels: int = 2_000_000,
                 progress: bool = False, _fmt: tuple | None = None, *,
                 verbose: bool | None = None, n_pixels: int | None = None) -> "PriMaPsEM":
        """Set ``v`` to the top-K principal directions of the features.

        The covariance of (a sample of at most `max_pixels`) pixels is
        accumulated image by image (float32 products of pixels centred on the
        first image's mean, summed in float64), then decomposed; each
        direction's sign is chosen so that the pole with the more extreme
        cosine similarity to the sample's features is positive.  ``g = 1``;
        student and teacher both start there.

        Parameters
        ----------
        features : array (n, C, h, w), or an iterable of batches
            In-memory features, or re-iterable batches (arrays or tuples
            whose first entry is the features).  Batches are read once when
            `n_pixels` is given (the sample is kept, in the batches' dtype,
            for the signs), else twice (the first pass counts the pixels).
        max_pixels : int
            Pixels sampled at most (a fixed stride per image).
        n_pixels : int, optional
            The number of pixels (n h w) the batches hold, when known (a
            feature store knows it); a wrong count is a ValueError.
        """
        max_pixels = check_int(max_pixels, "max_pixels", 1)
        images = _ImageStream(features, self._fmt if _fmt is None else _fmt)
        if images.array is not None or n_pixels is None:
            total = images.count_pixels()
        else:
            total = check_int(n_pixels, "n_pixels", 1)
        if total == 0:
            raise ValueError("features hold no images" if images.channels is None
                             else "features hold no pixels")
        stride = max(1, -(-total // max_pixels))
        K = self.n_classes
        C = None
        shift = None
        S = s1 = None
        count = seen = 0
        # the sample of an iterable, for the sign pass without a second read
        kept: list | None = [] if images.array is None else None
        kept_bytes = 0
        n_images = None if images.array is None else int(images.array.shape[0])
        with progress_bar(n_images, "PCA init", want_progress(progress, verbose), "img") as bar:
            for k, x in enumerate(images):
                if C is None:
                    C = x.shape[0]
                    if K > C:
                        raise ValueError(f"n_classes = {K} principal directions need at "
                                         f"least {K} feature channels, got {C}")
                    S, s1 = np.zeros((C, C)), np.zeros(C)
                seen += x.shape[1] * x.shape[2]
                raw = x.reshape(C, -1)[:, k % stride::stride]
                xs = np.ascontiguousarray(raw, dtype=np.float32)
                if xs.shape[1] == 0:
                    continue
                if not np.all(np.isfinite(xs)):
                    raise ValueError("features contains NaN or inf")
                if shift is None:
                    shift = xs.mean(axis=1, dtype=np.float64).astype(np.float32)
                xc = xs - shift[:, None]
                S += xc @ xc.T  # float32 products, summed in float64
                s1 += xc.sum(axis=1, dtype=np.float64)
                count += xc.shape[1]
                if kept is not None:
                    kept_bytes += raw.nbytes
                    if kept_bytes <= KEEP_SAMPLE_BYTES:
                        kept.append(np.ascontiguousarray(raw))
                    else:
                        kept = None  # too large: the signs read the batches again
                bar.update(1)
        if C is None:
            raise ValueError("features hold no images")
        if images.array is None and n_pixels is not None and seen != total:
            raise ValueError(f"n_pixels = {total}, but the features hold {seen} pixels")
        d = s1 / count
        cov = S / count - np.outer(d, d)
        evals, evecs = np.linalg.eigh(cov)
        V = evecs[:, ::-1][:, :K].T.copy()  # (K, C), descending eigenvalues
        # signs: the pole with the more extreme cosine similarity wins
        hi = np.full(K, -np.inf)
        lo = np.full(K, np.inf)
        Vf = V.astype(np.float32)
        if kept is None:
            kept = (x.reshape(C, -1)[:, k % stride::stride] for k, x in enumerate(images))
        for raw in kept:
            xs = np.ascontiguousarray(raw, dtype=np.float32)
            if xs.shape[1] == 0:
                continue
            n = np.linalg.norm(xs.astype(np.float64), axis=0)
            proj = (Vf @ xs).astype(np.float64)
            s = np.divide(proj, n, out=np.zeros_like(proj), where=n > 0)
            hi = np.maximum(hi, s.max(axis=1))
            lo = np.minimum(lo, s.min(axis=1))
        V[hi < -lo] *= -1.0
        self._set_start(V.astype(np.float32))
        self.warmup_epoch_ = 0
        self.warmup_loss_history_ = []
        self._km_adam = None
        return self

    @exclusive
    def init_from(self, prototypes: Any) -> "PriMaPsEM":
        """Start student and teacher from external cluster centres.

        ``v`` = `prototypes` (K, C), ``g`` = 1 (as the original does for
        STEGO or HP cluster heads); the warm-up counts as done, so `fit` goes
        straight to the EM.
        """
        v = self._check_protos(prototypes, "prototypes")
        self._set_start(v)
        self.warmup_epoch_ = self.warmup_epochs
        self.warmup_loss_history_ = []
        self._km_adam = None
        return self

    # ------------------------------------------------------------ warm-up

    @exclusive
    def warmup(self, batches: Any, epochs: int | None = None,
               progress: bool = False, *, verbose: bool | None = None) -> "PriMaPsEM":
        """Run the cosine K-means warm-up (the K-means baseline).

        ``epochs`` (default ``warmup_epochs``) epochs of Adam steps on the
        loss ``-mean_p max_k cos(v_k, F_p)`` at feature resolution, from the
        current student ``v`` (`init_pca` first if there is none); ``g`` is
        reset to 1.  Afterwards the teacher equals the student and the EM
        state is fresh.

        Parameters
        ----------
        batches : array (n, C, h, w), tuple of arrays, or iterable of batches
            Features (a tuple's or batch's first entry); masks are ignored.
        """
        epochs = self.warmup_epochs if epochs is None else check_int(epochs, "epochs", 0)
        verbose = want_progress(progress, verbose)
        if self.student_ is None:
            self.init_pca(batches, progress=verbose)
        src, it = self._source(batches, "batches", need_maps=False)
        if it is not None:
            check_reiterable(it, epochs, "batches")
        for e in range(epochs):
            self._warmup_epoch(src, it, verbose, f"K-means {e + 1}/{epochs}")
        self._finish_warmup()
        return self

    def _finish_warmup(self) -> None:
        self.student_.g[:] = 1.0
        self.teacher_ = self.student_.copy()
        self._reset_em()

    def _warmup_epoch(self, src, it, verbose: bool | str, desc: str) -> None:
        if self._km_adam is None:
            self._km_adam = Adam({"v": self.student_.v}, self.lr)
        with progress_bar(self._n_batches(src, it, self.batch_size),
                          desc, verbose) as bar:
            for b in self._epoch(src, it, "batches", need_maps=False):
                self._check_channels(b["features"].shape[1])
                loss, dv = _core.kmeans_bwd(self._ws, b["features"], self.student_.v,
                                            index=b["index"])
                self._km_adam.update({"v": self.student_.v}, {"v": dv})
                self.warmup_loss_history_.append(float(loss))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
        self.warmup_epoch_ += 1

    # ----------------------------------------------------------------- EM

    @exclusive
    def partial_fit(self, batch: Any, label_size: Any = None) -> "PriMaPsEM":
        """Exactly one EM step on one batch.

        E-step (teacher pseudo labels), M-step (focal loss of the student),
        one Adam update, then the teacher update if this is an
        ``ema_every``-th step.

        Parameters
        ----------
        batch : tuple (features, masks[, student_features])
            features (B, C, h, w); masks (B, H, W) int mask maps (0 =
            background, 1..n = masks) at label resolution, or None: then the
            pseudo label of every pixel is the teacher's own argmax (the
            ablation "EM without masks"); student_features (B, C, h, w), the
            student's view (default: features).
        label_size : int or (H, W), optional
            Size of the pseudo labels of a batch without masks (default: the
            features' size).
        """
        self._require_fitted("partial_fit")
        if not isinstance(batch, (tuple, list)) or not 2 <= len(batch) <= 3:
            raise TypeError("batch must be a tuple (features, masks[, student_features])")
        feats = as_features(batch[0], fmt=self._fmt)
        masks = None
        if batch[1] is not None:
            masks = np.asarray(batch[1])
            if masks.ndim == 2:
                masks = masks[None]
        student = as_features(batch[2], "student_features", self._fmt) if len(batch) > 2 \
            else None
        self._em_step({"features": feats, "maps": masks, "student": student, "index": None},
                      label_size)
        return self

    @staticmethod
    def _label_size(label_size: Any, features: np.ndarray) -> tuple:
        if label_size is None:
            return int(features.shape[2]), int(features.shape[3])
        if isinstance(label_size, (int, np.integer)) and not isinstance(label_size, bool):
            label_size = (label_size, label_size)
        try:
            H, W = (check_int(x, "label_size", 1) for x in label_size)
        except TypeError:
            raise TypeError(f"label_size must be an int or (H, W), got {label_size!r}") from None
        return H, W

    def _argmax_step(self, b: dict, B: int, label_size: Any) -> tuple:
        """The M-step on the teacher's own label-resolution argmax (no masks).

        The argmax is taken in the image's own frame and mirrored together
        with the features, as the masks would be."""
        idx = b["index"]
        feats = b["features"] if idx is None else np.ascontiguousarray(b["features"][idx])
        student = b["student"]
        if student is not None and idx is not None:
            student = np.ascontiguousarray(student[idx])
        s, t = self.student_, self.teacher_
        size = self._label_size(label_size, feats)
        labels = _core.em_predict(self._ws, feats, t.theta(), size).astype(np.uint8)
        return _core.focal_bwd(self._ws, feats, labels, s.v, s.g, self.focal_gamma,
                               student_features=student, flip=self._flips(B))

    def _em_step(self, b: dict, label_size: Any = None) -> float:
        self._check_channels(b["features"].shape[1])
        B = b["features"].shape[0] if b["index"] is None else len(b["index"])
        s, t = self.student_, self.teacher_
        if b["maps"] is None:
            loss, chi, dv, dg = self._argmax_step(b, B, label_size)
        else:
            loss, chi, dv, dg = _core.em_step(
                self._ws, b["features"], b["maps"], t.v, t.g, s.v, s.g, self.focal_gamma,
                student_features=b["student"], index=b["index"], flip=self._flips(B))
        self._adam.update({"v": s.v, "g": s.g}, {"v": dv, "g": dg})
        self.step_ += 1
        if self.step_ % self.ema_every == 0:
            self.ema_updates_ += 1
            d = ema_decay(self.ema_updates_, self.ema_decay)
            ema_update(t.v, s.v, d)
            ema_update(t.g, s.g, d)
        self.loss_history_.append(float(loss))
        return float(loss)

    @exclusive
    def fit(self, batches: Any, progress: bool = False,
            checkpoint: str | os.PathLike | None = None,
            label_size: Any = None, *, verbose: bool | None = None) -> "PriMaPsEM":
        """Train: PCA init and K-means warm-up if needed, then the EM.

        `fit` continues where the estimator stands: without prototypes it
        runs `init_pca`; it completes the ``warmup_epochs`` warm-up epochs
        and then the ``epochs`` EM epochs not yet done (so a loaded
        checkpoint resumes exactly where it was saved).  Create a new
        estimator to train again from scratch.

        Parameters
        ----------
        batches : tuple (features, masks[, student_features]) of arrays, or
            an iterable of such tuples
            Arrays: features (n, C, h, w) (float32 C-contiguous arrays and
            memmaps are read in place), masks (n, H, W) int mask maps at
            label resolution; shuffled into batches of ``batch_size`` every
            epoch.  Masks of None make the pseudo labels the teacher's own
            argmax (the ablation "EM without masks").  An iterable (a list, a PyTorch DataLoader, a feature
            store) yields batches as they are, once per epoch.
        progress : bool or str, default False
            Show tqdm progress bars (widgets in a notebook with ipywidgets);
            a string names them (``"run 3"`` gives ``"run 3: EM 1/50"``).
            ``verbose`` is the older name of this argument.
        checkpoint : path, optional
            `save` to this file after every epoch.
        label_size : int or (H, W), optional
            Size of the pseudo labels where masks are None (default: the
            features' size).
        """
        verbose = want_progress(progress, verbose)
        src, it = self._source(batches, "batches", need_maps=True)
        if it is not None:
            passes = (self.warmup_epochs - self.warmup_epoch_) + (self.epochs - self.epoch_)
            passes += 3 if self.student_ is None else 0
            check_reiterable(it, passes, "batches")
        if self.student_ is None:
            if src is not None:  # already channels-first
                self.init_pca(src.features, progress=verbose, _fmt=("nchw", None))
            else:
                self.init_pca(it, progress=verbose)
        if self.warmup_epoch_ < self.warmup_epochs:
            while self.warmup_epoch_ < self.warmup_epochs:
                self._warmup_epoch(src, it, verbose,
                                   f"K-means {self.warmup_epoch_ + 1}/{self.warmup_epochs}")
                if self.warmup_epoch_ == self.warmup_epochs:
                    self._finish_warmup()
                if checkpoint is not None:
                    self.save(checkpoint)
        n_batches = self._n_batches(src, it, self.batch_size)
        while self.epoch_ < self.epochs:
            with progress_bar(n_batches, f"EM {self.epoch_ + 1}/{self.epochs}", verbose) as bar:
                for b in self._epoch(src, it, "batches", need_maps=True):
                    loss = self._em_step(b, label_size)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
            self.epoch_ += 1
            if checkpoint is not None:
                self.save(checkpoint)
        return self

    def fit_predict(self, batches: Any, progress: bool = False, which: str = "teacher",
                    **fit_kwargs: Any) -> np.ndarray:
        """`fit` on in-memory arrays (features, masks[, student_features]),
        then `predict` the features at the masks' size (scikit-learn's
        fit_predict)."""
        if not is_array_tuple(batches) or len(batches) < 2:
            raise TypeError("fit_predict takes in-memory arrays (features, masks[, "
                            "student_features])")
        self.fit(batches, progress, **fit_kwargs)
        size = np.shape(batches[1])[-2:] if batches[1] is not None else None
        if size is None:
            size = fit_kwargs.get("label_size") or self._label_size(
                None, as_features(batches[0], fmt=self._fmt))
        return self.predict(batches[0], size, which=which)

    # ---------------------------------------------------------- inference

    def _which(self, which: str) -> Prototypes:
        self._require_fitted("prediction")
        if which == "teacher":
            return self.teacher_
        if which == "student":
            return self.student_
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")

    def _theta_and_features(self, features: Any, which: str) -> tuple:
        """theta, the features as (B, C, h, w), and whether one image came."""
        theta = self._which(which).theta()
        y = to_nchw(features, self.layout, self.grid)
        x = as_features(y, fmt=("nchw", None))
        self._check_channels(x.shape[1])
        return theta, x, np.ndim(y) == 3

    def prototypes(self, which: str = "teacher") -> np.ndarray:
        """The effective prototypes ``theta = g v / ||v||``, float32 (K, C)."""
        return self._which(which).theta()

    def predict(self, features: Any, size: Any, which: str = "teacher",
                images: Any = None, crf: Any = False) -> np.ndarray:
        """Class of every pixel: ``argmax_k theta_k . F`` with the logits
        upsampled bilinearly to `size` (an int or (H, W)), or refined by the
        dense CRF over the images first (the original's "with CRF" rows).

        Parameters
        ----------
        features : array (B, C, h, w) or (C, h, w)
        size : int or (H, W)
        which : "teacher" or "student"
        images : uint8 array (B, H, W, 3) or (H, W, 3), optional
            The RGB images of the features, for ``crf``.
        crf : bool or DenseCRF, default False
            Refine with the dense CRF as the original's test does: the
            logits upsampled to the images' size, unary ``-log max(softmax,
            1e-5)``, the image in BGR order, argmax of the marginals
            (``True``: that CRF; a :class:`DenseCRF`: other parameters).
            Needs `images`, and `size` equal to their size.

        Returns
        -------
        ndarray of int32, (B, H, W) or (H, W)
        """
        theta, x, single = self._theta_and_features(features, which)
        refiner = resolve_crf(crf)
        if refiner is not None:
            out = predict_refined(refiner, x, theta, None, size, images, single)
        else:
            if images is not None:
                check_images(images, x.shape[0], single)
            out = _core.em_predict(self._ws, x, theta, size)
        return out[0] if single else out

    def pseudo_labels(self, features: Any, masks: Any, which: str = "teacher") -> np.ndarray:
        """The E-step's pseudo labels: the mode of the label-resolution
        argmax over every mask of `masks` (B, H, W) (0 = background -> 255).

        Returns
        -------
        ndarray of uint8, (B, H, W) or (H, W)
        """
        theta, x, _ = self._theta_and_features(features, which)
        m = np.asarray(masks)
        single = m.ndim == 2
        out = _core.teacher_pseudo(self._ws, x, m[None] if single else m, theta)
        return out[0] if single else out

    # -------------------------------------------------------- checkpoints

    def save(self, path: str | os.PathLike) -> None:
        """Write a full checkpoint (npz + JSON metadata) atomically: the
        prototypes of student and teacher, the Adam moments, the counters,
        the loss histories and the random generator's state."""
        self._require_fitted("save")
        arrays = {"student_v": self.student_.v, "student_g": self.student_.g,
                  "teacher_v": self.teacher_.v, "teacher_g": self.teacher_.g,
                  "loss_history": np.asarray(self.loss_history_, dtype=np.float64),
                  "warmup_loss_history": np.asarray(self.warmup_loss_history_,
                                                    dtype=np.float64)}
        arrays.update(self._adam.state_arrays("adam_"))
        if self._km_adam is not None:
            arrays.update(self._km_adam.state_arrays("km_adam_"))
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "primaps": __version__,
                "params": self._params(),
                "state": {"step": self.step_, "ema_updates": self.ema_updates_,
                          "epoch": self.epoch_, "warmup_epoch": self.warmup_epoch_,
                          "adam_step": self._adam.step,
                          "km_adam_step": None if self._km_adam is None else self._km_adam.step,
                          "rng": rng_state(self._rng)},
                "provenance": self.provenance}
        write_npz_atomic(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PriMaPsEM":
        """An estimator restored from a checkpoint written by `save`."""
        arrays, meta = read_npz(path, FORMAT, FORMAT_VERSION)
        try:
            params, state = meta["params"], meta["state"]
            est = cls(**params)
            K = est.n_classes
            sv = est._check_protos(arrays["student_v"], "student_v")
            tv = est._check_protos(arrays["teacher_v"], "teacher_v")
            C = sv.shape[1]
            if tv.shape != (K, C):
                raise ValueError(f"teacher_v has shape {tv.shape}, expected {(K, C)}")
            sg = np.array(arrays["student_g"], dtype=np.float32)
            tg = np.array(arrays["teacher_g"], dtype=np.float32)
            if sg.shape != (K,) or tg.shape != (K,):
                raise ValueError("g arrays must have shape (n_classes,)")
            est.student_ = Prototypes(sv, sg)
            est.teacher_ = Prototypes(tv, tg)
            est._adam = Adam({"v": sv, "g": sg}, est.lr)
            est._adam.load_arrays("adam_", arrays, _count(state, "adam_step", path))
            if state["km_adam_step"] is not None:
                est._km_adam = Adam({"v": sv}, est.lr)
                est._km_adam.load_arrays("km_adam_", arrays, _count(state, "km_adam_step", path))
            for k, shape in (("adam_m_v", (K, C)), ("adam_s_v", (K, C)),
                             ("adam_m_g", (K,)), ("adam_s_g", (K,))):
                if arrays[k].shape != shape:
                    raise ValueError(f"{k} has shape {arrays[k].shape}, expected {shape}")
            est.step_ = _count(state, "step", path)
            est.ema_updates_ = _count(state, "ema_updates", path, est.step_)
            est.epoch_ = _count(state, "epoch", path, est.epochs)
            est.warmup_epoch_ = _count(state, "warmup_epoch", path, est.warmup_epochs)
            if est._adam.step != est.step_:
                raise ValueError(f"{path}: adam_step {est._adam.step} differs from step "
                                 f"{est.step_} (a corrupt checkpoint)")
            prov = meta.get("provenance")
            if prov is not None and not isinstance(prov, dict):
                raise TypeError("provenance")
            est.provenance = prov
            est.loss_history_ = [float(x) for x in arrays["loss_history"]]
            est.warmup_loss_history_ = [float(x) for x in arrays["warmup_loss_history"]]
            est._rng = rng_from_state(state["rng"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path} is an incomplete {FORMAT} checkpoint: missing or "
                             f"malformed {e}") from None
        return est


def _count(state: dict, key: str, path: Any, hi: int | None = None) -> int:
    """state[key], an integer in [0, hi], or a ValueError naming the file."""
    x = state[key]
    if isinstance(x, bool) or not isinstance(x, int) or x < 0 or (hi is not None and x > hi):
        rng = ">= 0" if hi is None else f"in [0, {hi}]"
        raise ValueError(f"{path}: {key} = {x!r} in its metadata, expected an integer {rng} "
                         "(a corrupt checkpoint)")
    return x


class _ImageStream:
    """Images (C, h, w) of an array or of a re-iterable of batches."""

    def __init__(self, features: Any, fmt: tuple = (None, None)):
        self.fmt = fmt
        if is_array_tuple(features):
            features = features[0]
        if is_array(features):
            self.array = as_features(features, fmt=fmt)
            self.batches = None
            self.channels = self.array.shape[1]
        else:
            if not isinstance(features, Iterable):
                raise TypeError("features must be an array (n, C, h, w) or an iterable of "
                                f"batches, got {type(features).__name__}")
            check_reiterable(features, 2, "features")
            self.array = None
            self.batches = features
            self.channels = None  # of the first batch read

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.array is not None:
            yield from self.array
            return
        for item in self.batches:
            x = item[0] if isinstance(item, (tuple, list)) else item
            x = as_features(x, fmt=self.fmt)
            if self.channels is None:
                self.channels = x.shape[1]
            elif x.shape[1] != self.channels:
                raise ValueError(f"features have {x.shape[1]} channels, expected "
                                 f"{self.channels}")
            yield from x

    def count_pixels(self) -> int:
        if self.array is not None:
            return int(self.array.shape[0] * self.array.shape[2] * self.array.shape[3])
        return sum(int(x.shape[1] * x.shape[2]) for x in self)
