"""The stages behind the ``primaps`` command: extract, pseudo, fit, evaluate.

Every stage reads and writes the run folder ``run.out`` of a `Config`:

    features/<split>/       feature stores (PriMaPs masks of train beside them)
    labels/<split>.npz      ground-truth labels and ids, in store order
    em.npz                  the PriMaPs-EM checkpoint (kmeans.npz, em_no_masks.npz)
    config.toml             the effective config
    build_info.json         primaps.build_info() and the Python version
    metrics.json            training summaries and evaluation reports
    report.txt, panels.png, confusion.png
    .lock                   held by the one process writing the folder

All files are written atomically, and every stage holds the folder's lock
(a second writer is refused, naming the holder's pid).  Every artifact
records the fingerprint of its inputs: the mask shards the fingerprint of
their [masks] config, each checkpoint the feature store, masks and
training fields it was trained on, the report the checkpoints it scored;
the consumers check them (`fit` refuses stale or mixed masks, `evaluate`
scores only the models of the current config).  The stages are plain
functions that return JSON-ready dicts; `primaps.cli` prints them.

The package holds one module per stage (`extraction`, `pseudo_labels`,
`training`, `evaluation`, `pictures`, `runner`) and the shared parts
(`files`: the run folder's names, lock and small files; `ui`: messages,
progress bars and suggested commands; `data`: the configured data set;
`batches`: the training batches).  Every stage is written as per-shard
functions (`extract_shard`, `shard_masks`, `shard_confusions`) and a
one-process driver that calls them, so that another driver (a cluster's)
calls the same functions.
"""

from .batches import Batches
from .data import ImageSource, dataset_info, label_size, n_classes
from .evaluation import evaluate, format_table, shard_confusions
from .extraction import extract, extract_shard
from .files import (Paths, file_digest, load_labels, open_store, read_json, save_labels,
                    update_metrics, write_json, writing)
from .pseudo_labels import mask_tag, masks_of, pseudo, shard_masks
from .runner import run
from .training import check_masks, fit, provenance, training_fields
from .ui import UI, PipelineError, stage

__all__ = ["PipelineError", "UI", "Paths", "extract", "pseudo", "fit", "evaluate", "run",
           "format_table", "extract_shard", "shard_masks", "shard_confusions", "Batches",
           "ImageSource", "dataset_info", "label_size", "n_classes", "file_digest",
           "load_labels", "open_store", "read_json", "save_labels", "update_metrics",
           "write_json", "writing", "mask_tag", "masks_of", "check_masks", "provenance",
           "training_fields", "stage"]
