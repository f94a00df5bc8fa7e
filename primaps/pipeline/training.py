"""The fit stage: PCA init, K-means warm-up and EM on the training store
-> em.npz (and the K-means baseline and the EM without masks), with the
provenance every checkpoint records and the checks that keep a run from
resuming or scoring a model of other inputs.  The EM step itself is
`primaps.PriMaPsEM.partial_fit`."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from ..config import Config, ConfigError
from ..em import PriMaPsEM
from ..features import FeatureStore
from .batches import Batches
from .data import label_size, n_classes
from .files import Paths, _digest, open_store, update_metrics, write_run_info, writing
from .pseudo_labels import mask_tag
from .ui import UI, PipelineError, stage


def _estimator(cfg: Config, K: int, **over: Any) -> PriMaPsEM:
    e = cfg.em
    kw = dict(n_classes=K, lr=e.lr, focal_gamma=e.focal_gamma, ema_decay=e.ema_decay,
              ema_every=e.ema_every, warmup_epochs=e.warmup_epochs, epochs=e.epochs,
              batch_size=e.batch_size, hflip=e.hflip, seed=cfg.run.seed)
    kw.update(over)
    return PriMaPsEM(**kw)


def _em_desc(em: PriMaPsEM, name: str) -> Callable[[], str]:
    def desc() -> str:
        if em.warmup_epoch_ < em.warmup_epochs:
            return f"{name}: K-means {em.warmup_epoch_ + 1}/{em.warmup_epochs}"
        return f"{name}: EM {em.epoch_ + 1}/{em.epochs}"
    return desc


def _summary(em: PriMaPsEM, seconds: float) -> dict:
    out = {"seconds": round(seconds, 3), "warmup_epochs": em.warmup_epoch_,
           "em_epochs": em.epoch_, "em_steps": em.step_}
    if em.warmup_loss_history_:
        out["kmeans_loss_last"] = em.warmup_loss_history_[-1]
    if em.loss_history_:
        out["focal_loss_first"] = em.loss_history_[0]
        out["focal_loss_last"] = em.loss_history_[-1]
    return out


class _StoreShards:
    """The images of a store shard by shard (memory-mapped, in store order
    and dtype), with a progress bar: what `init_pca` reads in one pass."""

    def __init__(self, store: FeatureStore, ui: UI):
        self.store, self.ui = store, ui

    def __iter__(self) -> Iterator[np.ndarray]:
        with self.ui.progress(len(self.store), "PCA init") as bar:
            for _, feats in self.store.iter_shards():
                yield feats
                bar.update(feats.shape[0])


def _init_pca(em: PriMaPsEM, train: Batches) -> None:
    """`init_pca` on the training features: the array in memory, else the
    store in one pass (its pixel count is known, the float16 sample kept)."""
    if train.features is not None:
        em.init_pca(train.features, verbose=False)
        return
    store = train.store
    _, h, w = store.item_shape
    em.init_pca(_StoreShards(store, train.ui), verbose=False, n_pixels=len(store) * h * w)


def training_fields(cfg: Config) -> Dict[str, Any]:
    """The config fields a checkpoint depends on, as {"section.key": value}:
    the data, the backbone's features, the masks (not their batch size),
    the EM (not the extra baseline and ablation runs) and the seed."""
    skip = {"run.out", "run.threads", "run.features", "masks.batch_size", "backbone.batch_size",
            "backbone.device", "backbone.shard_size", "backbone.layout", "backbone.grid",
            "em.baseline", "em.ablation_no_masks"}
    d = cfg.to_dict()
    return {f"{sec}.{k}": v for sec in ("run", "data", "backbone", "masks", "em")
            for k, v in d[sec].items() if f"{sec}.{k}" not in skip}


def provenance(cfg: Config, store: FeatureStore, role: str, masks: Optional[str]) -> dict:
    """What a checkpoint of the command line records about its inputs: its
    role (em, kmeans, em_no_masks), the training store's fingerprint, the
    masks' fingerprint (None without masks) and the training fields (with
    their digest)."""
    fields = training_fields(cfg)
    return {"role": role, "store": store.fingerprint(), "masks": masks,
            "training": _digest(fields), "fields": fields}


def _stale(prov: Optional[dict], want: dict) -> Optional[str]:
    """Why a checkpoint of provenance `prov` is not of the inputs `want`
    (None when it is)."""
    if not isinstance(prov, dict) or "training" not in prov:
        return "it records no provenance (written by the Python API or an older primaps)"
    if prov.get("training") != want["training"]:
        before = prov.get("fields") if isinstance(prov.get("fields"), dict) else {}
        diff = [k for k in want["fields"] if before.get(k) != want["fields"][k]]
        return f"it was trained with a different config ({', '.join(diff) or 'fields'})"
    if prov.get("store") != want["store"]:
        return "it was trained on another feature store (the features were extracted again)"
    if prov.get("masks") != want["masks"]:
        return "it was trained on other masks"
    return None


def _resume_point(cfg: Config, paths: Paths, K: int, restart: bool, want: dict,
                  ui: UI) -> Optional[PriMaPsEM]:
    """The checkpoint of an earlier run of the same inputs to continue, or
    None (no checkpoint, or `restart`: it is replaced when the new run saves
    its first epoch).  A checkpoint of other inputs is a ConfigError."""
    ckpt = paths.checkpoint
    if not ckpt.exists() or restart:
        return None
    hint = (f"pass a new --out (with --features {paths.data} to use these features), or "
            f"--restart to train again from scratch (it replaces {ckpt} once the new run has "
            "saved its first epoch)")
    try:
        em = PriMaPsEM.load(ckpt)
    except ValueError as e:
        raise PipelineError(f"{e}; {hint}") from None
    if em.provenance is None:  # an older primaps: compare with config.toml
        written = paths.out / "config.toml"
        try:
            from ..config import load_config

            before = training_fields(load_config(str(written)))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{ckpt} exists but the config it was trained with cannot be "
                              f"read ({e}); {hint}") from None
        diff = [k for k in want["fields"] if before.get(k) != want["fields"][k]]
        why = f"it was trained with a different config ({', '.join(diff)})" if diff else None
    else:
        why = _stale(em.provenance, want)
    if why:
        raise ConfigError(f"{ckpt} does not match the current inputs: {why}; {hint}")
    if em._params() != _estimator(cfg, K)._params():
        raise ConfigError(f"{ckpt} does not match the config (its parameters differ); {hint}")
    return em


def mask_counts(store: FeatureStore, tag: str) -> Tuple[int, int]:
    """(images without masks, images with masks of another fingerprint than
    `tag`) of a training store."""
    missing = stale = 0
    for i in store.ids:
        if i not in store._mask_where:
            missing += 1
        elif store.mask_tag(i) != tag:
            stale += 1
    return missing, stale


def check_masks(cfg: Config, store: FeatureStore, size: Tuple[int, int], ui: UI) -> str:
    """The mask fingerprint of the current config, after checking that every
    training image has masks made with it (not a stale or mixed set)."""
    tag = mask_tag(cfg, size)
    missing, stale = mask_counts(store, tag)
    if missing or stale:
        what = []
        if missing:
            what.append(f"{missing} have no PriMaPs masks")
        if stale:
            what.append(f"{stale} have masks made with another [masks] config")
        raise PipelineError(f"of the {len(store)} training images, {' and '.join(what)}: run "
                            f"'{ui.command('pseudo', cfg)}' first")
    return tag


@stage("fit")
def fit(cfg: Config, ui: UI, restart: bool = False) -> dict:
    """PCA init, K-means warm-up and EM on the training store -> em.npz
    (and, as configured, the K-means baseline and the EM without masks).

    Resumable: em.npz is saved after every epoch; a run of the same inputs
    (store, masks and `training_fields`) continues from it, other inputs are
    a ConfigError unless `restart` (train again from scratch; the inputs are
    checked first, and the old checkpoint is replaced only when the new run
    saves its first epoch)."""
    paths = Paths(cfg)
    with writing(paths.out):
        return _fit(cfg, paths, ui, restart)


def _fit(cfg: Config, paths: Paths, ui: UI, restart: bool) -> dict:
    K = n_classes(cfg)
    out: Dict[str, Any] = {"n_classes": K}
    store = open_store(paths.store("train"), hint=ui.command("extract", cfg))
    size = label_size(cfg, paths)
    tag = check_masks(cfg, store, size, ui)
    want = provenance(cfg, store, "em", tag)
    resumed = _resume_point(cfg, paths, K, restart, want, ui)
    t_load = time.perf_counter()
    em = resumed or _estimator(cfg, K)
    em.provenance = want
    train = Batches(store, cfg.em.batch_size, cfg.run.seed, ui, _em_desc(em, "PriMaPs-EM"))
    if train.features is None and restart and paths.checkpoint.exists():
        store.verify()  # every shard intact before the finished model is replaced
    out["load_seconds"] = round(time.perf_counter() - t_load, 3)
    out["in_memory"] = train.features is not None
    write_run_info(cfg, paths.out)
    t = time.perf_counter()
    if resumed is None:
        _init_pca(em, train)
        out["resumed_from_epoch"] = 0
    else:
        done = em.warmup_epoch_ + em.epoch_
        train.passes = done  # the shuffles of the epochs still to run
        out["resumed_from_epoch"] = done
        ui.info(f"fit: resuming {paths.checkpoint} from epoch {done} of "
                f"{em.warmup_epochs + em.epochs} (K-means warm-up {em.warmup_epoch_}/"
                f"{em.warmup_epochs}, EM {em.epoch_}/{em.epochs})")
    out["pca_seconds"] = round(time.perf_counter() - t, 3)
    # in memory, the arrays go to the estimator as they are, so that its own
    # shuffle gives the numbers of em.fit((features, masks)) in Python
    bars = ui.bars
    em.fit(train.arrays("masks") or train, progress=bars and "PriMaPs-EM",
           checkpoint=paths.checkpoint)
    em.save(paths.checkpoint)  # also when there are no epochs to run
    out["em"] = _summary(em, time.perf_counter() - t)
    if cfg.em.baseline:
        t = time.perf_counter()
        km = _estimator(cfg, K, warmup_epochs=cfg.em.warmup_epochs + cfg.em.epochs, epochs=0)
        km.provenance = provenance(cfg, store, "kmeans", None)
        feats = train.features if train.features is not None else Batches(
            store, cfg.em.batch_size, cfg.run.seed, ui, _em_desc(km, "baseline"),
            maps="features", in_memory=False)
        _init_pca(km, train)
        km.warmup(feats, progress=bars and "baseline")
        km.save(paths.baseline)
        out["kmeans"] = _summary(km, time.perf_counter() - t)
    if cfg.em.ablation_no_masks:
        t = time.perf_counter()
        ab = _estimator(cfg, K)
        ab.provenance = provenance(cfg, store, "em_no_masks", None)
        nomask = train.arrays("none") or Batches(
            store, cfg.em.batch_size, cfg.run.seed, ui, _em_desc(ab, "EM without masks"),
            maps="none", in_memory=False)
        _init_pca(ab, train)
        ab.fit(nomask, progress=bars and "EM without masks", label_size=size)
        ab.save(paths.ablation)
        out["em_no_masks"] = _summary(ab, time.perf_counter() - t)
    update_metrics(paths.metrics, "fit", out, ui)
    return out
