"""Threads and versions of the native libraries."""

from __future__ import annotations

import re

import numpy as np

from . import _core
from ._version import __version__


def set_num_threads(n: int) -> None:
    """Set the number of threads the package uses.

    It sizes the package's OpenMP pool, which runs the C kernels (images in
    parallel) and oneDNN's primitives.  OpenBLAS is called only from inside
    that pool, one image per thread, so it is held at one thread: the package
    never runs more than `n` threads at once.  Results of mask proposals,
    pseudo labels and metrics do not depend on `n`.

    The default follows ``OMP_NUM_THREADS``, else the number of cores.
    """
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the package uses (see `set_num_threads`)."""
    return _core.get_num_threads()


def build_info() -> dict:
    """Versions and configuration of the libraries in use.

    Returns
    -------
    dict
        ``primaps``, ``numpy`` (runtime version), ``openblas`` (version),
        ``openblas_corename`` (the kernel family picked for this CPU),
        ``openblas_threads``, ``onednn`` (version), ``onednn_isa`` (the
        instruction set oneDNN dispatches to), ``onednn_runtime``,
        ``threads`` (the package's pool) and a few more details.
    """
    raw = _core.build_info()
    m = re.search(r"OpenBLAS\s+([0-9][0-9.]*)", raw["openblas_config"])
    return {
        "primaps": __version__,
        "numpy": np.__version__,
        "openblas": m.group(1) if m else "unknown",
        "openblas_corename": raw["openblas_corename"].strip(),
        "openblas_config": raw["openblas_config"].strip(),
        "openblas_threads": raw["openblas_threads"],
        "onednn": "%d.%d.%d" % raw["onednn_version"],
        "onednn_hash": raw["onednn_hash"],
        "onednn_isa": raw["onednn_isa"],
        "onednn_runtime": raw["onednn_runtime"],
        "openmp_version": raw["openmp_version"],
        "threads": raw["threads"],
    }
