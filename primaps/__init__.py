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

l2_normalize = _core.l2_normalize
upsample_bilinear = _core.upsample_bilinear
upsample_bilinear_adjoint = _core.upsample_bilinear_adjoint

# PriMaPs mask proposals (masks.py).
from .masks import masks

# Data: dataset loaders and the on-disk feature store (backbones, which need
# torch, stay in the optional module primaps.backbones).
from . import datasets
from .features import FeatureStore, FeatureStoreError

# PriMaPs-EM (em.py) and the supervised linear probe (probe.py).
from .em import PriMaPsEM, Prototypes
from .probe import LinearProbe

# Evaluation (metrics.py); the pictures live in primaps.viz (extra "viz").
from .metrics import EvaluationReport, Evaluator, evaluate

# Dense CRF (crf.py).
from .crf import DenseCRF, dense_crf

__all__ = [
    "__version__",
    "build_info",
    "get_num_threads",
    "set_num_threads",
    "l2_normalize",
    "upsample_bilinear",
    "upsample_bilinear_adjoint",
    "masks",
    "datasets",
    "FeatureStore",
    "FeatureStoreError",
    "EvaluationReport",
    "Evaluator",
    "evaluate",
    "DenseCRF",
    "dense_crf",
    "PriMaPsEM",
    "Prototypes",
    "LinearProbe",
]

# The optional modules load on first use: ``import primaps`` then
# ``primaps.viz.plot_panels(...)`` works, and ``import primaps`` alone needs
# neither matplotlib nor torch.
_LAZY = ("viz", "backbones", "pipeline", "config", "cli")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
