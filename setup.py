"""Build of the compiled core ``primaps._core``.

The native libraries come from PyPI wheels declared in pyproject.toml:

- OpenBLAS from ``scipy-openblas32`` (symbols carry a ``scipy_`` prefix);
- oneDNN v3 from ``onednn-cpu-gomp`` (the library, GNU OpenMP runtime) and
  ``onednn-devel-cpu-gomp`` (the headers).  Both install under the
  environment's prefix (``<prefix>/lib``, ``<prefix>/include``).

The extension finds them at run time through RUNPATH entries relative to its
own location (``$ORIGIN``), so it works in any venv without LD_LIBRARY_PATH;
``primaps/_libs.py`` preloads them by absolute path as a fallback.

Build switches (environment variables):

- ``PRIMAPS_SANITIZE=1``: AddressSanitizer + UndefinedBehaviorSanitizer;
- ``PRIMAPS_DEBUG=1``: -O0 -g;
- ``PRIMAPS_NATIVE=1``: -march=native (only for a build used on this CPU).
"""

import importlib.metadata
import os
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent

# The kernels (csrc/*.c) and the binding files (csrc/bind/*.c), which alone
# talk to Python.
SOURCES = sorted(str(p.relative_to(HERE)) for p in (HERE / "csrc").glob("*.c")) + sorted(
    str(p.relative_to(HERE)) for p in (HERE / "csrc" / "bind").glob("*.c"))

WARNINGS = [
    "-Wall",
    "-Wextra",
    "-Wshadow",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
]


def _dist_file(dist, suffix):
    """Absolute path of the file of installed distribution `dist` ending in
    `suffix`, or None."""
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


def native_config():
    """Include dirs, library dirs and libraries of OpenBLAS and oneDNN."""
    import scipy_openblas32

    blas_inc = scipy_openblas32.get_include_dir()
    blas_lib = scipy_openblas32.get_lib_dir()
    dnnl_h = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.h")
    dnnl_so = _dist_file("onednn-cpu-gomp", "libdnnl.so.3")
    root = os.environ.get("PRIMAPS_ONEDNN_ROOT")
    if root:
        dnnl_h = Path(root) / "include/oneapi/dnnl/dnnl.h"
        dnnl_so = Path(root) / "lib/libdnnl.so.3"
    if dnnl_h is None or dnnl_so is None or not dnnl_so.exists():
        sys.exit(
            "primaps: oneDNN was not found. Install the build requirements "
            "('pip install onednn-cpu-gomp==2023.2.0 "
            "onednn-devel-cpu-gomp==2023.2.0') or set PRIMAPS_ONEDNN_ROOT."
        )
    return {
        "include_dirs": [blas_inc, str(dnnl_h.parents[2])],
        "library_dirs": [blas_lib, str(dnnl_so.parent)],
        "libraries": [scipy_openblas32.get_library(), "dnnl"],
        "dnnl_so": dnnl_so,
    }


def compile_flags():
    """Compiler and linker flags for the switches in the environment."""
    cflags = ["-std=c99", "-fopenmp", "-fvisibility=hidden", "-ffp-contract=off"]
    ldflags = ["-fopenmp"]
    if os.environ.get("PRIMAPS_DEBUG") == "1":
        cflags += ["-O0", "-g"]
    else:
        cflags += ["-O3"]
    if os.environ.get("PRIMAPS_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
               "-fno-sanitize-recover=undefined"]
        cflags += san + ["-g"]
        ldflags += san
    if os.environ.get("PRIMAPS_NATIVE") == "1":
        cflags += ["-march=native"]
    return cflags + WARNINGS, ldflags


def _link_ready(dnnl_so):
    """libdnnl.so (the link-time name) may be missing where only the
    versioned library is installed; link against the versioned file then."""
    unversioned = dnnl_so.parent / "libdnnl.so"
    return [] if unversioned.exists() else [str(dnnl_so)]


def extension():
    import numpy as np

    cfg = native_config()
    cflags, ldflags = compile_flags()
    libraries = cfg["libraries"]
    extra_objects = _link_ready(cfg["dnnl_so"])
    if extra_objects:
        libraries = [lib for lib in libraries if lib != "dnnl"]
    # site-packages/primaps/_core.so -> site-packages/scipy_openblas32/lib
    # and <prefix>/lib (three levels up: site-packages, pythonX.Y, lib).
    rpaths = ["$ORIGIN/../scipy_openblas32/lib", "$ORIGIN/../../.."]
    ldflags = ldflags + ["-Wl,--enable-new-dtags"] + [
        f"-Wl,-rpath,{p}" for p in rpaths
    ]
    return Extension(
        "primaps._core",
        sources=SOURCES,
        include_dirs=[np.get_include(), "csrc"] + cfg["include_dirs"],
        library_dirs=cfg["library_dirs"],
        libraries=libraries,
        extra_objects=extra_objects,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=[("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")],
    )


if __name__ == "__main__":
    setup(ext_modules=[extension()])
