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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import platform
import shlex
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ._io import atomic_write, remove_temporaries
from ._runtime import build_info, get_num_threads, set_num_threads
from .config import Config, ConfigError, dumps
from .em import PriMaPsEM
from .features import FeatureStore
from .metrics import EvaluationReport, Evaluator
from .probe import LinearProbe

__all__ = ["PipelineError", "UI", "Paths", "extract", "pseudo", "fit", "evaluate", "run",
           "format_table"]

# In-memory training when the features fit in this many bytes (float32);
# larger stores are streamed shard window by shard window.
IN_MEMORY_BYTES = 1 << 30


class PipelineError(RuntimeError):
    """A stage cannot run: missing inputs, inconsistent files."""


def stage(name: str):
    """Decorate a stage: an exception leaving it records the stage's name
    (``exc.primaps_stage``, the first stage it leaves) for the message."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if not hasattr(e, "primaps_stage"):
                    try:
                        e.primaps_stage = name  # type: ignore[attr-defined]
                    except AttributeError:  # pragma: no cover - exceptions without a dict
                        pass
                raise
        return wrapper
    return deco


# ------------------------------------------------------------------- output


class UI:
    """Messages to stderr and tqdm progress bars (images/s), or silence:
    bars only on a terminal (stderr a tty), never with `quiet`."""

    def __init__(self, quiet: bool = False, messages: bool = True,
                 options: Optional[Sequence[str]] = None):
        self.quiet = quiet
        self.messages = messages and not quiet
        # the configuration options of the command line (-c, --out, --set,
        # ...): what a suggested command repeats
        self.options = list(options) if options is not None else None

    def command(self, stage: str, cfg: Config, *extra: str) -> str:
        """The command line that runs `stage` on the same config."""
        opts = self.options if self.options is not None else ["--out", str(cfg.run.out)]
        return shlex.join(["primaps", stage, *opts, *extra])

    def info(self, msg: str) -> None:
        if self.messages:
            print(msg, file=sys.stderr, flush=True)

    @property
    def bars(self) -> bool:
        """Whether progress bars are drawn."""
        return not self.quiet and _is_tty(sys.stderr)

    def progress(self, total: Optional[int], desc: str):
        from ._training import progress_bar

        return progress_bar(total, desc, self.bars, "img")


class Paths:
    """File names inside the run folder."""

    def __init__(self, cfg: Config):
        self.out = Path(cfg.run.out).expanduser()
        # the features, masks and labels: of another run folder with run.features
        self.data = Path(cfg.run.features).expanduser() if cfg.run.features else self.out
        self.shared = self.data.resolve() != self.out.resolve()

    def store(self, split: str) -> Path:
        return self.data / "features" / split

    def labels(self, split: str) -> Path:
        return self.data / "labels" / f"{split}.npz"

    @property
    def checkpoint(self) -> Path:
        return self.out / "em.npz"

    @property
    def baseline(self) -> Path:
        return self.out / "kmeans.npz"

    @property
    def ablation(self) -> Path:
        return self.out / "em_no_masks.npz"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.json"


SPLITS = ("train", "val")


def _split_name(cfg: Config, split: str) -> str:
    return cfg.data.train_split if split == "train" else cfg.data.val_split


# -------------------------------------------------------------- small files


def _is_tty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False


LOCK = ".lock"
_HELD: Dict[str, List[Any]] = {}  # run folder -> [fd, depth] held by this process


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Hold the run folder's lock: one writing process at a time (a second
    one gets a PipelineError naming the holder's pid); re-entrant within a
    process.  The first holder removes the temporary files a killed write
    left behind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - not POSIX: no lock
        pass
    except OSError:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise PipelineError(f"another primaps process (pid {holder}) is writing to the run "
                            f"folder {folder}; wait for it to end (or stop it), then run "
                            "the command again") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        for sub in (folder, folder / "labels"):
            remove_temporaries(sub)
        _HELD[key] = [fd, 1]
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # releases the lock


def _digest(obj: Any) -> str:
    """SHA-256 (hex) of a JSON-ready object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, suffix=".json") as f:
        f.write((json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8"))


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise PipelineError(f"{path} is not valid JSON: {e}") from None


def write_run_info(cfg: Config, folder: Path) -> None:
    """config.toml and build_info.json, next to a checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "config.toml", suffix=".toml") as f:
        f.write(dumps(cfg).encode("utf-8"))
    info = dict(build_info())
    info["python"] = platform.python_version()
    write_json(folder / "build_info.json", info)


CHECKSUM = "checksum"


def read_output(path: Path, ui: "UI") -> dict:
    """An output JSON file (metrics.json, pseudo.json) to update: one that
    does not parse or fails its checksum is replaced, never an error."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        ui.info(f"{path} is unreadable ({e}); it is written again")
        return {}
    if not isinstance(m, dict):
        ui.info(f"{path} is not a JSON object; it is written again")
        return {}
    if CHECKSUM in m and m.pop(CHECKSUM) != _digest(m):
        ui.info(f"{path} fails its checksum (edited or corrupt); it is written again")
        return {}
    return m


def update_metrics(path: Path, key: str, value: Any, ui: Optional["UI"] = None) -> None:
    """Set metrics[key] = value in metrics.json (atomically, checksummed)."""
    m = read_output(path, ui or UI(quiet=True))
    m[key] = value
    m[CHECKSUM] = _digest({k: v for k, v in m.items() if k != CHECKSUM})
    write_json(path, m)


def save_labels(path: Path, ids: Sequence[str], labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, suffix=".npz") as f:
        np.savez(f, ids=np.asarray(list(ids), dtype=str), labels=labels)


def load_labels(path: Path, hint: str = "primaps extract") -> Tuple[List[str], np.ndarray]:
    if not path.is_file():
        raise PipelineError(f"no labels at {path}: run '{hint}' first")
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, labels = [str(i) for i in z["ids"]], np.asarray(z["labels"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise PipelineError(f"{path} is not a readable label file ({e}): run '{hint}' to "
                            "write it again") from None
    if labels.ndim != 3 or len(ids) != labels.shape[0]:
        raise PipelineError(f"{path} holds {len(ids)} ids and labels of shape {labels.shape}, "
                            f"expected (n, H, W) with n = {len(ids)}: run '{hint}' to write "
                            "it again")
    return ids, labels


def open_store(path: Path, mode: str = "r", hint: str = "primaps extract") -> FeatureStore:
    if mode == "r" and not (path / "index.json").is_file():
        raise PipelineError(f"no feature store at {path}: run '{hint}' first, or pass "
                            "--features RUN to use the features of the run folder RUN")
    return FeatureStore(path, mode=mode)


# ------------------------------------------------------------------ extract


def _import_callable(spec: str, cfg_dir: Optional[Path]) -> Callable:
    """The function named by "module:function" (the cwd and the config's
    folder are searched first)."""
    mod_name, _, fn_name = spec.partition(":")
    for p in ([str(cfg_dir)] if cfg_dir else []) + [os.getcwd()]:
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise PipelineError(f"backbone.callable {spec!r}: cannot import {mod_name!r}: "
                            f"{e}") from None
    fn = mod
    for part in fn_name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise PipelineError(f"backbone.callable {spec!r}: {mod_name} has no {fn_name!r}")
    if not callable(fn):
        raise PipelineError(f"backbone.callable {spec!r} is not callable")
    return fn


def _feature_fn(cfg: Config, cfg_dir: Optional[Path]) -> Callable[[np.ndarray], np.ndarray]:
    b = cfg.backbone
    if b.callable:
        return _import_callable(b.callable, cfg_dir)
    from . import backbones

    model = backbones.load(b.name, b.weights or None, device=b.device)
    return lambda images: model.extract(images, batch_size=b.batch_size, flip=b.flip)


def _callable_features(cfg: Config, out: Any, n: int) -> np.ndarray:
    """The backbone's output for n images as (n, C, h, w), after
    backbone.layout (a view where possible)."""
    from ._layout import to_nchw

    b = cfg.backbone
    what = {"": "(B, C, h, w)", "nchw": "(B, C, h, w)", "nhwc": "(B, h, w, C)",
            "tokens": "(B, N, C)"}[b.layout]
    try:
        feats = to_nchw(out, b.layout or None, b.grid or None, "the backbone's output",
                        ndims=(4,))
    except ValueError as e:
        raise PipelineError(f"backbone {b.callable or b.name}: {e} (set backbone.layout, "
                            "e.g. --set backbone.layout=nhwc)") from None
    feats = np.asarray(feats)
    if feats.ndim != 4 or feats.shape[0] != n:
        raise PipelineError(f"the feature function returned shape {np.shape(out)} for {n} "
                            f"images; expected {what} (backbone.layout = {b.layout!r})")
    return feats


def _dataset(cfg: Config, split: str):
    from . import datasets

    cls = {"cityscapes": datasets.Cityscapes, "cocostuff": datasets.CocoStuff,
           "potsdam": datasets.Potsdam}[cfg.data.dataset]
    if not cfg.data.root:
        raise PipelineError(f"data.root is not set: the folder of {cls.__name__} "
                            "(e.g. --set data.root=/data/cityscapes)")
    return cls(cfg.data.root, split, resize=cfg.data.resize, crop=cfg.data.crop)


def dataset_info(cfg: Config) -> Tuple[Tuple[str, ...], np.ndarray]:
    """Class names and palette of the configured data set."""
    if cfg.data.dataset == "street":
        from .datasets.street import CLASS_NAMES, PALETTE

        return CLASS_NAMES, PALETTE
    from .datasets import cityscapes, cocostuff, potsdam

    mod = {"cityscapes": cityscapes.Cityscapes, "cocostuff": cocostuff.CocoStuff,
           "potsdam": potsdam.Potsdam}[cfg.data.dataset]
    return tuple(mod.class_names), np.asarray(mod.palette)


def n_classes(cfg: Config) -> int:
    return cfg.em.n_classes or len(dataset_info(cfg)[0])


def _extract_street(cfg: Config, paths: Paths, ui: UI) -> dict:
    from .datasets.street import street_scenes

    d = cfg.data
    t = time.perf_counter()
    data = street_scenes(d.n_train + d.n_val, seed=cfg.run.seed, size=d.size)
    out = {"generated_s": round(time.perf_counter() - t, 3)}
    parts = {"train": slice(0, d.n_train), "val": slice(d.n_train, None)}
    for split, sl in parts.items():
        feats, labels = data.features[sl], data.labels[sl]
        ids = [f"street_{split}_{i:05d}" for i in range(len(feats))]
        # a store of the same data (same seed and size) is reused as it is
        protocol = {"generated": "street_scenes", "seed": cfg.run.seed, "size": d.size,
                    "n_train": d.n_train, "n_val": d.n_val}
        try:
            store = FeatureStore(paths.store(split), dtype=cfg.backbone.dtype,
                                 backbone="street", protocol=protocol)
        except ValueError as e:
            if "protocol" not in str(e):
                raise
            old = FeatureStore(paths.store(split), mode="r").protocol
            raise PipelineError(
                f"{paths.store(split)} holds the street scenes of {old}, not of {protocol} "
                f"(the generated data depend on the seed and data.*): pass another --out, or "
                f"--features {paths.out} with a new --out to train on the data already "
                "there") from None
        with store:
            step = cfg.backbone.shard_size
            todo = [k for k, i in enumerate(ids) if i not in store]
            with ui.progress(len(todo), f"store {split}") as bar:
                for s in range(0, len(todo), step):
                    part = todo[s:s + step]
                    store.append([ids[k] for k in part], feats[part])
                    bar.update(len(part))
        save_labels(paths.labels(split), ids, labels)
        out[split] = {"images": len(ids), "feature_shape": list(feats.shape[1:]),
                      "label_shape": list(labels.shape[1:])}
    return out


@stage("extract")
def extract(cfg: Config, ui: UI, cfg_dir: Optional[Path] = None) -> dict:
    """Images of the data set folders -> feature stores and label files.

    Resumable: images already in a store are skipped.  The generated street
    scenes need no backbone.
    """
    paths = Paths(cfg)
    if paths.shared:
        raise ConfigError(f"extract writes the features of run.out ({paths.out}); with "
                          f"--features {paths.data} the features are read from that folder: "
                          "drop --features to extract into run.out")
    with writing(paths.out):
        return _extract(cfg, paths, ui, cfg_dir)


def _extract(cfg: Config, paths: Paths, ui: UI, cfg_dir: Optional[Path]) -> dict:
    t0 = time.perf_counter()
    if cfg.data.dataset == "street":
        out = _extract_street(cfg, paths, ui)
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return out
    # the data set folders first: a missing path is reported before a
    # missing torch or weights file
    datasets = {split: _dataset(cfg, _split_name(cfg, split)) for split in SPLITS}
    fn = _feature_fn(cfg, cfg_dir)
    out: Dict[str, Any] = {}
    for split in SPLITS:
        ds = datasets[split]
        n = len(ds) if not cfg.data.limit else min(cfg.data.limit, len(ds))
        ids = ds.ids[:n]
        store = FeatureStore(paths.store(split), dtype=cfg.backbone.dtype,
                             backbone=cfg.backbone.callable or cfg.backbone.name,
                             protocol={**ds.protocol.as_dict(), "flip_average": cfg.backbone.flip})
        labels: List[Optional[np.ndarray]] = [None] * n
        with store, ui.progress(n, f"extract {split}") as bar:
            step = cfg.backbone.shard_size
            for s in range(0, n, step):
                part = range(s, min(n, s + step))
                items = [ds[k] for k in part]
                for k, (_, lab) in zip(part, items):
                    labels[k] = lab
                todo = [k for k in part if ids[k] not in store]
                if todo:
                    images = np.stack([items[k - s][0] for k in todo])
                    feats = _callable_features(cfg, fn(images), len(todo))
                    store.append([ids[k] for k in todo], feats)
                bar.update(len(part))
            shape = store.item_shape
        if all(lab is not None for lab in labels) and labels:
            save_labels(paths.labels(split), ids, np.stack(labels))
        out[split] = {"images": n, "feature_shape": list(shape or ()),
                      "labelled": all(lab is not None for lab in labels)}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


# ------------------------------------------------------------------- pseudo


def label_size(cfg: Config, paths: Paths, split: str = "train") -> Tuple[int, int]:
    """(H, W) of the labels (the size of the mask maps of the E-step)."""
    p = paths.labels(split)
    if p.is_file():
        return tuple(load_labels(p)[1].shape[1:])  # type: ignore[return-value]
    if cfg.data.dataset == "street":
        return cfg.data.size, cfg.data.size
    return cfg.data.crop, cfg.data.crop


def _mask_kwargs(cfg: Config) -> dict:
    m = cfg.masks
    return dict(threshold=m.threshold, stop_fraction=m.stop_fraction, gain=m.gain,
                median_size=m.median_size, max_masks=m.max_masks or None)


def masks_of(cfg: Config, features: np.ndarray, size: Tuple[int, int],
             images: Optional[np.ndarray] = None) -> np.ndarray:
    """PriMaPs mask maps of a batch of features at `size`, refined by the
    dense CRF over `images` when they are given."""
    from . import masks

    crf = images is not None
    return masks(np.ascontiguousarray(features, dtype=np.float32), out_size=size,
                 images=images, crf=crf, **_mask_kwargs(cfg))


class ImageSource:
    """The images of a data set split by id (None for generated data)."""

    def __init__(self, cfg: Config, split: str):
        self.ds = None
        if cfg.data.dataset != "street" and cfg.data.root:
            try:
                self.ds = _dataset(cfg, _split_name(cfg, split))
            except (OSError, ValueError):
                self.ds = None  # the folders are gone: features only
        self.index = {i: k for k, i in enumerate(self.ds.ids)} if self.ds else {}

    def __bool__(self) -> bool:
        return self.ds is not None

    def read(self, ids: Sequence[str]) -> Optional[np.ndarray]:
        if self.ds is None or any(i not in self.index for i in ids):
            return None
        return np.stack([self.ds[self.index[i]][0] for i in ids])


PSEUDO_RECORD = "pseudo.json"


def _mask_record(cfg: Config, size: Tuple[int, int]) -> dict:
    """What the stored masks depend on: the [masks] fields (not the batch
    size) and the label size."""
    m = dict(cfg.masks.__dict__)
    m.pop("batch_size")
    return {"masks": m, "label_size": [int(x) for x in size]}


def mask_tag(cfg: Config, size: Tuple[int, int]) -> str:
    """The fingerprint of the masks the current config makes, recorded
    with every mask shard."""
    return "masks:" + _digest(_mask_record(cfg, size))[:32]


@stage("pseudo")
def pseudo(cfg: Config, ui: UI) -> dict:
    """PriMaPs masks of the training store, stored beside its features.

    Resumable: every mask shard records the fingerprint of the mask config
    it was made with (`mask_tag`); the masks of that fingerprint are reused,
    the rest are computed.  Once every image has masks of the current
    config, the shards of other configs are removed.  `pseudo.json` in the
    store's folder describes the current set.
    """
    paths = Paths(cfg)
    with writing(paths.out), writing(paths.data):  # the masks go into the shared store
        return _pseudo(cfg, paths, ui)


def _pseudo(cfg: Config, paths: Paths, ui: UI) -> dict:
    size = label_size(cfg, paths)
    t0 = time.perf_counter()
    open_store(paths.store("train"), hint=ui.command("extract", cfg))
    images = ImageSource(cfg, "train") if cfg.masks.crf else None
    refined = bool(images)
    n_masks: List[int] = []
    record_path = paths.store("train") / PSEUDO_RECORD
    tag = mask_tag(cfg, size)
    record = {**_mask_record(cfg, size), "tag": tag, "refined": refined, "ids": []}
    reused = 0
    with FeatureStore(paths.store("train"), mode="a") as store:
        done = {i for i in store.mask_ids if store.mask_tag(i) == tag}
        record["ids"] = [i for i in store.ids if i in done]
        write_json(record_path, record)
        if done:
            ui.info(f"pseudo: reusing the masks of {len(done)} of {len(store)} images "
                    f"(same [masks] config)")
        with ui.progress(len(store), "PriMaPs masks") as bar:
            for k in range(store.n_shards):
                ids, feats = store.shard(k)
                todo = [r for r, i in enumerate(ids) if i not in done]
                for r, i in enumerate(ids):
                    if i in done:
                        n_masks.append(int(store.read_masks(i).max()))
                        reused += 1
                bar.update(len(ids) - len(todo))
                if not todo:
                    continue
                maps = []
                # the bar moves every few images per thread (a noise image can
                # take seconds); the masks do not depend on the grouping
                bs = min(cfg.masks.batch_size, 4 * get_num_threads())
                for s in range(0, len(todo), bs):
                    rows = todo[s:s + bs]
                    part = np.asarray(feats[rows], dtype=np.float32)
                    imgs = images.read([ids[r] for r in rows]) if refined else None
                    if refined and (imgs is None or imgs.shape[1:3] != tuple(size)):
                        raise PipelineError("the images of the training store cannot be read "
                                            f"at the label size {size}: set masks.crf=false")
                    maps.append(masks_of(cfg, part, size, imgs))
                    bar.update(part.shape[0])
                del feats  # unmap the shard
                m = np.concatenate(maps)
                n_masks += m.reshape(m.shape[0], -1).max(axis=1).tolist()
                written = [ids[r] for r in todo]
                store.write_masks(written, m, tag=tag)
                record["ids"] += written
                write_json(record_path, record)
        # the set is complete: shards of other configs are obsolete
        pruned = store.prune_masks()
    out = {"images": len(n_masks), "reused": reused, "label_size": list(size),
           "masks_per_image": round(float(np.mean(n_masks)), 2) if n_masks else None,
           "refinement": "dense CRF over the images" if refined else
                         "bilinear upsampling, no CRF (" + ("features only" if cfg.masks.crf
                                                            else "masks.crf = false") + ")",
           "tag": tag, "obsolete_shards_removed": pruned,
           "seconds": round(time.perf_counter() - t0, 3)}
    update_metrics(paths.metrics, "pseudo", out, ui)
    return out


# ---------------------------------------------------------------------- fit


class Batches:
    """Re-iterable shuffled batches of a training store, or of arrays that
    fit in memory, with a progress bar in images/s for every pass.

    Yields, by `maps`: ``(features, masks)`` ("masks"), ``(features,
    None)`` ("none": EM without masks), ``(features, labels)`` ("labels")
    or bare features ("features").
    """

    def __init__(self, store: FeatureStore, batch_size: int, seed: int, ui: UI,
                 desc: Callable[[], str], maps: str = "masks", shuffle: bool = True,
                 labels: Optional[np.ndarray] = None, in_memory: Optional[bool] = None,
                 dtype: Any = np.float32):
        self.store, self.batch_size, self.seed, self.ui = store, batch_size, seed, ui
        self.dtype = dtype
        self.desc, self.maps, self.shuffle, self.labels = desc, maps, shuffle, labels
        self.n = len(store)
        self.passes = 0
        C_h_w = store.item_shape or (0,)
        nbytes = self.n * int(np.prod(C_h_w)) * 4
        self.features = None
        self.masks = None
        if in_memory if in_memory is not None else nbytes <= IN_MEMORY_BYTES:
            self.features = np.concatenate([np.asarray(f, dtype=np.float32)
                                            for _, f in store.iter_shards()])
            if maps == "masks":
                self.masks = np.stack([store.read_masks(i) for i in store.ids])
        self.row = {i: k for k, i in enumerate(store.ids)}

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def arrays(self, maps: str) -> Optional[tuple]:
        """``(features, masks)`` ("masks") or ``(features, None)`` ("none")
        when the store is held in memory, else None."""
        if self.features is None:
            return None
        return (self.features, self.masks if maps == "masks" else None)

    def _tuple(self, feats: np.ndarray, masks: Optional[np.ndarray], ids) -> Any:
        if self.maps == "masks":
            return feats, masks
        if self.maps == "none":
            return feats, None
        if self.maps == "labels":
            return feats, self.labels[[self.row[i] for i in ids]]
        return feats

    def __iter__(self) -> Iterator[Any]:
        seed = [self.seed, self.passes]
        self.passes += 1
        with self.ui.progress(self.n, self.desc()) as bar:
            if self.features is not None:
                rng = np.random.default_rng(seed)
                order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
                ids = self.store.ids
                for s in range(0, self.n, self.batch_size):
                    idx = order[s:s + self.batch_size]
                    m = self.masks[idx] if self.masks is not None else None
                    yield self._tuple(self.features[idx], m, [ids[i] for i in idx])
                    bar.update(len(idx))
            else:
                pass_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
                it = self.store.batches(self.batch_size, shuffle=self.shuffle, seed=pass_seed,
                                        masks=self.maps == "masks", dtype=self.dtype)
                for item in it:
                    ids, feats = item[0], item[1]
                    yield self._tuple(feats, item[2] if len(item) > 2 else None, ids)
                    bar.update(len(ids))


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


def _pca_source(train: Batches) -> Any:
    if train.features is not None:
        return train.features
    # the store's dtype (float16): init_pca converts only the pixels it samples
    return Batches(train.store, 256, 0, train.ui, lambda: "PCA init", maps="features",
                   shuffle=False, in_memory=False, dtype=None)


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
            from .config import load_config

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


def check_masks(cfg: Config, store: FeatureStore, size: Tuple[int, int], ui: UI) -> str:
    """The mask fingerprint of the current config, after checking that every
    training image has masks made with it (not a stale or mixed set)."""
    tag = mask_tag(cfg, size)
    missing = stale = 0
    for i in store.ids:
        if i not in store._mask_where:
            missing += 1
        elif store.mask_tag(i) != tag:
            stale += 1
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
        em.init_pca(_pca_source(train), verbose=False)
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
        km.init_pca(_pca_source(train), verbose=False)
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
        ab.init_pca(_pca_source(train), verbose=False)
        ab.fit(nomask, progress=bars and "EM without masks", label_size=size)
        ab.save(paths.ablation)
        out["em_no_masks"] = _summary(ab, time.perf_counter() - t)
    update_metrics(paths.metrics, "fit", out, ui)
    return out


# ----------------------------------------------------------------- evaluate


def _predict_all(models: Dict[str, Tuple[PriMaPsEM, str]], store: FeatureStore,
                 ids: List[str], labels: np.ndarray, K: int, class_names, batch: int,
                 ui: UI, images: Optional[ImageSource] = None,
                 crf_rows: Sequence[str] = ()) -> Dict[str, EvaluationReport]:
    evs = {name: Evaluator(K, class_names=class_names) for name in models}
    evs.update({f"{name}_crf": Evaluator(K, class_names=class_names) for name in crf_rows})
    size = labels.shape[1:]
    row = {i: k for k, i in enumerate(ids)}
    if set(row) != set(store.ids):
        raise PipelineError("the validation labels and the validation store hold different "
                            "images: run 'primaps extract' again into a fresh folder")
    with ui.progress(len(ids), "evaluate") as bar:
        for sid, feats in store.iter_shards():
            for s in range(0, len(sid), batch):
                f = np.ascontiguousarray(feats[s:s + batch], dtype=np.float32)
                gt = labels[[row[i] for i in sid[s:s + batch]]]
                for name, (est, which) in models.items():
                    evs[name].update(est.predict(f, size, which=which), gt)
                if crf_rows:
                    imgs = images.read(sid[s:s + batch])
                    if imgs is None or imgs.shape[1:3] != tuple(size):
                        raise PipelineError("the validation images cannot be read at the "
                                            f"label size {tuple(size)}: set eval.crf=false")
                    for name in crf_rows:
                        est, which = models[name]
                        evs[f"{name}_crf"].update(
                            est.predict(f, size, which=which, images=imgs, crf=True), gt)
                bar.update(f.shape[0])
            del feats
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
                    raise PipelineError(f"{p}: {why}; run "
                                        f"'{ui.command('fit', cfg, '--restart')}' to train it "
                                        "again, or evaluate it with --checkpoint")
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


def _pictures(cfg: Config, folder: Path, em: PriMaPsEM, report: EvaluationReport,
              store: FeatureStore, ids: List[str], labels: np.ndarray, palette,
              ui: UI, images: Optional[ImageSource] = None,
              label: str = "PriMaPs-EM teacher") -> Dict[str, str]:
    from . import viz

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


# ---------------------------------------------------------------------- run


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
