"""The evaluate stage: the models of the run folder (or one checkpoint)
scored on the validation store with Hungarian matching, optionally with
the dense CRF and the supervised linear probe; writes metrics.json and
report.txt (the pictures: `pictures`).

`shard_confusions` is the unit of work: the confusion counts of every
model on one shard, as `Evaluator`s that merge exactly (integer counts),
so the scores do not depend on how the shards are shared out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._io import atomic_write
from ..config import Config
from ..em import PriMaPsEM
from ..features import FeatureStore
from ..metrics import EvaluationReport, Evaluator
from ..probe import LinearProbe
from .batches import Batches
from .data import ImageSource, dataset_info, label_size, n_classes
from .files import Paths, _digest, file_digest, load_labels, open_store, update_metrics, writing
from .pictures import _pictures
from .pseudo_labels import mask_tag
from .training import _stale, mask_counts, provenance, training_fields
from .ui import UI, PipelineError, stage


ROWS = (("kmeans", "K-means baseline", "kmeans.npz", "teacher"),
        ("em_teacher", "PriMaPs-EM teacher", "em.npz", "teacher"),
        ("em_student", "PriMaPs-EM student", "em.npz", "student"),
        ("em_teacher_crf", "PriMaPs-EM teacher, with CRF", None, "teacher"),
        ("em_student_crf", "PriMaPs-EM student, with CRF", None, "student"),
        ("nomask_teacher", "EM without masks, teacher", "em_no_masks.npz", "teacher"),
        ("nomask_student", "EM without masks, student", "em_no_masks.npz", "student"))


MODELS = (("em", "em.npz"), ("kmeans", "kmeans.npz"), ("em_no_masks", "em_no_masks.npz"))


ROLE_ROWS = {"em": ("em_teacher", "em_student"), "kmeans": ("kmeans",),
             "em_no_masks": ("nomask_teacher", "nomask_student")}


def _role(em: PriMaPsEM) -> str:
    """em, kmeans or em_no_masks: from the provenance, else from the
    parameters (a K-means baseline trains no EM epochs)."""
    role = em.provenance.get("role") if isinstance(em.provenance, dict) else None
    if role in ROLE_ROWS:
        return role
    return "kmeans" if em.epochs == 0 and em.warmup_epochs > 0 else "em"


def _load_model(p: Path) -> PriMaPsEM:
    try:
        return PriMaPsEM.load(p)
    except ValueError as e:
        raise PipelineError(str(e)) from None


def shard_confusions(models: Dict[str, Tuple[PriMaPsEM, str]], sid: Sequence[str], feats: Any,
                     gt_of: Dict[str, np.ndarray], K: int, class_names, batch: int,
                     images: Optional[ImageSource] = None, crf_rows: Sequence[str] = (),
                     bar: Any = None) -> Dict[str, Evaluator]:
    """The counts of one shard (ids `sid`, features `feats`) against the
    ground truth `gt_of` (id -> (H, W) labels): an `Evaluator` per model
    name, and per name of `crf_rows` one more, ``<name>_crf``, of the
    prediction refined by the dense CRF over `images`."""
    evs = {name: Evaluator(K, class_names=class_names) for name in models}
    evs.update({f"{name}_crf": Evaluator(K, class_names=class_names) for name in crf_rows})
    for s in range(0, len(sid), batch):
        f = np.ascontiguousarray(feats[s:s + batch], dtype=np.float32)
        gt = np.stack([gt_of[i] for i in sid[s:s + batch]])
        size = gt.shape[1:]
        for name, (est, which) in models.items():
            evs[name].update(est.predict(f, size, which=which), gt)
        if crf_rows:
            imgs = images.read(sid[s:s + batch]) if images is not None else None
            if imgs is None or imgs.shape[1:3] != tuple(size):
                raise PipelineError("the validation images cannot be read at the "
                                    f"label size {tuple(size)}: set eval.crf=false")
            for name in crf_rows:
                est, which = models[name]
                evs[f"{name}_crf"].update(
                    est.predict(f, size, which=which, images=imgs, crf=True), gt)
        if bar is not None:
            bar.update(f.shape[0])
    return evs


def _predict_all(models: Dict[str, Tuple[PriMaPsEM, str]], store: FeatureStore,
                 ids: List[str], labels: np.ndarray, K: int, class_names, batch: int,
                 ui: UI, images: Optional[ImageSource] = None,
                 crf_rows: Sequence[str] = ()) -> Dict[str, EvaluationReport]:
    """The reports of every model on the validation store: the counts of
    every shard (`shard_confusions`), merged in shard order."""
    evs = {name: Evaluator(K, class_names=class_names) for name in models}
    evs.update({f"{name}_crf": Evaluator(K, class_names=class_names) for name in crf_rows})
    gt_of = dict(zip(ids, labels))
    if set(gt_of) != set(store.ids):
        raise PipelineError("the validation labels and the validation store hold different "
                            "images: run 'primaps extract' again into a fresh folder")
    with ui.progress(len(ids), "evaluate") as bar:
        for sid, feats in store.iter_shards():
            part = shard_confusions(models, sid, feats, gt_of, K, class_names, batch, images,
                                    crf_rows, bar)
            del feats
            for name, ev in part.items():
                evs[name].merge(ev)
    return {name: ev.compute() for name, ev in evs.items()}


def _probe_report(cfg: Config, K: int, class_names, ui: UI, paths: Paths,
                  val_store: FeatureStore, val_ids: List[str],
                  val_labels: np.ndarray) -> EvaluationReport:
    ids, labels = load_labels(paths.labels("train"))
    store = open_store(paths.store("train"))
    probe = LinearProbe(K, epochs=cfg.eval.probe_epochs, batch_size=cfg.em.batch_size,
                        seed=cfg.run.seed)
    order = {i: k for k, i in enumerate(ids)}
    lab = labels[[order[i] for i in store.ids]]
    src = Batches(store, cfg.em.batch_size, cfg.run.seed, ui, lambda: "linear probe",
                  maps="labels", labels=lab)
    probe.fit(src, verbose=False)
    ev = Evaluator(K, class_names=class_names)
    row = {i: k for k, i in enumerate(val_ids)}
    for sid, feats in val_store.iter_shards():
        for s in range(0, len(sid), cfg.eval.batch_size):
            f = np.ascontiguousarray(feats[s:s + cfg.eval.batch_size], dtype=np.float32)
            gt = val_labels[[row[i] for i in sid[s:s + cfg.eval.batch_size]]]
            ev.update(probe.predict(f, gt.shape[1:]), gt)
    # supervised: scored without Hungarian matching
    return EvaluationReport.from_confusion(ev.confusion, K, assignment=np.arange(K),
                                           class_names=class_names, n_skipped=ev.n_skipped)


@stage("evaluate")
def evaluate(cfg: Config, ui: UI, checkpoint: Optional[Path] = None) -> dict:
    """Reports of teacher and student (and baseline, ablation, probe) on
    the validation store; writes metrics.json, report.txt and pictures into
    the run folder.

    Without `checkpoint`: the models of the run folder that were trained on
    the current inputs (config, training store, masks); em.npz of other
    inputs is an error, a baseline or ablation of other inputs is skipped
    (the result says which and why).  With `checkpoint`: that model only,
    its rows named by its role, the report still written into the run
    folder (never beside the checkpoint)."""
    paths = Paths(cfg)
    with writing(paths.out):
        return _evaluate(cfg, paths, ui, checkpoint)


def _evaluate(cfg: Config, paths: Paths, ui: UI, checkpoint: Optional[Path]) -> dict:
    K = n_classes(cfg)
    class_names, palette = dataset_info(cfg)
    if len(class_names) != K:
        class_names = None
    chosen: List[Tuple[str, Path, PriMaPsEM]] = []
    skipped: Dict[str, str] = {}
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise PipelineError(f"no checkpoint at {ckpt}")
        em = _load_model(ckpt)
        chosen.append((_role(em), ckpt, em))
    else:
        ckpt = paths.checkpoint
        if not ckpt.is_file():
            raise PipelineError(f"no checkpoint at {ckpt}: run '{ui.command('fit', cfg)}' first")
        train = paths.store("train")
        store = FeatureStore(train, mode="r") if (train / "index.json").is_file() else None
        size = label_size(cfg, paths)
        for role, name in MODELS:
            p = paths.out / name
            if not p.is_file():
                continue
            em = _load_model(p)
            want = provenance(cfg, store, role, mask_tag(cfg, size) if role == "em" else None) \
                if store is not None else None
            why = _stale(em.provenance, want) if want is not None else None
            if why is None and want is None and isinstance(em.provenance, dict):
                # no training store at hand: the config alone is compared
                if em.provenance.get("training") != _digest(training_fields(cfg)):
                    why = "it was trained with a different config"
            if why is not None:
                if role == "em":
                    fix = f"'{ui.command('fit', cfg, '--restart')}'"
                    if store is not None and mask_counts(store, mask_tag(cfg, size)) != (0, 0):
                        # the masks of the current config are not there yet
                        fix = f"'{ui.command('pseudo', cfg)}', then {fix},"
                    raise PipelineError(f"{p}: {why}; run {fix} to train it again, or "
                                        "evaluate it with --checkpoint")
                skipped[name] = why
                ui.info(f"evaluate: skipping {p}: {why}")
                continue
            chosen.append((role, p, em))
    for _, p, em in chosen:
        if em.n_classes != K:
            raise PipelineError(f"{p} has {em.n_classes} classes, the data set {K}")
    models: Dict[str, Tuple[PriMaPsEM, str]] = {}
    which_of = {key: which for key, _, _, which in ROWS}
    for role, _, em in chosen:
        for key in ROLE_ROWS[role]:
            models[key] = (em, which_of[key])
    main_role, main_path, main_em = chosen[0]
    main = ROLE_ROWS[main_role][0]
    hint = ui.command("extract", cfg)
    ids, labels = load_labels(paths.labels("val"), hint)
    store = open_store(paths.store("val"), hint=hint)
    t = time.perf_counter()
    images = ImageSource(cfg, "val") if cfg.eval.crf else None
    crf_rows = [k for k in ("em_teacher", "em_student") if k in models] if images else []
    reports = _predict_all(models, store, ids, labels, K, class_names, cfg.eval.batch_size, ui,
                           images, crf_rows)
    out: Dict[str, Any] = {
        "checkpoint": str(main_path), "label_size": list(labels.shape[1:]),
        "models": {str(p): {"role": role, "rows": list(ROLE_ROWS[role]),
                            "sha256": file_digest(p)} for role, p, _ in chosen},
        "skipped": skipped, "val_store": store.fingerprint(),
        "crf": ("rows with CRF: dense CRF over the validation images" if crf_rows else
                "not applied: " + ("eval.crf = false" if not cfg.eval.crf
                                   else "the features alone are at hand")),
        "seconds": round(time.perf_counter() - t, 3)}
    if cfg.eval.probe:
        t = time.perf_counter()
        reports["probe"] = _probe_report(cfg, K, class_names, ui, paths, store, ids, labels)
        out["probe_seconds"] = round(time.perf_counter() - t, 3)
    out["reports"] = {k: r.to_dict() for k, r in reports.items()}
    out["table"] = {k: {"acc": round(r.accuracy, 2), "miou": round(r.miou, 2)}
                    for k, r in reports.items()}
    folder = paths.out
    update_metrics(paths.metrics, "evaluate", out, ui)
    text = format_table(reports) + "\n\n" + str(reports[main]) + "\n"
    with atomic_write(folder / "report.txt", suffix=".txt") as f:
        f.write(text.encode("utf-8"))
    if cfg.eval.pictures:
        label = dict((k, lab) for k, lab, _, _ in ROWS)[main]
        out["pictures"] = _pictures(cfg, folder, main_em, reports[main], store,
                                    ids, labels, palette, ui, images, label)
    return out


def format_table(reports: Dict[str, EvaluationReport]) -> str:
    """Acc / mIoU per model, one line each, in a fixed order."""
    names = {k: label for k, label, _, _ in ROWS}
    names["probe"] = "linear probe (supervised)"
    lines = [f"{'':32s} {'Acc %':>6} {'mIoU %':>7}"]
    for key in [k for k, *_ in ROWS] + ["probe"]:
        if key in reports:
            r = reports[key]
            lines.append(f"{names[key]:32s} {r.accuracy:6.1f} {r.miou:7.1f}")
    return "\n".join(lines)
