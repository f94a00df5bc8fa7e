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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
