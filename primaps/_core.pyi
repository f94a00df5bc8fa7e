"""Type stub of the compiled core primaps._core."""

from typing import Any, Sequence, Union

import numpy as np
import numpy.typing as npt

_Size = Union[int, Sequence[int]]

def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def build_info() -> dict[str, Any]: ...
def l2_normalize(features: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
def upsample_bilinear(x: npt.ArrayLike, size: _Size) -> npt.NDArray[np.float32]: ...
def upsample_bilinear_adjoint(y: npt.ArrayLike, in_size: _Size) -> npt.NDArray[np.float32]: ...

# Evaluation (metrics.c)
def confusion_matrix(
    pred: npt.ArrayLike, gt: npt.ArrayLike, n_classes: int, extra_clusters: int = 0
) -> tuple[npt.NDArray[np.int64], int]: ...
# Dense CRF (crf.c)
def crf_context() -> Any: ...
def dense_crf(
    image: npt.ArrayLike,
    logits: npt.ArrayLike,
    iterations: int = 10,
    *,
    appearance_weight: float = 4.0,
    appearance_theta_xy: float = 67.0,
    appearance_theta_rgb: float = 3.0,
    smoothness_weight: float = 3.0,
    smoothness_theta_xy: float = 1.0,
    min_prob: float = 0.0,
    context: Any = None,
) -> npt.NDArray[np.float32]: ...
def permutohedral_filter(features: npt.ArrayLike, values: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
