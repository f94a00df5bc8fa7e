"""Shared pieces of the trainable estimators (PriMaPsEM, LinearProbe):
Adam, the EMA schedule, batches from arrays or iterables, and atomic
checkpoint files."""

from __future__ import annotations

import abc
import contextlib
import functools
import json
import math
import os
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Tuple

import numpy as np

from . import _core
from ._io import atomic_write
from ._layout import to_nchw

# ------------------------------------------------------------ arguments


def check_int(x: Any, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}")
    x = int(x)
    if x < lo or (hi is not None and x > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {rng}, got {x}")
    return x


def check_float(x: Any, name: str, positive: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x) or x < 0 or (positive and x == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                         f"got {x}")
    return x


class _NoBar:
    """What a progress bar that is off does: nothing."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


def tqdm_class():
    """tqdm.auto's widget bar in a notebook that has ipywidgets, else the
    text bar (tqdm.auto without ipywidgets only warns and falls back)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm.std import tqdm
        return tqdm
    from tqdm.auto import tqdm
    return tqdm


def progress_bar(total: int | None, desc: str, enabled: Any, unit: str = "it"):
    """A tqdm bar to stderr when `enabled` (and there is work: never a bar
    of total 0), else one that does nothing.  A string `enabled` names the
    bar: ``"name: desc"``."""
    if not enabled or total == 0:
        return _NoBar()
    if isinstance(enabled, str):
        desc = f"{enabled}: {desc}"
    return tqdm_class()(total=total, desc=desc, leave=False, dynamic_ncols=True, unit=unit)


def want_progress(progress: Any, verbose: Any) -> bool | str:
    """`progress`, or its older name `verbose` when that is given: False,
    True, or a non-empty string (bars named by it)."""
    p = progress if verbose is None else verbose
    if isinstance(p, str):
        return p or False
    return bool(p)


# ---------------------------------------------------------------- optimiser


class Adam:
    """Adam with beta = (0.9, 0.999), eps = 1e-8 and no weight decay, in
    float32, with the update of ``torch.optim.Adam``'s single-tensor path:

        m <- m + (1 - b1) (g - m)
        s <- b2 s + (1 - b2) g g
        p <- p - lr / (1 - b1^t) * m / (sqrt(s) / sqrt(1 - b2^t) + eps)

    Parameters are updated in place; `step` counts the updates made.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.step = 0
        self.m = {k: np.zeros_like(v, dtype=np.float32) for k, v in params.items()}
        self.s = {k: np.zeros_like(v, dtype=np.float32) for k, v in params.items()}

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        b1, b2 = self.betas
        self.step += 1
        bc1 = 1.0 - b1**self.step
        bc2 = 1.0 - b2**self.step
        step_size = np.float32(self.lr / bc1)
        bc2_sqrt = np.float32(math.sqrt(bc2))
        for name, p in params.items():
            g = np.asarray(grads[name], dtype=np.float32)
            m, s = self.m[name], self.s[name]
            m += np.float32(1.0 - b1) * (g - m)
            s *= np.float32(b2)
            s += np.float32(1.0 - b2) * g * g
            denom = np.sqrt(s) / bc2_sqrt + np.float32(self.eps)
            p -= step_size * (m / denom)

    def state_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {}
        for k in self.m:
            out[f"{prefix}m_{k}"] = self.m[k]
            out[f"{prefix}s_{k}"] = self.s[k]
        return out

    def load_arrays(self, prefix: str, arrays: dict[str, np.ndarray], step: int) -> None:
        for k in self.m:
            self.m[k] = np.array(arrays[f"{prefix}m_{k}"], dtype=np.float32)
            self.s[k] = np.array(arrays[f"{prefix}s_{k}"], dtype=np.float32)
        self.step = int(step)


def ema_decay(j: int, beta: float) -> float:
    """Decay of the j-th teacher update (j >= 1): the first two copy the
    student (0.0), then ``min(beta, 1 - 1/j)`` (2/3, 3/4, ...)."""
    if j < 1:
        raise ValueError(f"j must be >= 1, got {j}")
    if j <= 2:
        return 0.0
    return min(float(beta), 1.0 - 1.0 / j)


def ema_update(target: np.ndarray, source: np.ndarray, decay: float) -> None:
    """target <- decay target + (1 - decay) source, in place (as a lerp)."""
    target += np.float32(1.0 - decay) * (source - target)


# ------------------------------------------------------------------ batches


def is_array(x: Any) -> bool:
    """A NumPy array or an array-like with a shape (a torch tensor, ...)."""
    return isinstance(x, np.ndarray) or (hasattr(x, "shape") and hasattr(x, "__array__")
                                         and not isinstance(x, (tuple, list)))


def is_array_tuple(batches: Any) -> bool:
    """True for a tuple (features, maps[, student_features]) of whole arrays,
    False for an iterable of such tuples."""
    return (isinstance(batches, tuple) and 1 <= len(batches) <= 3
            and all(x is None or is_array(x) for x in batches))


def check_not_half_arrays(batches: Any, names: tuple) -> None:
    """A tuple whose first entry is an array is meant as whole arrays
    (features, maps[, student_features]): an entry of another kind is a
    TypeError naming it, not a misreading as an iterable of batches.  So is
    a list [features, maps] (a 4-D array, then a 3-D one or None)."""
    if (isinstance(batches, list) and 2 <= len(batches) <= 3 and is_array(batches[0])
            and np.ndim(batches[0]) == 4
            and (batches[1] is None or (is_array(batches[1]) and np.ndim(batches[1]) == 3))):
        raise TypeError(f"batches is a list [{', '.join(names[:len(batches)])}]: pass the "
                        f"arrays as a tuple ({', '.join(names[:len(batches)])}), or a list of "
                        "(features, maps) batch tuples")
    if not (isinstance(batches, tuple) and 2 <= len(batches) <= 3 and is_array(batches[0])):
        return
    for name, x in zip(names, batches):
        if x is not None and not is_array(x):
            raise TypeError(f"{name} must be an array, got {type(x).__name__} (batches is a "
                            f"tuple ({', '.join(names[:len(batches)])}) of arrays)")


Fmt = Tuple[Optional[str], Any]  # (layout, grid) of the features an estimator takes
NCHW: Fmt = (None, None)


def as_features(x: Any, name: str = "features", fmt: Fmt = NCHW) -> np.ndarray:
    """x as an array with 4 axes (n, C, h, w), or 3 (C, h, w) made (1, C, h, w),
    after the layout `fmt` = (layout, grid) of `primaps._layout.to_nchw`.
    A float32 C-contiguous array (or memmap) is returned as is: the kernels
    read batches out of it by index, without a copy."""
    if not is_array(x) and not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be an array of shape (n, C, h, w), got {type(x).__name__}")
    x = to_nchw(x, fmt[0], fmt[1], name)
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"{name} must have shape (n, C, h, w) or (C, h, w), got {a.shape}")
    return a


def _dense32(a: np.ndarray) -> bool:
    return a.dtype == np.float32 and a.flags.c_contiguous


def _gather(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows idx of a as a C-contiguous array the kernels read: float32, or
    float16 kept as it is (the kernels widen it exactly, in C)."""
    return np.ascontiguousarray(a[idx], dtype=np.float16 if a.dtype == np.float16
                                else np.float32)


class ArraySource:
    """Batches of an in-memory data set: whole arrays, reshuffled every
    epoch.  float32 C-contiguous features are passed with an index (no
    copy); others are gathered batch by batch (float16 stays float16 and
    is widened in C; other dtypes are converted to float32)."""

    def __init__(self, features: Any, maps: Any = None, student: Any = None, *,
                 maps_name: str = "masks", check_maps=None, fmt: Fmt = NCHW):
        self.features = as_features(features, fmt=fmt)
        n = self.features.shape[0]
        self.student = None
        if student is not None:
            self.student = as_features(student, "student_features", fmt)
            if self.student.shape != self.features.shape:
                raise ValueError(
                    f"student_features must have the shape of features {self.features.shape}, "
                    f"got {self.student.shape}")
        self.maps = None
        if maps is not None:
            m = check_maps(maps) if check_maps is not None else np.asarray(maps)
            if m.ndim == 2 and n == 1:
                m = m[None]
            if m.ndim != 3 or m.shape[0] != n:
                raise ValueError(
                    f"{maps_name} must have shape (n, H, W) with n = {n} images as in "
                    f"features, got {m.shape}")
            self.maps = m
        self.n = n

    def __len__(self) -> int:
        return self.n

    def n_batches(self, batch_size: int) -> int:
        return -(-self.n // batch_size)

    def epoch(self, rng: np.random.Generator, batch_size: int) -> Iterator[dict]:
        order = rng.permutation(self.n)
        for start in range(0, self.n, batch_size):
            idx = np.ascontiguousarray(order[start:start + batch_size], dtype=np.int64)
            yield self.batch(idx)

    def batch(self, idx: np.ndarray) -> dict:
        out = {"index": idx}
        if _dense32(self.features) and (self.student is None or _dense32(self.student)):
            out["features"], out["student"] = self.features, self.student
            out["maps"] = self.maps
        else:
            out["index"] = None
            out["features"] = _gather(self.features, idx)
            out["student"] = None if self.student is None else _gather(self.student, idx)
            out["maps"] = None if self.maps is None else self.maps[idx]
        return out


def iterable_epoch(batches: Iterable, need_maps: bool, what: str,
                   maps_optional: bool = False, fmt: Fmt = NCHW) -> Iterator[dict]:
    """Batches of an iterable of (features, maps[, student_features]).
    With `maps_optional`, a batch must still be such a tuple but its maps
    may be None."""
    for item in batches:
        if is_array(item):
            item = (item,)
        if not isinstance(item, (tuple, list)) or not 1 <= len(item) <= 3:
            raise TypeError(
                f"{what} must yield (features, {'masks' if need_maps else 'labels'}"
                f"[, student_features]) tuples, got {type(item).__name__}")
        if maps_optional and len(item) < 2:
            raise ValueError(f"{what} must yield (features, masks[, student_features]) "
                             "tuples (masks may be None), got a 1-tuple")
        if need_maps and not maps_optional and (len(item) < 2 or item[1] is None):
            raise ValueError(f"{what} must yield (features, maps[, student_features]); "
                             "a batch came without maps")
        feats = as_features(item[0], fmt=fmt)
        maps = item[1] if len(item) > 1 else None
        if maps is not None:
            maps = np.asarray(maps)
            if maps.ndim == 2:
                maps = maps[None]
        student = item[2] if len(item) > 2 else None
        if student is not None:
            student = as_features(student, "student_features", fmt)
        yield {"features": feats, "maps": maps, "student": student, "index": None}


def check_reiterable(batches: Any, passes: int, what: str) -> None:
    """A one-shot iterator cannot feed more than one pass."""
    if passes > 1 and iter(batches) is batches:
        raise TypeError(
            f"{what} is a one-shot iterator but {passes} passes over the data are "
            "needed; pass a list, a DataLoader or another re-iterable, or in-memory "
            "arrays")


# -------------------------------------------------------------- checkpoints

META_KEY = "meta.json"
# Limits on what a checkpoint may hold, checked before anything is read:
# a file that claims more is refused, not allocated.
MAX_CHECKPOINT_BYTES = 1 << 30  # the whole file
MAX_CHECKPOINT_ARRAYS = 64


def _crc(a: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(a).view(np.uint8)) & 0xFFFFFFFF:08x}"


# The CRC-32 of the metadata itself (all keys but this one, as sorted JSON):
# a hand-edited counter is refused like a flipped bit in an array.
META_CRC = "meta_crc32"


def _meta_crc(meta: dict) -> str:
    text = json.dumps({k: v for k, v in meta.items() if k != META_CRC}, sort_keys=True)
    return f"{zlib.crc32(text.encode('utf-8')) & 0xFFFFFFFF:08x}"


def write_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                     meta: dict) -> Path:
    """Write arrays and JSON metadata to one uncompressed .npz file
    atomically (atomic_write: temporary file, fsync, rename, fsync of the
    folder).  The metadata records the CRC-32 of every array."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    payload = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    meta = dict(meta, crc32={k: _crc(v) for k, v in payload.items()})
    meta[META_CRC] = _meta_crc(meta)
    payload[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_write(path, suffix=".npz") as f:
        np.savez(f, **payload)
    return path


def _check_members(fh, path: Path) -> None:
    """Refuse a checkpoint whose zip directory or .npy headers claim more
    than the file holds or than the limits allow, before reading arrays."""
    size = os.fstat(fh.fileno()).st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise ValueError(f"{path} is {size} bytes, more than a primaps checkpoint may hold "
                         f"({MAX_CHECKPOINT_BYTES})")
    try:
        with zipfile.ZipFile(fh) as z:
            infos = z.infolist()
            if len(infos) > MAX_CHECKPOINT_ARRAYS:
                raise ValueError(f"{path} holds {len(infos)} entries, more than a primaps "
                                 f"checkpoint may ({MAX_CHECKPOINT_ARRAYS})")
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                    raise ValueError(f"{path}: entry {info.filename} is compressed or larger "
                                     "than the file (not written by primaps)")
                with z.open(info) as m:
                    version = np.lib.format.read_magic(m)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f"{path}: entry {info.filename} has .npy format "
                                         f"version {version}")
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(m)
                    if dtype.hasobject:
                        raise ValueError(f"{path}: entry {info.filename} holds Python objects")
                    need = m.tell() + int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if need != info.file_size:
                        raise ValueError(f"{path}: entry {info.filename} claims shape {shape} "
                                         f"{dtype}, which its {info.file_size} bytes do not hold")
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable primaps checkpoint: {e}") from None
    finally:
        fh.seek(0)


def read_npz(path: str | os.PathLike, fmt: str, version: int) -> tuple[dict, dict]:
    """Arrays and metadata of a checkpoint written by write_npz_atomic, with a
    ValueError naming the file for anything that is not an intact checkpoint
    of format `fmt` (truncated, corrupt, oversized, another format).  Never
    unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as fh:
        _check_members(fh, path)
        try:
            with np.load(fh, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # zipfile, zlib, numpy format errors
            raise ValueError(f"{path} is not a readable primaps checkpoint: {e}") from None
    if META_KEY not in arrays:
        raise ValueError(f"{path} is not a primaps checkpoint (no {META_KEY} entry)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} holds corrupt metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} is not a {fmt} checkpoint (format {found!r})")
    v = meta.get("version")
    if not isinstance(v, int) or v < 1:
        raise ValueError(f"{path} has an invalid format version {v!r}")
    if v > version:
        raise ValueError(
            f"{path} was written in format version {v}; this primaps reads up to "
            f"version {version}: upgrade primaps")
    if META_CRC in meta or v >= 2:
        if meta.get(META_CRC) != _meta_crc(meta):
            raise ValueError(f"{path}: checksum mismatch in its metadata ({META_KEY}): the "
                             "checkpoint is corrupt or was edited by hand")
    crcs = meta.get("crc32")
    if crcs is not None:
        if not isinstance(crcs, dict) or set(crcs) != set(arrays):
            raise ValueError(f"{path}: the checksums do not list the arrays it holds "
                             "(a corrupt checkpoint)")
        for k, a in arrays.items():
            if crcs[k] != _crc(a):
                raise ValueError(f"{path}: checksum mismatch in {k!r}: the checkpoint is corrupt")
    return arrays, meta


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def rng_from_state(state: dict) -> np.random.Generator:
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name != "PCG64":
        raise ValueError(f"unsupported random generator state {name!r}")
    bg = np.random.PCG64()
    bg.state = state
    return np.random.Generator(bg)


_CREATE_LOCK = threading.Lock()


def exclusive(method):
    """Decorate a training method of a WorkspaceOwner: while one thread runs
    it (or another decorated method: `fit` calls `warmup`), a call from any
    other thread raises RuntimeError instead of interleaving updates."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._exclusive(method.__name__):
            return method(self, *args, **kwargs)
    return wrapper


class WorkspaceOwner(abc.ABC):
    """An estimator holding a workspace of the C kernels in ``_ws``: copies
    and pickles get a fresh workspace instead of the original's.  Its
    training methods (decorated with `exclusive`) are refused to a second
    thread while one thread trains it.  ``get_params`` / ``set_params``
    follow scikit-learn's protocol over the constructor's arguments
    (``_params()``)."""

    _TRANSIENT = ("_ws", "_train_lock", "_train_owner")

    @abc.abstractmethod
    def _params(self) -> dict:
        """The constructor's arguments, by name (every estimator defines it)."""

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments (scikit-learn's protocol)."""
        return dict(self._params())

    def set_params(self, **params: Any):
        """Set constructor arguments, checked as the constructor checks them
        (scikit-learn's protocol); returns the estimator."""
        known = self._params()
        unknown = [k for k in params if k not in known]
        if unknown:
            raise ValueError(f"{type(self).__name__} has no parameter {unknown[0]!r}; its "
                             f"parameters: {', '.join(known)}")
        checked = type(self)(**{**known, **params})
        with self._exclusive("set_params"):
            for k in params:
                setattr(self, k, getattr(checked, k))
        return self

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        lock = self.__dict__.get("_train_lock")
        if lock is None:
            with _CREATE_LOCK:
                lock = self.__dict__.setdefault("_train_lock", threading.Lock())
        me = threading.get_ident()
        if self.__dict__.get("_train_owner") == me:  # nested: fit -> warmup
            yield
            return
        if not lock.acquire(blocking=False):
            raise RuntimeError(
                f"{type(self).__name__}.{what}: this estimator is being trained by another "
                f"thread; train one estimator per thread (copy.deepcopy(estimator) gives an "
                f"independent one)")
        self._train_owner = me
        try:
            yield
        finally:
            self._train_owner = None
            lock.release()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in self._TRANSIENT:  # the C workspace and the lock: recreated, not copied
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._ws = _core.em_workspace()
