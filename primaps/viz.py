"""Pictures: the matched confusion matrix and label-map panels.

matplotlib is an optional extra (``pip install primaps[viz]``), imported on
first use.  Figures are drawn on the Agg canvas (no pyplot, no window, no
global state), returned as ``matplotlib.figure.Figure`` and, given a path,
written as PNG atomically (temp file in the same folder, fsync, rename).

Label maps are coloured by a palette: a (K, 3) uint8 array, colour k for
class k.  Pixels equal to ``ignore_index`` (255 by default) are black.
"""

from __future__ import annotations

import colorsys
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from ._io import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .metrics import EvaluationReport

__all__ = ["colorize", "default_palette", "plot_confusion", "plot_panels", "save_png"]

_PathLike = Union[str, "os.PathLike[str]"]


def _matplotlib() -> SimpleNamespace:
    """The matplotlib pieces used here, or a clear ImportError."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as e:
        raise ImportError(
            "primaps' pictures need matplotlib, an optional extra: pip install primaps[viz]"
        ) from e
    return SimpleNamespace(Figure=Figure, FigureCanvasAgg=FigureCanvasAgg, LogNorm=LogNorm,
                           Patch=Patch)


def _new_figure(mpl: SimpleNamespace, size) -> "Figure":
    fig = mpl.Figure(figsize=size, layout="constrained")
    mpl.FigureCanvasAgg(fig)
    return fig


# ----------------------------------------------------------------- colours


def default_palette(n: int) -> np.ndarray:
    """`n` distinct colours as a (n, 3) uint8 array.

    Hues step by the golden angle, so neighbouring class ids differ
    strongly; lightness and saturation cycle over three levels so that
    colours stay apart for large `n`.  None is black (black marks ignored
    pixels).  Deterministic.
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    out = np.empty((int(n), 3), dtype=np.uint8)
    golden = 0.618033988749895
    levels = [(0.50, 0.75), (0.35, 0.85), (0.68, 0.65)]
    for k in range(int(n)):
        light, sat = levels[k % 3]
        r, g, b = colorsys.hls_to_rgb((k * golden) % 1.0, light, sat)
        out[k] = np.round(np.array([r, g, b]) * 255)
    return out


def _check_palette(palette: Optional[npt.ArrayLike], n: int) -> np.ndarray:
    if palette is None:
        return default_palette(max(n, 1))
    p = np.asarray(palette)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"palette must have shape (K, 3), got {p.shape}")
    if p.dtype != np.uint8:
        if p.dtype.kind not in "iu" or p.min(initial=0) < 0 or p.max(initial=0) > 255:
            raise TypeError(f"palette must be a uint8 array (values 0..255), got dtype {p.dtype}")
        p = p.astype(np.uint8)
    return p


def _n_labels(labels: np.ndarray, ignore_index: int) -> int:
    """1 + the largest label other than ignore_index (0 if none)."""
    kept = labels[labels != ignore_index]
    return int(kept.max()) + 1 if kept.size else 0


def colorize(
    labels: npt.ArrayLike, palette: Optional[npt.ArrayLike] = None, ignore_index: int = 255
) -> np.ndarray:
    """RGB picture of a label map.

    Parameters
    ----------
    labels : integer array of shape (..., H, W)
    palette : (K, 3) uint8 array, optional
        Colour of each label; default `default_palette` over the labels
        present.
    ignore_index : int, default 255
        Drawn black.

    Returns
    -------
    ndarray of shape (..., H, W, 3), uint8
    """
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got dtype {lab.dtype}")
    keep = lab != ignore_index
    pal = _check_palette(palette, _n_labels(lab, ignore_index))
    bad = keep & ((lab < 0) | (lab >= pal.shape[0]))
    if bad.any():
        v = lab[bad][0]
        raise ValueError(
            f"labels holds {v}, which the palette of {pal.shape[0]} colours does not cover "
            f"(and is not ignore_index = {ignore_index})"
        )
    out = np.zeros(lab.shape + (3,), dtype=np.uint8)
    out[keep] = pal[lab[keep]]
    return out


# ------------------------------------------------------------------ saving


def save_png(fig: "Figure", path: _PathLike, dpi: int = 100) -> str:
    """Write `fig` to `path` as PNG, atomically.  Returns the path."""
    with atomic_write(path, suffix=".png") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return os.fspath(path)


# ---------------------------------------------------------------- confusion


def plot_confusion(
    report: "EvaluationReport",
    path: Optional[_PathLike] = None,
    *,
    normalize: bool = True,
    annotate: Optional[bool] = None,
    title: Optional[str] = None,
    dpi: int = 100,
) -> "Figure":
    """The confusion matrix after matching, rows = true class, columns =
    predicted (matched) class, both in class order with class names.

    Parameters
    ----------
    report : EvaluationReport
    path : str or PathLike, optional
        Where to write the PNG.
    normalize : bool, default True
        Divide each row by its ground-truth pixels (percent per true
        class); otherwise raw counts on a log scale.
    annotate : bool, optional
        Write the numbers in the cells (default: for up to 30 classes).
    title : str, optional
        Default: Acc and mIoU.
    dpi : int, default 100

    Returns
    -------
    matplotlib.figure.Figure
    """
    mpl = _matplotlib()
    K = report.n_classes
    C = report.matched_confusion.T.astype(np.float64)  # [true, predicted]
    side = max(4.0, 0.32 * K + 2.2)
    fig = _new_figure(mpl, (side + 1.0, side))
    ax = fig.add_subplot()
    if normalize:
        rows = C.sum(axis=1, keepdims=True)
        M = np.divide(100.0 * C, rows, out=np.zeros_like(C), where=rows > 0)
        im = ax.imshow(M, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8, label="% of the true class's pixels")
    else:
        M = C
        im = ax.imshow(
            np.where(M > 0, M, np.nan), cmap="Blues", interpolation="nearest",
            norm=mpl.LogNorm(vmin=1, vmax=max(M.max(), 1)),
        )
        fig.colorbar(im, ax=ax, shrink=0.8, label="pixels")
    names = list(report.class_names)
    fs = 9 if K <= 12 else (7 if K <= 30 else 5)
    ax.set_xticks(range(K), names, rotation=90, fontsize=fs)
    ax.set_yticks(range(K), names, fontsize=fs)
    ax.set_xlabel("predicted class (after matching)")
    ax.set_ylabel("true class")
    if annotate is None:
        annotate = K <= 30
    if annotate:
        top = M.max() if M.size else 0
        for i in range(K):
            for j in range(K):
                v = M[i, j]
                if v <= 0 or (normalize and v < 0.5):  # an empty cell stays blank
                    continue
                txt = f"{v:.0f}" if normalize else (f"{v:.0f}" if v < 1000 else f"{v:.0e}")
                ax.text(j, i, txt, ha="center", va="center", fontsize=fs - 2,
                        color="white" if v > 0.6 * top else "black")
    if title is None:
        title = f"Acc {report.accuracy:.1f} %   mIoU {report.miou:.1f} %"
    ax.set_title(title)
    if path is not None:
        save_png(fig, path, dpi=dpi)
    return fig


# ------------------------------------------------------------------- panels


def _as_batch(x: Any, name: str, ndim: int) -> Optional[list]:
    """A list of per-sample arrays from one sample or a batch/list."""
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return [np.asarray(v) for v in x]
    a = np.asarray(x)
    if a.ndim == ndim:
        return [a]
    if a.ndim == ndim + 1:
        return list(a)
    raise ValueError(f"{name} must have {ndim} or {ndim + 1} dimensions, got shape {a.shape}")


def _image_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB for imshow from HWC or CHW, uint8 or float."""
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must have shape (H, W, 3) or (3, H, W), got {img.shape}")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img
    if img.dtype.kind not in "iuf":
        raise TypeError(f"image must be numeric, got dtype {img.dtype}")
    x = img.astype(np.float64)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if img.dtype.kind in "iu" and hi > 1:
        return np.clip(x, 0, 255).astype(np.uint8)
    if lo < 0 or hi > 1:  # e.g. ImageNet-normalised: rescale for display
        x = (x - lo) / (hi - lo if hi > lo else 1.0)
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def plot_panels(
    image: Any = None,
    gt: Any = None,
    pred: Any = None,
    pseudo: Any = None,
    *,
    masks: Any = None,
    palette: Optional[npt.ArrayLike] = None,
    report: Optional["EvaluationReport"] = None,
    class_names: Optional[Sequence[str]] = None,
    ignore_index: int = 255,
    path: Optional[_PathLike] = None,
    panel_size: float = 2.6,
    dpi: int = 100,
) -> "Figure":
    """Image / ground truth / prediction / pseudo-label panels, one row per
    sample.

    Parameters
    ----------
    image : (H, W, 3) or (3, H, W) array, a batch of them or a list, optional
        uint8, or float (in [0, 1], else min-max rescaled for display).
    gt, pred, pseudo : (H, W) integer array, a (B, H, W) batch or a list, optional
        Ground-truth classes, predictions and pseudo labels.  With `report`,
        `pred` and `pseudo` are cluster ids and are mapped to classes by
        ``report.map_clusters``; otherwise they are drawn as they are.
    masks : (H, W) integer array, a (B, H, W) batch or a list, optional
        PriMaPs mask maps, drawn second: every mask id in its own colour,
        background (0) black.
    palette : (K, 3) uint8 array, optional
        The dataset's colours (default `default_palette`).
    report : EvaluationReport, optional
        Maps clusters to classes and names the classes in a legend.
    class_names : sequence of str, optional
        Names for the legend (default: the report's, if any).
    ignore_index : int, default 255
        Drawn black.
    path : str or PathLike, optional
        Where to write the PNG.
    panel_size : float, default 2.6
        Height of a panel in inches (the width follows the pictures' aspect
        ratio).

    Returns
    -------
    matplotlib.figure.Figure
    """
    mpl = _matplotlib()
    columns = []
    for title, name, value, ndim in (("image", "image", image, 3),
                                     ("PriMaPs masks", "masks", masks, 2),
                                     ("ground truth", "gt", gt, 2),
                                     ("prediction", "pred", pred, 2),
                                     ("pseudo label", "pseudo", pseudo, 2)):
        batch = _as_batch(value, name, ndim)
        if batch is not None:
            columns.append((title, batch))
    if not columns:
        raise ValueError("plot_panels needs at least one of image, gt, pred, pseudo")
    n = len(columns[0][1])
    for title, batch in columns:
        if len(batch) != n:
            raise ValueError(
                f"every panel needs the same number of samples: {columns[0][0]} has {n}, "
                f"{title} has {len(batch)}"
            )
    if report is not None:
        ignore_index = report.ignore_index
        columns = [
            (t, [report.map_clusters(b) for b in batch]) if t in ("prediction", "pseudo label")
            else (t, batch)
            for t, batch in columns
        ]
    if class_names is None and report is not None:
        class_names = report.class_names
    labels = [b for t, batch in columns if t not in ("image", "PriMaPs masks") for b in batch]
    top = max((_n_labels(np.asarray(b), ignore_index) for b in labels), default=0)
    if palette is None:
        palette = default_palette(max(top, len(class_names) if class_names else 1))
    pal = _check_palette(palette, top)

    first = np.asarray(columns[0][1][0])
    h, w = (first.shape[-2:] if columns[0][0] != "image" else _image_rgb(first).shape[:2])
    aspect = min(max(w / max(h, 1), 0.5), 3.0)  # panels follow the pictures' shape
    legend_height = 0.9 if class_names else 0.0
    # a column is never narrower than its title (about 1.6 in for "PriMaPs masks")
    width = max(panel_size * aspect, 1.6)
    fig = _new_figure(mpl, (width * len(columns), panel_size * n + legend_height))
    axes = fig.subplots(n, len(columns), squeeze=False)
    for j, (title, batch) in enumerate(columns):
        for i, x in enumerate(batch):
            ax = axes[i, j]
            if title == "image":
                ax.imshow(_image_rgb(np.asarray(x)), interpolation="nearest")
            elif title == "PriMaPs masks":  # mask ids in arbitrary colours, background black
                m = np.asarray(x)
                ids = default_palette(max(int(m.max(initial=0)) + 1, 1))
                ax.imshow(colorize(m, ids, ignore_index=0), interpolation="nearest")
            else:
                ax.imshow(colorize(x, pal, ignore_index), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title)
    if class_names:
        present = sorted({int(v) for b in labels for v in np.unique(np.asarray(b))
                          if v != ignore_index and 0 <= v < min(len(class_names), pal.shape[0])})
        handles = [mpl.Patch(color=pal[k] / 255.0, label=class_names[k]) for k in present]
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
                       fontsize=7, frameon=False)
    if path is not None:
        save_png(fig, path, dpi=dpi)
    return fig
