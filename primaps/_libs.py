"""Locating the native libraries of the compiled core.

The extension carries RUNPATH entries relative to its own location, which
cover installs into a venv, ``--user`` and system site-packages.  For other
layouts (an editable install, a relocated tree) the libraries are loaded
here by absolute path before the extension is imported; the dynamic loader
then resolves the extension's dependencies to them by their SONAME.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
from pathlib import Path

_DISTS = (
    ("scipy-openblas32", "lib/libscipy_openblas.so"),
    ("onednn-cpu-gomp", "libdnnl.so.3"),
)


def _dist_file(dist: str, suffix: str) -> Path | None:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        # RECORD paths of data files are relative to site-packages, e.g.
        # "../../libdnnl.so.3", so compare whole trailing components.
        if ("/" + str(f).replace("\\", "/")).endswith("/" + suffix):
            return Path(f.locate()).resolve()
    return None


def preload() -> list[str]:
    """Load OpenBLAS and oneDNN by absolute path; return the paths loaded."""
    loaded = []
    for dist, suffix in _DISTS:
        path = _dist_file(dist, suffix)
        if path is not None and path.exists():
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            loaded.append(str(path))
    return loaded
