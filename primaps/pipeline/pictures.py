"""The pictures of the evaluate stage: panels (image, ground truth,
masks, pseudo labels, prediction) and the confusion matrix, drawn by
`primaps.viz` from a report (the report itself draws nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..config import Config
from ..em import PriMaPsEM
from ..features import FeatureStore
from ..metrics import EvaluationReport
from .data import ImageSource
from .pseudo_labels import masks_of
from .ui import UI


def _pictures(cfg: Config, folder: Path, em: PriMaPsEM, report: EvaluationReport,
              store: FeatureStore, ids: List[str], labels: np.ndarray, palette,
              ui: UI, images: Optional[ImageSource] = None,
              label: str = "PriMaPs-EM teacher") -> Dict[str, str]:
    from .. import viz

    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pragma: no cover - matplotlib is an optional extra
        ui.info("pictures skipped: matplotlib is not installed (pip install 'primaps[viz]')")
        return {}
    n = min(4, len(ids))
    sel = store.ids[:n]
    row = {i: k for k, i in enumerate(ids)}
    feats = np.asarray(store.read(sel), dtype=np.float32)
    gt = labels[[row[i] for i in sel]]
    size = gt.shape[1:]
    imgs = images.read(sel) if images else None
    if imgs is not None and imgs.shape[1:3] != tuple(size):
        imgs = None
    masks = masks_of(cfg, feats, size, imgs if cfg.masks.crf else None)
    pseudo = em.pseudo_labels(feats, masks)
    pred = em.predict(feats, size)
    pal = palette if report.n_classes == len(palette) else None
    panels = folder / "panels.png"
    viz.plot_panels(imgs, gt=gt, pred=pred, pseudo=pseudo, masks=masks, palette=pal,
                    report=report, path=panels)
    conf = folder / "confusion.png"
    viz.plot_confusion(report, conf, title=f"{label}: Acc {report.accuracy:.1f} %, "
                                           f"mIoU {report.miou:.1f} %")
    return {"panels": str(panels), "confusion": str(conf)}
