"""The run folder: its file names, its lock, and the small files the
stages write into it (JSON outputs with checksums, label files, the run's
config and build info), all written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .._io import atomic_write, remove_temporaries
from .._runtime import build_info
from ..config import Config, dumps
from ..features import FeatureStore
from .ui import UI, PipelineError


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


LOCK = ".lock"


_HELD: Dict[str, List[Any]] = {}  # run folder -> [fd, depth] held by this process


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Hold the run folder's lock: one writing process at a time (a second
    one gets a PipelineError naming the holder's pid); re-entrant within a
    process.  The first holder removes the temporary files a killed write
    left behind; a folder it created is removed again if the stage fails
    before writing anything into it."""
    folder = Path(folder)
    created = []  # the folders made here, innermost first
    for q in [folder, *folder.parents]:
        if q.exists():
            break
        created.append(q)
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
    except BaseException:
        if created and [q.name for q in folder.iterdir()] == [LOCK]:
            # nothing was written: no empty run folder (or parents) is left
            (folder / LOCK).unlink()
            for q in created:
                try:
                    q.rmdir()
                except OSError:  # another process put something there
                    break
        raise
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
