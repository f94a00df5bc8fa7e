"""primaps: unsupervised semantic segmentation with principal mask proposals.

PriMaPs pseudo labels and PriMaPs-EM prototypes (Hahn et al., TMLR 2024) on a
C core (OpenBLAS, oneDNN) with a thin NumPy layer.  Every array crosses the
boundary as a NumPy array; a ``torch.Tensor`` converts with ``.numpy()``.
"""

from __future__ import annotations

from ._version import __version__

try:
    from . import _core
except ImportError:  # an unusual layout: load the libraries by path first
    import importlib.util as _ilu

    if _ilu.find_spec("primaps._core") is None:
        raise ImportError(
            "primaps' compiled core (primaps._core) is not built next to "
            f"{__file__}. If this is the source tree, install the package "
            "('pip install .') and run from another folder, or build it in "
            "place with 'pip install -e .'."
        ) from None
    from ._libs import preload as _preload

    _preload()
    from . import _core

from ._runtime import build_info, get_num_threads, set_num_threads

from .em import PriMaPsEM, Prototypes
from .probe import LinearProbe

l2_normalize = _core.l2_normalize
upsample_bilinear = _core.upsample_bilinear
upsample_bilinear_adjoint = _core.upsample_bilinear_adjoint

__all__ = [
    "__version__",
    "build_info",
    "get_num_threads",
    "set_num_threads",
    "l2_normalize",
    "upsample_bilinear",
    "upsample_bilinear_adjoint",
    "PriMaPsEM",
    "Prototypes",
    "LinearProbe",
]
