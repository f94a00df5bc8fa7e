"""Twins of metrics.c and of the matching in primaps/metrics.py: a NumPy
bincount confusion matrix, a brute-force assignment that tries every
permutation, and the scores by their original definition."""

from __future__ import annotations

import itertools

import numpy as np


def confusion_bincount(pred, gt, n_classes: int, extra_clusters: int = 0) -> np.ndarray:
    """S[cluster, class] by np.bincount; gt outside [0, K) is skipped."""
    K, R = n_classes, n_classes + extra_clusters
    p = np.asarray(pred).astype(np.int64).ravel()
    g = np.asarray(gt).astype(np.int64).ravel()
    keep = (g >= 0) & (g < K)
    assert ((p >= 0) & (p < R)).all()
    return np.bincount(p[keep] * K + g[keep], minlength=R * K).reshape(R, K)


def brute_force_matching(S: np.ndarray) -> tuple[int, np.ndarray]:
    """The largest matched count over every injective map class -> cluster,
    and one map that reaches it (as a cluster -> class assignment, the
    leftover clusters merged into their majority class)."""
    S = np.asarray(S, dtype=np.int64)
    R, K = S.shape
    best, best_rows = -1, None
    for rows in itertools.permutations(range(R), K):
        total = int(S[list(rows), range(K)].sum())
        if total > best:
            best, best_rows = total, rows
    assignment = S.argmax(axis=1)
    assignment[list(best_rows)] = np.arange(K)
    return best, assignment


def scores_by_definition(S: np.ndarray, assignment: np.ndarray) -> dict:
    """Acc, per-class IoU and mIoU (percent) as the original evaluation code
    computes them: reorder the histogram so that row k holds the clusters of
    class k, then tp = diagonal, fp = row sum - tp, fn = column sum - tp,
    IoU = tp / (tp + fp + fn), mIoU = mean over the non-NaN IoUs."""
    S = np.asarray(S, dtype=np.float64)
    K = S.shape[1]
    hist = np.zeros((K, K))
    for cluster, cls in enumerate(assignment):
        hist[cls] += S[cluster]
    tp = np.diag(hist)
    fp = hist.sum(axis=1) - tp
    fn = hist.sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    return {
        "accuracy": 100 * tp.sum() / hist.sum(),
        "iou": 100 * iou,
        "miou": 100 * np.nanmean(iou),
    }
