"""Hungarian-matched evaluation of unsupervised segmentations.

The protocol of PriMaPs, STEGO and their predecessors (docs/method.md §1.3):
accumulate one confusion matrix ``S[cluster, class]`` over the whole
evaluation set (ground-truth labels outside ``[0, n_classes)`` are skipped),
match clusters to classes with ONE global Hungarian assignment that
maximises the matched pixels, then report, in percent,

- pixel accuracy ``Acc = sum(tp) / sum(S)``,
- per-class ``IoU = tp / (tp + fp + fn)`` and their mean ``mIoU`` over the
  classes whose IoU is defined (a class absent from the ground truth and
  never predicted has none; the report names those classes).

With ``extra_clusters > 0`` (over-clustering) the Hungarian assignment
matches one cluster to each class and every leftover cluster is merged into
the class it overlaps most.

The counting runs in C (``primaps._core.confusion_matrix``: int64 counts,
exact for any thread count, with the GIL released); the assignment is
``scipy.optimize.linear_sum_assignment(maximize=True)``.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _core
from ._io import atomic_write

__all__ = ["EvaluationReport", "Evaluator", "evaluate", "match_clusters"]


# ------------------------------------------------------------------ checks


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _check_class_names(class_names: Optional[Sequence[str]], n_classes: int) -> Tuple[str, ...]:
    if class_names is None:
        return tuple(f"class {i}" for i in range(n_classes))
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise TypeError(
            f"class_names must be a sequence of {n_classes} strings, got {type(class_names).__name__}"
        )
    names = tuple(class_names)
    if len(names) != n_classes:
        raise ValueError(f"class_names must hold n_classes = {n_classes} names, got {len(names)}")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"class_names[{i}] must be a string, got {type(name).__name__}")
    return names


# ---------------------------------------------------------------- matching


def match_clusters(confusion: npt.ArrayLike, n_classes: Optional[int] = None) -> np.ndarray:
    """Map clusters to classes: one Hungarian assignment, leftovers merged.

    Parameters
    ----------
    confusion : array_like of shape (n_clusters, n_classes)
        Counts ``S[cluster, class]`` with ``n_clusters >= n_classes``.
    n_classes : int, optional
        Checked against ``confusion.shape[1]`` when given.

    Returns
    -------
    ndarray of shape (n_clusters,), int64
        ``assignment[c]`` is the class of cluster ``c``.  The Hungarian step
        (``scipy.optimize.linear_sum_assignment(maximize=True)``) gives every
        class one cluster so that the matched pixels are maximal; each
        remaining cluster goes to the class it overlaps most (the smallest
        class id on ties, class 0 for a cluster that overlaps nothing).
    """
    S = np.asarray(confusion)
    if S.ndim != 2 or S.shape[0] < S.shape[1] or S.shape[1] < 1:
        raise ValueError(
            "confusion must have shape (n_clusters, n_classes) with n_clusters >= n_classes >= 1, "
            f"got {S.shape}"
        )
    if n_classes is not None and S.shape[1] != n_classes:
        raise ValueError(f"confusion must have n_classes = {n_classes} columns, got {S.shape[1]}")
    # Imported here: scipy.optimize takes about a second to import.
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(S, maximize=True)
    assignment = np.argmax(S, axis=1).astype(np.int64)
    assignment[rows] = cols
    return assignment


def _matched(confusion: np.ndarray, assignment: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts [predicted class, true class]."""
    M = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(M, assignment, confusion)
    return M


def _percent(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """100 * num / den, NaN where den == 0."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(100.0 * num, den, out=out, where=den > 0)
    return out


# ------------------------------------------------------------------ report


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f}"


def _json_float(x: float) -> Optional[float]:
    return None if math.isnan(x) else float(x)


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """The result of a Hungarian-matched evaluation (all scores in percent).

    Attributes
    ----------
    accuracy : float
        Pixel accuracy after matching.
    miou : float
        Mean IoU over the classes whose IoU is defined.
    iou : ndarray of shape (n_classes,)
        Per-class IoU, NaN where undefined (the class is absent from the
        ground truth and no cluster predicted it).
    class_names : tuple of str
    assignment : ndarray of shape (n_classes + extra_clusters,)
        Class of every cluster.
    confusion : ndarray of shape (n_classes + extra_clusters, n_classes)
        Raw counts ``[cluster, true class]``.
    matched_confusion : ndarray of shape (n_classes, n_classes)
        Counts ``[predicted class, true class]`` after matching.
    n_classes, extra_clusters, ignore_index : int
    n_pixels : int
        Pixels counted.
    n_skipped : int
        Pixels skipped because their ground truth lies outside
        ``[0, n_classes)`` (``ignore_index`` and any other such label).
    """

    accuracy: float
    miou: float
    iou: np.ndarray
    class_names: Tuple[str, ...]
    assignment: np.ndarray
    confusion: np.ndarray
    matched_confusion: np.ndarray
    n_classes: int
    extra_clusters: int
    ignore_index: int
    n_pixels: int
    n_skipped: int

    @classmethod
    def from_confusion(
        cls,
        confusion: npt.ArrayLike,
        n_classes: int,
        *,
        assignment: Optional[npt.ArrayLike] = None,
        ignore_index: int = 255,
        class_names: Optional[Sequence[str]] = None,
        n_skipped: int = 0,
    ) -> "EvaluationReport":
        """Build a report from counts ``S[cluster, class]`` (and an
        assignment; by default the Hungarian one of `match_clusters`)."""
        n_classes = _check_int(n_classes, "n_classes", 1)
        S = np.array(confusion, dtype=np.int64)
        if S.ndim != 2 or S.shape[1] != n_classes or S.shape[0] < n_classes:
            raise ValueError(
                f"confusion must have shape (n_classes + extra_clusters, n_classes) with "
                f"n_classes = {n_classes}, got {S.shape}"
            )
        if (S < 0).any():
            raise ValueError("confusion must hold counts >= 0")
        total = int(S.sum())
        if total == 0:
            raise ValueError("confusion holds no counted pixel: nothing to evaluate")
        if assignment is None:
            a = match_clusters(S)
        else:
            a = np.array(assignment, dtype=np.int64)
            if a.shape != (S.shape[0],) or (a < 0).any() or (a >= n_classes).any():
                raise ValueError(
                    f"assignment must map each of the {S.shape[0]} clusters to a class in "
                    f"[0, {n_classes}), got {a.tolist()}"
                )
        M = _matched(S, a, n_classes)
        tp = np.diag(M)
        iou = _percent(tp, M.sum(axis=0) + M.sum(axis=1) - tp)
        defined = ~np.isnan(iou)
        for arr in (iou, a, S, M):
            arr.setflags(write=False)
        return cls(
            accuracy=100.0 * float(tp.sum()) / total,
            miou=float(iou[defined].mean()),
            iou=iou,
            class_names=_check_class_names(class_names, n_classes),
            assignment=a,
            confusion=S,
            matched_confusion=M,
            n_classes=n_classes,
            extra_clusters=S.shape[0] - n_classes,
            ignore_index=int(ignore_index),
            n_pixels=total,
            n_skipped=int(n_skipped),
        )

    # ---------------------------------------------------------- derived

    @property
    def undefined(self) -> Tuple[int, ...]:
        """Ids of the classes left out of mIoU (IoU undefined)."""
        return tuple(int(i) for i in np.flatnonzero(np.isnan(self.iou)))

    @property
    def support(self) -> np.ndarray:
        """Ground-truth pixels of each class, shape (n_classes,)."""
        return self.confusion.sum(axis=0)

    @property
    def class_accuracy(self) -> np.ndarray:
        """Per-class accuracy (recall) in percent, NaN for absent classes."""
        return _percent(np.diag(self.matched_confusion), self.support)

    def clusters_of(self, class_id: int) -> Tuple[int, ...]:
        """The clusters mapped to class `class_id`, in increasing order."""
        return tuple(int(c) for c in np.flatnonzero(self.assignment == class_id))

    # ------------------------------------------------------------ use

    def map_clusters(self, pred: npt.ArrayLike) -> np.ndarray:
        """Recolour cluster ids into matched class ids.

        Parameters
        ----------
        pred : array_like of integers
            Cluster ids in ``[0, n_classes + extra_clusters)``; pixels equal
            to ``ignore_index`` are kept as they are.

        Returns
        -------
        ndarray
            Class ids, same shape and dtype as `pred`.
        """
        a = np.asarray(pred)
        if a.dtype.kind not in "iu":
            raise TypeError(f"pred must be an integer array of cluster ids, got dtype {a.dtype}")
        n_clusters = self.assignment.shape[0]
        valid = (a >= 0) & (a < n_clusters)
        bad = ~valid & (a != self.ignore_index)
        if bad.any():
            idx = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), a.shape)
            raise ValueError(
                f"pred must hold cluster ids in [0, {n_clusters}) or ignore_index = "
                f"{self.ignore_index}, got {a[idx]} at index {tuple(int(i) for i in idx)}"
            )
        out = a.copy()
        out[valid] = self.assignment[a[valid]]
        return out

    def to_dict(self) -> dict:
        """A JSON-ready dict (undefined IoUs as None)."""
        return {
            "accuracy": self.accuracy,
            "miou": self.miou,
            "n_classes": self.n_classes,
            "extra_clusters": self.extra_clusters,
            "ignore_index": self.ignore_index,
            "n_pixels": self.n_pixels,
            "n_skipped": self.n_skipped,
            "class_names": list(self.class_names),
            "iou": [_json_float(x) for x in self.iou],
            "undefined": [self.class_names[i] for i in self.undefined],
            "assignment": self.assignment.tolist(),
            "confusion": self.confusion.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluationReport":
        """The inverse of `to_dict` (scores are recomputed from the counts)."""
        return cls.from_confusion(
            d["confusion"],
            d["n_classes"],
            assignment=d["assignment"],
            ignore_index=d.get("ignore_index", 255),
            class_names=d.get("class_names"),
            n_skipped=d.get("n_skipped", 0),
        )

    def to_json(self, path: Union[str, os.PathLike, None] = None, indent: int = 2) -> str:
        """The report as JSON text; with `path`, also written there
        atomically (temp file in the same folder, fsync, rename)."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with atomic_write(path, suffix=".json") as f:
                f.write(text.encode() + b"\n")
        return text

    # --------------------------------------------------------- display

    def __repr__(self) -> str:
        return (
            f"EvaluationReport(accuracy={self.accuracy:.1f}, miou={self.miou:.1f}, "
            f"n_classes={self.n_classes}, extra_clusters={self.extra_clusters}, "
            f"n_pixels={self.n_pixels})"
        )

    def __str__(self) -> str:
        K = self.n_classes
        und = self.undefined
        head = f"Hungarian-matched evaluation: {K} classes"
        if self.extra_clusters:
            head += f", {K + self.extra_clusters} clusters"
        lines = [
            head + f", {self.n_pixels:,} pixels counted ({self.n_skipped:,} skipped)",
            f"  Acc   {_fmt(self.accuracy):>5} %",
            f"  mIoU  {_fmt(self.miou):>5} %  (mean over {K - len(und)} of {K} classes)",
        ]
        if und:
            lines.append("  IoU undefined (left out of mIoU): " + ", ".join(self.class_names[i] for i in und))
        width = max(5, max(len(n) for n in self.class_names))
        lines += ["", f"  {'id':>3}  {'class':<{width}}  {'IoU %':>6}  {'Acc %':>6}  {'gt %':>6}  clusters"]
        share = _percent(self.support, np.full(K, self.n_pixels))
        acc = self.class_accuracy
        for k in range(K):
            cl = self.clusters_of(k)
            cl_txt = ", ".join(str(c) for c in cl) if cl else "-"
            lines.append(
                f"  {k:>3}  {self.class_names[k]:<{width}}  {_fmt(self.iou[k]):>6}  "
                f"{_fmt(acc[k]):>6}  {_fmt(share[k]):>6}  {cl_txt}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------- evaluator


class Evaluator:
    """Accumulates a confusion matrix over a whole evaluation set.

    Parameters
    ----------
    n_classes : int
        Number of ground-truth classes K; labels are ``0..K-1``.
    extra_clusters : int, default 0
        Predictions may use ``K + extra_clusters`` cluster ids; the leftover
        clusters are merged into the class they overlap most.
    ignore_index : int, default 255
        The "no label" value of the ground truth (must lie outside
        ``[0, K)``).  Every ground-truth label outside ``[0, K)`` is
        skipped, as the protocol says; `EvaluationReport.map_clusters` and
        the pictures keep pixels of this value.
    class_names : sequence of str, optional
        Names for the report (default ``"class 0"``, ...).

    Examples
    --------
    >>> ev = primaps.Evaluator(27, class_names=names)  # 27 strings
    >>> for pred, gt in batches:          # (B, H, W) or (H, W) integer arrays
    ...     ev.update(pred, gt)
    >>> report = ev.compute()
    >>> print(report)                      # Acc, mIoU, per-class IoU table
    """

    def __init__(
        self,
        n_classes: int,
        extra_clusters: int = 0,
        ignore_index: int = 255,
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        self.n_classes = _check_int(n_classes, "n_classes", 1)
        self.extra_clusters = _check_int(extra_clusters, "extra_clusters", 0)
        ii = ignore_index
        if isinstance(ii, (bool, np.bool_)) or not isinstance(ii, (int, np.integer)):
            raise TypeError(f"ignore_index must be an integer, got {type(ii).__name__}")
        if 0 <= ii < self.n_classes:
            raise ValueError(
                f"ignore_index must lie outside the class ids [0, {self.n_classes}), got {ii}"
            )
        self.ignore_index = int(ii)
        self.class_names = _check_class_names(class_names, self.n_classes)
        if (self.n_classes + self.extra_clusters) * self.n_classes >= 2**31:
            raise ValueError(
                "n_classes * (n_classes + extra_clusters) must be below 2^31, got "
                f"n_classes={self.n_classes} and extra_clusters={self.extra_clusters}"
            )
        self._lock = threading.Lock()
        self.reset()

    @property
    def n_clusters(self) -> int:
        """Number of cluster ids a prediction may use."""
        return self.n_classes + self.extra_clusters

    @property
    def confusion(self) -> np.ndarray:
        """A copy of the counts ``S[cluster, class]``, int64."""
        with self._lock:
            return self._conf.copy()

    @property
    def n_pixels(self) -> int:
        """Pixels counted so far."""
        with self._lock:
            return int(self._conf.sum())

    @property
    def n_skipped(self) -> int:
        """Pixels skipped so far (ground truth outside ``[0, n_classes)``)."""
        return self._skipped

    def reset(self) -> "Evaluator":
        """Forget all counts."""
        with self._lock:
            self._conf = np.zeros((self.n_clusters, self.n_classes), dtype=np.int64)
            self._skipped = 0
            self._updates = 0
        return self

    def update(self, pred: npt.ArrayLike, gt: npt.ArrayLike) -> "Evaluator":
        """Count one batch.

        Parameters
        ----------
        pred : array_like of integers, shape (H, W) or (B, H, W)
            Cluster ids in ``[0, n_classes + extra_clusters)``.  uint8,
            uint16, int32 and int64 are read in place; other integer types
            are converted; floats are refused.
        gt : array_like of integers, same shape as `pred`
            Class ids; pixels outside ``[0, n_classes)`` are skipped.

        Returns
        -------
        Evaluator
            self.  The counting runs in C with the GIL released; the
            evaluator may be updated from several Python threads.
        """
        conf, skipped = _core.confusion_matrix(pred, gt, self.n_classes, self.extra_clusters)
        with self._lock:
            self._conf += conf
            self._skipped += skipped
            self._updates += 1
        return self

    def merge(self, other: "Evaluator") -> "Evaluator":
        """Add the counts of another evaluator (for example one filled in
        another process and sent back pickled).  Returns self."""
        if not isinstance(other, Evaluator):
            raise TypeError(f"other must be an Evaluator, got {type(other).__name__}")
        if (other.n_classes, other.extra_clusters) != (self.n_classes, self.extra_clusters):
            raise ValueError(
                "other must count the same classes and clusters: got n_classes="
                f"{other.n_classes}, extra_clusters={other.extra_clusters} for "
                f"n_classes={self.n_classes}, extra_clusters={self.extra_clusters}"
            )
        if other is self:
            conf, skipped, updates = self.confusion, self._skipped, self._updates
        else:
            with other._lock:
                conf, skipped, updates = other._conf.copy(), other._skipped, other._updates
        with self._lock:
            self._conf += conf
            self._skipped += skipped
            self._updates += updates
        return self

    def compute(self, class_names: Optional[Sequence[str]] = None) -> EvaluationReport:
        """Match clusters to classes and score.

        Parameters
        ----------
        class_names : sequence of str, optional
            Overrides the names given at construction.

        Returns
        -------
        EvaluationReport

        Raises
        ------
        ValueError
            If no pixel has been counted.
        """
        with self._lock:
            conf, skipped, updates = self._conf.copy(), self._skipped, self._updates
        if updates == 0:
            raise ValueError("the Evaluator is empty: call update(pred, gt) before compute()")
        if conf.sum() == 0:
            raise ValueError(
                f"no pixel was counted: all {skipped:,} ground-truth pixels lie outside "
                f"[0, {self.n_classes}) (ignored)"
            )
        return EvaluationReport.from_confusion(
            conf,
            self.n_classes,
            ignore_index=self.ignore_index,
            class_names=self.class_names if class_names is None else class_names,
            n_skipped=skipped,
        )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_conf"] = self.confusion
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Evaluator(n_classes={self.n_classes}, extra_clusters={self.extra_clusters}, "
            f"ignore_index={self.ignore_index}, n_pixels={self.n_pixels})"
        )


# --------------------------------------------------------------- one call


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or hasattr(x, "__array__")


def _pairs(pred: Any, gt: Any) -> Iterator[Tuple[Any, Any]]:
    """(pred, gt) pairs: one pair of arrays, or two lists of arrays (images
    of different sizes)."""
    seq_p = isinstance(pred, (list, tuple)) and len(pred) > 0 and all(_is_array(p) for p in pred)
    seq_g = isinstance(gt, (list, tuple)) and len(gt) > 0 and all(_is_array(g) for g in gt)
    if seq_p != seq_g:
        raise TypeError(
            "pred and gt must both be arrays or both be lists of arrays, got "
            f"{type(pred).__name__} and {type(gt).__name__}"
        )
    if not seq_p:
        yield pred, gt
        return
    if len(pred) != len(gt):
        raise ValueError(f"pred and gt must hold as many arrays, got {len(pred)} and {len(gt)}")
    yield from zip(pred, gt)


def evaluate(
    pred: Any,
    gt: Any,
    n_classes: int,
    extra_clusters: int = 0,
    ignore_index: int = 255,
    class_names: Optional[Sequence[str]] = None,
) -> EvaluationReport:
    """Hungarian-matched evaluation in one call.

    Parameters
    ----------
    pred, gt : integer arrays of the same shape, or lists of such pairs
        Cluster ids and ground-truth class ids (see `Evaluator.update`);
        lists allow images of different sizes.
    n_classes, extra_clusters, ignore_index, class_names
        As for `Evaluator`.

    Returns
    -------
    EvaluationReport
    """
    ev = Evaluator(n_classes, extra_clusters, ignore_index, class_names)
    for p, g in _pairs(pred, gt):
        ev.update(p, g)
    return ev.compute()
