"""A feature store on disk: sharded ``.npy`` files plus a JSON index.

Layout of a store folder::

    index.json            what is in the store (the only source of truth)
    features-000000.npy   one shard per append(): (n, C, h, w) float16/float32
    masks-000000.npy      one shard per write_masks(): (n, H, W) uint8/uint16/int32
    .lock                 held (flock) by the one process that may write

Every shard is written atomically: a temporary file in the same folder,
fsync, rename, fsync of the folder; only then is the index rewritten the same
way.  A shard that the index does not list is never read, so a run killed at
any point leaves a store that opens with everything appended before; the
next writer deletes the leftovers.  The index records each shard's size and
CRC-32: a truncated shard is reported when the store opens, a corrupt one
when it is first read (or by :meth:`FeatureStore.verify`), with the file name.

Training streams the store in bounded memory (:meth:`FeatureStore.batches`):
a window of shards is memory-mapped, its rows shuffled and copied into
batches, then the window is unmapped; shard order is shuffled too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._io import atomic_write, fsync_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["FeatureStore", "FeatureStoreError"]

FORMAT = "primaps-feature-store"
VERSION = 1
INDEX = "index.json"
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
FEATURE_DTYPES = ("float16", "float32")
SHARD_RE = re.compile(r"^(features|masks)-(\d{6,})\.npy$")
CHUNK = 1 << 24  # bytes per CRC / write step
# The index is small (ids and a few numbers per shard: ~2 MB for 50k
# images); a larger one is not read.
MAX_INDEX_BYTES = 256 << 20

PathLike = Union[str, "os.PathLike[str]"]


class FeatureStoreError(OSError):
    """A store file is missing, truncated or corrupt; ``.path`` names it."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


# ---------------------------------------------------------------- file helpers


def _write_atomic(folder: Path, name: str, write) -> Tuple[int, str]:
    """Write a file through `write(f) -> crc` with atomic_write (temporary
    file, fsync, rename, fsync of the folder).  Returns (size in bytes,
    crc32 hex)."""
    with atomic_write(folder / name, prefix=TMP_PREFIX) as f:
        crc = write(f)
        size = f.tell()
    return size, f"{crc & 0xFFFFFFFF:08x}"


def _npy_writer(array: np.ndarray):
    """A `write(f)` for _write_atomic: the .npy header, then the rows."""

    def write(f) -> int:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
        head = header.getvalue()
        f.write(head)
        crc = zlib.crc32(head)
        flat = array.reshape(-1).view(np.uint8)
        for start in range(0, flat.size, CHUNK):
            chunk = flat[start : start + CHUNK]
            f.write(chunk.data)
            crc = zlib.crc32(chunk, crc)
        return crc

    return write


def _json_writer(obj: Any):
    data = json.dumps(obj, separators=(",", ":")).encode("utf-8")

    def write(f) -> int:
        f.write(data)
        return zlib.crc32(data)

    return write


def _read_header(f, path: Path) -> Tuple[tuple, bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as exc:
        raise FeatureStoreError(path, f"not a valid .npy shard ({exc})") from exc


def _check_payload(path: Path, shape, dtype: np.dtype, head_len: int, entry: Mapping[str, Any]) -> None:
    """The shape a header (and the index) claims must be what the file's
    bytes hold: checked before anything of that size is allocated."""
    need = head_len + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need != entry["bytes"]:
        raise FeatureStoreError(
            path, f"shape {tuple(shape)} {dtype} needs {need} bytes, the shard has {entry['bytes']}"
        )


def _crc_of_file(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            crc = zlib.crc32(block, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}


def _all_finite(data: np.ndarray) -> bool:
    """No NaN or inf in a float16 / float32 array: the exponent bits are not
    all ones.  On the integer view, in chunks (np.isfinite on float16 is
    several times slower)."""
    itype, mask = _EXPONENT[data.dtype]
    bits = data.reshape(-1).view(itype)
    tmp = np.empty(min(bits.size, CHUNK // bits.itemsize), dtype=itype)
    for start in range(0, bits.size, tmp.size):
        part = tmp[: min(tmp.size, bits.size - start)]
        np.bitwise_and(bits[start : start + part.size], mask, out=part)
        if part.max() == mask:
            return False
    return True


def _mask_dtype(masks: np.ndarray) -> np.dtype:
    """The smallest of uint8 / uint16 / int32 that holds every value."""
    if masks.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(masks.min()), int(masks.max())
    if lo >= 0 and hi <= 0xFF:
        return np.dtype(np.uint8)
    if lo >= 0 and hi <= 0xFFFF:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _check_ids(ids: Sequence[str], n: int, name: str = "ids") -> List[str]:
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of strings, got a single {type(ids).__name__}")
    ids = list(ids)
    for i in ids:
        if not isinstance(i, str):
            raise TypeError(f"{name} must hold strings, got {type(i).__name__} {i!r}")
    if len(ids) != n:
        raise ValueError(f"{name} holds {len(ids)} ids for {n} arrays")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{name} holds {dup!r} more than once")
    return ids


def _numeric_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}") from exc
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return arr


# ----------------------------------------------------------------------- store


class FeatureStore:
    """Dense features of many images on disk, with pseudo labels beside them.

    Parameters
    ----------
    path : path
        The store folder; created (with its parents) when it does not exist
        and `mode` is ``"a"``.
    mode : {"a", "r"}
        ``"a"``: open for appending (one writing process at a time, enforced
        with a lock), creating the store if needed; ``"r"``: read only.
    dtype : {"float16", "float32"}, optional
        Dtype of the features on disk; ``float16`` for a new store.  For an
        existing store it must match (None accepts what is there).
    backbone : str, optional
        Name of the backbone the features come from (e.g. ``"dino_vits8"``).
    protocol : dict or Protocol, optional
        How the images were prepared (e.g. ``Protocol(320, 320)`` plus flip
        averaging).  Recorded in the index; for an existing store, a value
        that differs from the recorded one is an error.
    verify : bool
        Check each shard's CRC-32 the first time it is read (a full read of
        the shard).  Sizes are always checked when the store opens.

    Notes
    -----
    Appending is resumable: after an interrupted run, open the store again
    and skip the ids already in it (``id in store``).
    """

    def __init__(
        self,
        path: PathLike,
        mode: str = "a",
        dtype: Optional[str] = None,
        backbone: Optional[str] = None,
        protocol: Any = None,
        verify: bool = True,
    ) -> None:
        if mode not in ("a", "r"):
            raise ValueError(f"mode must be 'a' or 'r', got {mode!r}")
        if dtype is not None:
            dtype = np.dtype(dtype).name
            if dtype not in FEATURE_DTYPES:
                raise ValueError(f"dtype must be float16 or float32, got {dtype}")
        if protocol is not None and hasattr(protocol, "as_dict"):
            protocol = protocol.as_dict()
        self.path = Path(path)
        self.mode = mode
        self.verify_reads = bool(verify)
        self._lock_fd: Optional[int] = None
        self._verified: set = set()
        if mode == "a":
            self.path.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
        index_path = self.path / INDEX
        if not index_path.exists():
            if mode == "r":
                raise FileNotFoundError(f"no feature store at {self.path}: {index_path} does not exist")
            self._check_empty_folder()
            self._index = {
                "format": FORMAT,
                "version": VERSION,
                "dtype": dtype or "float16",
                "item_shape": None,
                "backbone": backbone,
                "protocol": protocol,
                "shards": [],
                "mask_shards": [],
            }
            self._write_index()
        else:
            self._index = self._read_index()
            self._reconcile(dtype, backbone, protocol)
        self._check_shard_files()
        if mode == "a":
            self._remove_leftovers()
        self._build_lookup()

    # ------------------------------------------------------------ open/close

    def _acquire_lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(
                f"another process is writing to the feature store {self.path}; "
                "open it with mode='r' to read"
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        """Release the writer's lock (reading still works)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __getstate__(self) -> Dict[str, Any]:
        # A copy in another process (a DataLoader worker) is a reader.
        state = self.__dict__.copy()
        state["_lock_fd"] = None
        state["mode"] = "r"
        return state

    def _check_empty_folder(self) -> None:
        other = [
            p.name for p in self.path.iterdir() if p.name != LOCK and not p.name.startswith(TMP_PREFIX)
        ]
        if other:
            raise FileNotFoundError(
                f"{self.path} is not a feature store: it holds {', '.join(sorted(other)[:3])} "
                f"but no {INDEX}"
            )

    def _read_index(self) -> Dict[str, Any]:
        index_path = self.path / INDEX
        try:
            size = index_path.stat().st_size
            if size > MAX_INDEX_BYTES:
                raise ValueError(f"{size} bytes, more than an index may hold ({MAX_INDEX_BYTES})")
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FeatureStoreError(index_path, f"cannot read the index ({exc})") from exc
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise FeatureStoreError(index_path, f"not the index of a {FORMAT}")
        if index.get("version") != VERSION:
            raise FeatureStoreError(
                index_path, f"format version {index.get('version')} (this primaps reads {VERSION})"
            )
        for key in ("dtype", "item_shape", "shards", "mask_shards"):
            if key not in index:
                raise FeatureStoreError(index_path, f"the index has no {key!r}")
        return index

    def _reconcile(self, dtype: Optional[str], backbone: Optional[str], protocol: Any) -> None:
        index = self._index
        if dtype is not None and dtype != index["dtype"]:
            raise ValueError(f"dtype={dtype} but the store at {self.path} holds {index['dtype']}")
        changed = False
        for key, value in (("backbone", backbone), ("protocol", protocol)):
            if value is None:
                continue
            if index.get(key) is None:
                index[key] = value
                changed = True
            elif json.loads(json.dumps(value)) != index[key]:
                raise ValueError(
                    f"{key}={value!r} but the store at {self.path} was written with {index[key]!r}"
                )
        if changed:
            if self.mode == "r":
                raise ValueError("cannot record backbone/protocol in a store opened with mode='r'")
            self._write_index()

    def _check_shard_files(self) -> None:
        for entry in self._index["shards"] + self._index["mask_shards"]:
            path = self.path / entry["file"]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise FeatureStoreError(path, "listed in the index but missing") from None
            if size != entry["bytes"]:
                raise FeatureStoreError(
                    path,
                    f"{size} bytes, the index says {entry['bytes']}: the shard is truncated or corrupt",
                )

    def _remove_leftovers(self) -> None:
        """Delete temporary files and shards the index does not list (what an
        interrupted writer left behind)."""
        listed = {e["file"] for e in self._index["shards"] + self._index["mask_shards"]}
        for p in self.path.iterdir():
            if p.name.startswith(TMP_PREFIX) or (SHARD_RE.match(p.name) and p.name not in listed):
                p.unlink()
        fsync_dir(self.path)

    def _build_lookup(self) -> None:
        self._where: Dict[str, Tuple[int, int]] = {}
        for k, entry in enumerate(self._index["shards"]):
            for row, i in enumerate(entry["ids"]):
                self._where[i] = (k, row)
        self._mask_where: Dict[str, Tuple[int, int]] = {}
        for k, entry in enumerate(self._index["mask_shards"]):
            for row, i in enumerate(entry["ids"]):
                self._mask_where[i] = (k, row)  # a later shard supersedes

    def _write_index(self) -> None:
        _write_atomic(self.path, INDEX, _json_writer(self._index))

    def _next_name(self, kind: str) -> str:
        numbers = [
            int(m.group(2))
            for e in self._index["shards"] + self._index["mask_shards"]
            if (m := SHARD_RE.match(e["file"])) and m.group(1) == kind
        ]
        return f"{kind}-{max(numbers, default=-1) + 1:06d}.npy"

    def _require_writer(self) -> None:
        if self.mode != "a":
            raise ValueError(f"the feature store {self.path} is open read-only (mode='r')")

    # ------------------------------------------------------------ properties

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the features on disk."""
        return np.dtype(self._index["dtype"])

    @property
    def item_shape(self) -> Optional[Tuple[int, ...]]:
        """``(C, h, w)`` of one image's features (None while empty)."""
        shape = self._index["item_shape"]
        return None if shape is None else tuple(shape)

    @property
    def backbone(self) -> Optional[str]:
        return self._index.get("backbone")

    @property
    def protocol(self) -> Optional[dict]:
        return self._index.get("protocol")

    @property
    def ids(self) -> List[str]:
        """Image ids in store order."""
        return [i for e in self._index["shards"] for i in e["ids"]]

    @property
    def n_shards(self) -> int:
        return len(self._index["shards"])

    @property
    def mask_ids(self) -> List[str]:
        """Ids of the images that have pseudo labels."""
        return list(self._mask_where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._where

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, mode={self.mode!r}): {len(self)} images "
            f"of shape {self.item_shape} {self._index['dtype']} in {self.n_shards} shards, "
            f"backbone={self.backbone!r}, {len(self._mask_where)} with pseudo labels"
        )

    def refresh(self) -> None:
        """Re-read the index (for a reader while another process appends)."""
        self._index = self._read_index()
        self._check_shard_files()
        self._build_lookup()

    # --------------------------------------------------------------- writing

    def append(self, ids: Sequence[str], features: Any, layout: Optional[str] = None,
               grid: Any = None) -> None:
        """Add one shard: the features of the images `ids`.

        Parameters
        ----------
        ids : sequence of str
            One new, unique id per image.
        features : array_like of shape (n, C, h, w)
            Any real dtype; stored as the store's dtype.  Non-finite values
            (including float16 overflow) are an error.
        layout, grid :
            Other layouts of `features` (channels-last maps, ViT tokens), as
            in :func:`primaps.masks`; the store holds (n, C, h, w).

        Notes
        -----
        Each call writes one shard file, atomically; aim for shards of a few
        hundred MB (e.g. 100-500 images of DINO ViT-S/8 features in float16).
        """
        self._require_writer()
        from ._layout import to_nchw

        if layout == "tokens" and np.ndim(features) == 2:
            raise ValueError("features with layout='tokens' must have shape (n, N, C)")
        arr = _numeric_array(to_nchw(features, layout, grid, ndims=(4,)), "features")
        if arr.ndim != 4 or arr.shape[0] == 0:
            raise ValueError(f"features must have shape (n, C, h, w) with n >= 1, got {arr.shape}")
        ids = _check_ids(ids, arr.shape[0])
        if self.item_shape is not None and arr.shape[1:] != self.item_shape:
            raise ValueError(
                f"features must have shape (n, {', '.join(map(str, self.item_shape))}) like the "
                f"rest of the store, got {arr.shape}"
            )
        present = [i for i in ids if i in self._where]
        if present:
            raise ValueError(f"ids already in the store: {', '.join(map(repr, present[:3]))}")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            data = np.ascontiguousarray(arr, dtype=self.dtype)
        if not _all_finite(data):
            what = "NaN or inf" if not np.isfinite(arr).all() else f"values too large for {self.dtype}"
            raise ValueError(f"features hold {what}")
        self._commit("features", ids, data)

    def write_masks(self, ids: Sequence[str], masks: Any, tag: Optional[str] = None) -> None:
        """Store pseudo labels (PriMaPs mask maps) beside the features.

        Parameters
        ----------
        ids : sequence of str
            Ids of images in the store.  Writing masks for an id again
            supersedes the earlier ones.
        masks : array_like of integers, shape (n, H, W)
            Stored in the smallest of uint8 / uint16 / int32 that holds them;
            :meth:`read_masks` returns int32.
        tag : str, optional
            What the masks were made with (the command line records the
            fingerprint of the mask config); :meth:`mask_tag` returns it.
        """
        if tag is not None and not isinstance(tag, str):
            raise TypeError(f"tag must be a str or None, got {type(tag).__name__}")
        self._require_writer()
        arr = _numeric_array(masks, "masks")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"masks must be an integer array, got dtype {arr.dtype}")
        if arr.ndim != 3 or arr.shape[0] == 0:
            raise ValueError(f"masks must have shape (n, H, W) with n >= 1, got {arr.shape}")
        if arr.size and (int(arr.min()) < np.iinfo(np.int32).min or int(arr.max()) > np.iinfo(np.int32).max):
            raise ValueError("masks hold values outside the int32 range")
        ids = _check_ids(ids, arr.shape[0])
        unknown = [i for i in ids if i not in self._where]
        if unknown:
            raise ValueError(f"ids not in the store: {', '.join(map(repr, unknown[:3]))}")
        data = np.ascontiguousarray(arr, dtype=_mask_dtype(arr))
        self._commit("masks", ids, data, tag)

    def _commit(self, kind: str, ids: List[str], data: np.ndarray, tag: Optional[str] = None) -> None:
        """Write `data` as the next shard of `kind`, then the index listing it."""
        key, where = ("shards", self._where) if kind == "features" else ("mask_shards", self._mask_where)
        name = self._next_name(kind)
        size, crc = _write_atomic(self.path, name, _npy_writer(data))
        entry = {"file": name, "ids": ids, "shape": list(data.shape), "bytes": size, "crc32": crc}
        if tag is not None:
            entry["tag"] = tag
        first = kind == "features" and self._index["item_shape"] is None
        self._index[key].append(entry)
        if first:
            self._index["item_shape"] = list(data.shape[1:])
        try:
            self._write_index()
        except BaseException:  # the index on disk still is the old one
            self._index[key].pop()
            if first:
                self._index["item_shape"] = None
            raise
        self._verified.add(name)
        k = len(self._index[key]) - 1
        for row, i in enumerate(ids):
            where[i] = (k, row)

    def prune_masks(self) -> int:
        """Remove the mask shards whose every image has newer masks in a
        later shard (what rewriting the masks with another config leaves
        behind); returns how many shards were removed.  The index is
        rewritten first, then the files are deleted: a crash in between
        leaves unlisted files that the next writer removes."""
        self._require_writer()
        used = {k for k, _ in self._mask_where.values()}
        shards = self._index["mask_shards"]
        dropped = [e["file"] for k, e in enumerate(shards) if k not in used]
        if not dropped:
            return 0
        self._index["mask_shards"] = [e for k, e in enumerate(shards) if k in used]
        try:
            self._write_index()
        except BaseException:
            self._index["mask_shards"] = shards
            raise
        self._build_lookup()
        for name in dropped:
            try:
                (self.path / name).unlink()
            except FileNotFoundError:  # pragma: no cover - removed by hand
                pass
        fsync_dir(self.path)
        return len(dropped)

    def fingerprint(self) -> str:
        """A SHA-256 (hex) of what the features are: dtype, shape, backbone,
        protocol and every shard's file, ids and CRC-32, in store order.
        Equal fingerprints mean the same features in the same order."""
        idx = self._index
        desc = {"dtype": idx["dtype"], "item_shape": idx["item_shape"],
                "backbone": idx.get("backbone"), "protocol": idx.get("protocol"),
                "shards": [[e["file"], e["crc32"], e["ids"]] for e in idx["shards"]]}
        text = json.dumps(desc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # --------------------------------------------------------------- reading

    def mask_tag(self, image_id: str) -> Optional[str]:
        """The `tag` the current masks of `image_id` were written with (None
        for masks written without one)."""
        try:
            k, _ = self._mask_where[image_id]
        except (KeyError, TypeError):
            raise KeyError(f"no pseudo labels for {image_id!r} in the feature store {self.path}") from None
        return self._index["mask_shards"][k].get("tag")

    def _open_shard(self, entry: Mapping[str, Any]) -> np.ndarray:
        """A read-only memory map of a shard, its CRC checked on first use."""
        path = self.path / entry["file"]
        if self.verify_reads and entry["file"] not in self._verified:
            if _crc_of_file(path) != entry["crc32"]:
                raise FeatureStoreError(path, "checksum mismatch: the shard is corrupt")
            self._verified.add(entry["file"])
        try:
            with open(path, "rb") as f:
                shape, fortran, dtype = _read_header(f, path)
                if fortran or dtype.hasobject:
                    raise ValueError("not a C-ordered numeric array")
                _check_payload(path, shape, dtype, f.tell(), entry)
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FeatureStoreError(path, f"cannot read the shard ({exc})") from exc
        if list(mm.shape) != list(entry["shape"]):
            raise FeatureStoreError(path, f"the shard holds shape {mm.shape}, the index says {entry['shape']}")
        return mm

    def shard(self, k: int) -> Tuple[List[str], np.ndarray]:
        """Ids and a read-only memory map ``(n, C, h, w)`` of shard `k`."""
        entry = self._index["shards"][k]
        return list(entry["ids"]), self._open_shard(entry)

    def iter_shards(self) -> Iterator[Tuple[List[str], np.ndarray]]:
        """``(ids, features)`` per shard, memory-mapped, in store order (e.g.
        to compute pseudo labels shard by shard)."""
        for k in range(self.n_shards):
            yield self.shard(k)

    def __getitem__(self, image_id: str) -> np.ndarray:
        """The ``(C, h, w)`` features of one image (a copy, store dtype)."""
        try:
            k, row = self._where[image_id]
        except (KeyError, TypeError):
            raise KeyError(f"no image {image_id!r} in the feature store {self.path}") from None
        return np.array(self._open_shard(self._index["shards"][k])[row])

    def read(self, ids: Sequence[str]) -> np.ndarray:
        """The features of `ids` stacked as ``(n, C, h, w)`` (store dtype)."""
        return np.stack([self[i] for i in ids]) if len(ids) else np.empty((0,) + (self.item_shape or ()))

    def read_masks(self, image_id: str) -> np.ndarray:
        """The ``(H, W)`` int32 pseudo labels stored for one image."""
        try:
            k, row = self._mask_where[image_id]
        except (KeyError, TypeError):
            raise KeyError(f"no pseudo labels for {image_id!r} in the feature store {self.path}") from None
        return np.array(self._open_shard(self._index["mask_shards"][k])[row], dtype=np.int32)

    def verify(self) -> int:
        """Check the CRC-32 of every shard; returns the number checked.

        Raises :class:`FeatureStoreError` naming the first corrupt shard.
        """
        entries = self._index["shards"] + self._index["mask_shards"]
        for entry in entries:
            path = self.path / entry["file"]
            if _crc_of_file(path) != entry["crc32"]:
                raise FeatureStoreError(path, "checksum mismatch: the shard is corrupt")
            self._verified.add(entry["file"])
        return len(entries)

    # ------------------------------------------------------------- streaming

    def batches(
        self,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: Optional[int] = None,
        *,
        masks: bool = False,
        drop_last: bool = False,
        dtype: Any = np.float32,
        max_memory: int = 512 << 20,
    ) -> Iterator[tuple]:
        """Stream the store in batches with bounded memory.

        Shards are memory-mapped a window at a time (as many whole shards
        as fit in `max_memory`, at least one; each checked against its CRC
        on first use), the window's rows shuffled and copied into batches,
        and the window unmapped before the next is mapped.  With
        `shuffle`, the shard order is a random permutation too.  Peak memory
        is about ``max_memory`` (or one shard, if larger) plus two batches.

        Parameters
        ----------
        batch_size : int
        shuffle : bool
            Random shard order and random rows within each window.
        seed : int, optional
            Seed of the shuffling (use e.g. ``seed + epoch`` per epoch).
        masks : bool
            Also yield the stored pseudo labels (int32, ``(B, H, W)``); every
            image must have them.
        drop_last : bool
            Drop the final batch if it is smaller than `batch_size`.
        dtype : dtype
            Dtype of the yielded features (float32; None: the store's dtype).
        max_memory : int
            Bytes of shards held in memory at once.

        Yields
        ------
        ids : list of str
        features : ndarray of shape (B, C, h, w)
        masks : ndarray of shape (B, H, W), int32 (only with ``masks=True``)
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if masks:
            lacking = [i for i in self._where if i not in self._mask_where]
            if lacking:
                raise ValueError(
                    f"masks=True but {len(lacking)} images have no pseudo labels, e.g. {lacking[0]!r}"
                )
        if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) or max_memory < 1:
            raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
        out_dtype = self.dtype if dtype is None else np.dtype(dtype)
        if out_dtype.kind != "f":
            raise ValueError(f"dtype must be a floating-point dtype, got {out_dtype}")
        return self._stream(int(batch_size), shuffle, seed, masks, drop_last, out_dtype, int(max_memory))

    def _stream(self, batch_size, shuffle, seed, masks, drop_last, out_dtype, max_memory) -> Iterator[tuple]:
        rng = np.random.default_rng(seed)
        shards = self._index["shards"]
        order = rng.permutation(len(shards)) if shuffle else np.arange(len(shards))
        carry_ids: List[str] = []
        carry: Optional[np.ndarray] = None
        for window in self._windows(order, max_memory):
            # memory maps (checked on first use): rows are copied once, into the batch
            arrays = [self._open_shard(shards[k]) for k in window]
            rows = [(a, r) for a in range(len(window)) for r in range(arrays[a].shape[0])]
            if shuffle:
                rows = [rows[j] for j in rng.permutation(len(rows))]
            if carry is not None:
                rows = [(-1, r) for r in range(carry.shape[0])] + rows
            ids_of = [shards[k]["ids"] for k in window]
            n_full = len(rows) // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                sel = rows[start : start + batch_size]
                yield self._gather(sel, arrays, carry, carry_ids, ids_of, out_dtype, masks)
            rest = rows[n_full:]
            carry_ids = [carry_ids[r] if a < 0 else ids_of[a][r] for a, r in rest]
            carry = np.stack([carry[r] if a < 0 else arrays[a][r] for a, r in rest]) if rest else None
            del arrays
        if carry is not None and not drop_last:
            sel = [(-1, r) for r in range(carry.shape[0])]
            yield self._gather(sel, [], carry, carry_ids, [], out_dtype, masks)

    def _windows(self, order: np.ndarray, max_memory: int) -> Iterator[List[int]]:
        shards = self._index["shards"]
        window: List[int] = []
        used = 0
        for k in order:
            size = shards[k]["bytes"]
            if window and used + size > max_memory:
                yield window
                window, used = [], 0
            window.append(int(k))
            used += size
        if window:
            yield window

    def _gather(self, sel, arrays, carry, carry_ids, ids_of, out_dtype, masks) -> tuple:
        first = carry if sel[0][0] < 0 else arrays[sel[0][0]]
        feats = np.empty((len(sel),) + first.shape[1:], dtype=out_dtype)
        ids = []
        for j, (a, r) in enumerate(sel):
            if a < 0:
                feats[j] = carry[r]
                ids.append(carry_ids[r])
            else:
                feats[j] = arrays[a][r]
                ids.append(ids_of[a][r])
        if not masks:
            return ids, feats
        return ids, feats, self._read_mask_batch(ids)

    def _read_mask_batch(self, ids: List[str]) -> np.ndarray:
        by_shard: Dict[int, List[Tuple[int, int]]] = {}
        for j, i in enumerate(ids):
            k, row = self._mask_where[i]
            by_shard.setdefault(k, []).append((j, row))
        out: Optional[np.ndarray] = None
        for k, pairs in by_shard.items():
            entry = self._index["mask_shards"][k]
            mm = self._open_shard(entry)
            if out is None:
                out = np.empty((len(ids),) + mm.shape[1:], dtype=np.int32)
            elif mm.shape[1:] != out.shape[1:]:
                raise ValueError(
                    f"pseudo labels of one batch differ in size: {out.shape[1:]} and {mm.shape[1:]} "
                    f"({self.path / entry['file']})"
                )
            for j, row in pairs:
                out[j] = mm[row]
            del mm  # unmap
        assert out is not None
        return out
