"""Atomic file writes: a temp file in the same folder, fsync, rename, fsync
of the folder.  Every file the package writes goes through atomic_write."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

TMP_PREFIX = ".primaps-"


def fsync_dir(folder: PathLike) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be
    opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without folder fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse it
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike, suffix: str = ".tmp", prefix: str = TMP_PREFIX) -> Iterator[IO[bytes]]:
    """Open a binary temp file next to `path`; on a clean exit it is
    flushed, fsynced and renamed onto `path` (readable like a file made by
    open(), mode 0o644), and the folder is fsynced; otherwise it is removed.
    Readers never see a partial file, and a process killed at any point
    leaves either the old file or the new one (plus, at worst, a temp file
    named `prefix`... that the next writer may delete)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    except OSError as e:
        raise _named(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and not getattr(e, "_primaps_named", False):
            raise _named(e, path) from None
        raise
    fsync_dir(folder)


def _named(e: OSError, path: str) -> OSError:
    """The OSError `e` of writing `path`, naming `path` (not the temporary
    file): "cannot write PATH: No space left on device"."""
    out = type(e)(e.errno, f"cannot write {path}: {e.strerror or e}")
    out._primaps_named = True  # type: ignore[attr-defined]
    return out


def remove_temporaries(folder: PathLike, prefix: str = TMP_PREFIX) -> int:
    """Delete the temporary files a killed atomic_write left in `folder`
    (only safe for a writer holding the folder's lock); returns how many."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for e in entries:
        if e.name.startswith(prefix) and e.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
                n += 1
    if n:
        fsync_dir(folder)
    return n
