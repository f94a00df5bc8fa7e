"""`run`: extract -> pseudo -> fit -> evaluate under one lock of the run
folder, with the time of every stage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

from .._runtime import set_num_threads
from ..config import Config
from .evaluation import evaluate
from .extraction import extract
from .files import SPLITS, Paths, open_store, writing
from .pseudo_labels import pseudo
from .training import fit
from .ui import UI


def _shared_extract(cfg: Config, ui: UI) -> dict:
    """`run` with run.features: the stores of that folder, checked, in place
    of an extract."""
    paths = Paths(cfg)
    out: Dict[str, Any] = {"features": str(paths.data), "seconds": 0.0}
    for split in SPLITS:
        store = open_store(paths.store(split), hint=ui.command("extract", cfg))
        out[split] = {"images": len(store), "feature_shape": list(store.item_shape or ())}
    ui.info(f"extract: using the features of {paths.data}")
    return out


def run(cfg: Config, ui: UI, cfg_dir: Optional[Path] = None,
        restart: bool = False) -> dict:
    """extract -> pseudo -> fit -> evaluate, with the time of every stage."""
    if cfg.run.threads:
        set_num_threads(cfg.run.threads)
    out: Dict[str, Any] = {}
    with writing(Paths(cfg).out):  # one lock for the four stages
        for name, step in (("extract", lambda: _shared_extract(cfg, ui) if Paths(cfg).shared
                            else extract(cfg, ui, cfg_dir)),
                           ("pseudo", lambda: pseudo(cfg, ui)),
                           ("fit", lambda: fit(cfg, ui, restart)),
                           ("evaluate", lambda: evaluate(cfg, ui))):
            ui.info(f"== {name}")
            t = time.perf_counter()
            out[name] = step()
            out[name]["wall_seconds"] = round(time.perf_counter() - t, 3)
    return out
