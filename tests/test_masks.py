"""primaps.masks against its NumPy twin (exact eigendecomposition), property
tests on random shapes and contents, degenerate inputs, thread-count
invariance, the fused upsampled argmax, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from twins import masks as twin

import primaps
from primaps.datasets import synthetic


def agreement(a, b):
    """Fraction of pixels with equal ids after the best one-to-one
    relabelling of b's ids onto a's."""
    M = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(M, (a.ravel(), b.ravel()), 1)
    r, c = linear_sum_assignment(-M)
    return M[r, c].sum() / a.size


def consecutive(m):
    ids = np.unique(m)
    ids = ids[ids > 0]
    return np.array_equal(ids, np.arange(1, len(ids) + 1))


# --------------------------------------------------------------------------
# Against the twin
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(64, 24, 20), (384, 23, 23)])
def test_identical_to_twin_on_well_separated_regions(shape, seed):
    s = synthetic.region_features(shape, noise=0.2, shared=0.2, seed=seed)
    ours, soft = primaps.masks(s.features, return_soft=True)
    L = twin.logits(s.features)
    np.testing.assert_array_equal(ours, twin.argmax_map(L))
    assert soft.shape == L.shape
    np.testing.assert_allclose(soft, L, atol=1e-5)
    assert ours.max() >= 2


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("noise", [0.5, 1.0])
def test_agrees_with_twin_on_noisy_regions(noise, seed):
    s = synthetic.region_features((96, 32, 32), noise=noise, shared=0.3, seed=seed)
    ours = primaps.masks(s.features)
    assert agreement(ours, twin.masks(s.features)) >= 0.99


def test_agrees_with_twin_on_dino_shape():
    s = synthetic.region_features((384, 40, 40), noise=1.0, seed=7)
    assert agreement(primaps.masks(s.features), twin.masks(s.features)) >= 0.99


@pytest.mark.parametrize(
    "kw",
    [
        dict(threshold=0.2),
        dict(threshold=0.7, stop_fraction=0.5),
        dict(median_size=1, gain=1.0),
        dict(median_size=5, gain=2.0),
        dict(max_masks=2),
        dict(stop_fraction=1.0),
    ],
)
def test_parameters_match_twin(kw):
    s = synthetic.region_features((48, 20, 24), noise=0.3, shared=0.2, seed=3)
    ours, soft = primaps.masks(s.features, return_soft=True, **kw)
    L = twin.logits(s.features, **kw)
    np.testing.assert_array_equal(ours, twin.argmax_map(L))
    np.testing.assert_allclose(soft, L, atol=1e-5)


def test_recovers_the_regions():
    s = synthetic.region_features((384, 40, 40), n_regions=6, noise=0.3, shared=0.2, seed=11)
    # regions showing the same class are one mask
    assert agreement(primaps.masks(s.features), s.classes + 1) >= 0.9


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


def random_features(seed, C, h, w, kind):
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        F = rng.standard_normal((C, h, w))
    elif kind == "ties":  # few distinct values: many equal similarities
        F = rng.integers(-1, 2, (C, h, w)).astype(float)
    elif kind == "zeros":  # some zero vectors among clustered ones
        F = rng.standard_normal((3, C))[rng.integers(0, 3, (h, w))].transpose(2, 0, 1)
        F = F + 0.1 * rng.standard_normal((C, h, w))
        F[:, rng.random((h, w)) < 0.3] = 0.0
    else:  # offset: a large common mean, as in ViT features
        F = 50.0 + rng.standard_normal((C, h, w))
    return F.astype(np.float32)


shapes = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12))
kinds = st.sampled_from(["gauss", "ties", "zeros", "offset"])


@settings(max_examples=200, deadline=None)
@given(
    shape=shapes,
    kind=kinds,
    seed=st.integers(0, 2**31),
    threshold=st.floats(0.05, 0.95),
    stop=st.floats(0.05, 1.0),
)
def test_properties_before_postprocessing(shape, kind, seed, threshold, stop):
    """median_size=1 and gain=1 make the soft channels the raw masks m / max:
    disjoint, each within cosine psi of its seed, one per iteration."""
    C, h, w = shape
    F = random_features(seed, C, h, w, kind)
    m, soft, info = primaps.masks(
        F, threshold=threshold, stop_fraction=stop, median_size=1, gain=1.0,
        return_soft=True, return_info=True,
    )
    N = h * w
    n = info["iterations"]
    assert soft.shape == (n + 1, h, w) and 1 <= n <= N
    support = soft[1:].reshape(n, N) > 0
    assert (support.sum(axis=0) <= 1).all()  # disjoint
    assert (support.sum(axis=1) >= 1).all()  # every iteration assigns
    assigned = support.any(axis=0).sum()
    assert assigned / N >= stop or assigned == N  # the loop stopped where it should
    X = F.reshape(C, N).T.astype(np.float64)
    nrm = np.linalg.norm(X, axis=1, keepdims=True)
    Fh = np.divide(X, nrm, out=np.zeros_like(X), where=nrm > 0)
    for k in range(n):
        pix = np.flatnonzero(support[k])
        if len(pix) == 1 and nrm[pix[0], 0] == 0:
            continue  # a zero seed is a mask of its own
        cos = Fh[pix] @ Fh[pix].T
        # some pixel of the mask (its seed) has cosine >= psi to all of it
        assert (cos.min(axis=1) >= threshold * (1 - 1e-5) - 1e-6).any()
    assert consecutive(m) and m.max() == info["n_masks"]


@settings(max_examples=100, deadline=None)
@given(shape=shapes, kind=kinds, seed=st.integers(0, 2**31), size=st.sampled_from([1, 3, 5]))
def test_properties_after_postprocessing(shape, kind, seed, size):
    C, h, w = shape
    F = random_features(seed, C, h, w, kind)
    m, soft, info = primaps.masks(F, median_size=size, return_soft=True, return_info=True)
    assert m.shape == (h, w) and m.dtype == np.int32
    assert ((soft[1:] > 0).sum(axis=0) <= 1).all()  # at most one mask per pixel
    assert ((soft >= 0) & (soft <= 1)).all()
    assert consecutive(m) and m.max() == info["n_masks"] <= info["iterations"]
    np.testing.assert_array_equal(m, twin.argmax_map(soft))


# --------------------------------------------------------------------------
# Degenerate input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, F",
    [
        ("all equal", np.full((5, 6, 7), 3.0, np.float32)),
        ("all zero", np.zeros((5, 6, 7), np.float32)),
        ("single pixel", np.arange(1, 6, dtype=np.float32).reshape(5, 1, 1)),
        ("C == 1", np.random.default_rng(0).standard_normal((1, 6, 7)).astype(np.float32)),
        ("1 x N", np.random.default_rng(1).standard_normal((8, 1, 13)).astype(np.float32)),
        ("N x 1", np.random.default_rng(2).standard_normal((8, 13, 1)).astype(np.float32)),
        ("huge", np.random.default_rng(3).uniform(-1, 1, (8, 5, 5)).astype(np.float32) * np.float32(3e38)),
        ("tiny", np.random.default_rng(4).standard_normal((8, 5, 5)).astype(np.float32) * np.float32(1e-40)),
    ],
)
def test_degenerate_inputs(name, F):
    m, info = primaps.masks(F, return_info=True)
    assert m.shape == F.shape[1:] and consecutive(m)
    assert 1 <= info["iterations"] <= F.shape[1] * F.shape[2]
    if name in ("all equal", "all zero", "single pixel", "C == 1"):
        np.testing.assert_array_equal(m, twin.masks(F))
    if name == "all equal":
        assert (m == 1).all() and info["iterations"] == 1
    if name == "all zero":  # one pixel per mask, erased by the median
        assert (m == 0).all() and info["iterations"] == int(np.ceil(0.95 * 42))


def test_all_zero_without_median_keeps_single_pixels():
    m, info = primaps.masks(np.zeros((3, 4, 5), np.float32), median_size=1, return_info=True)
    assert info["iterations"] == 19 and m.max() == 19


# --------------------------------------------------------------------------
# Batches, threads, resolution, conversions
# --------------------------------------------------------------------------


def test_batch_equals_single_images_and_threads_are_bitwise(threads):
    s = synthetic.region_features((64, 20, 20), batch=5, noise=1.5, seed=2)
    F = s.features
    F[3] = synthetic.region_features((64, 20, 20), noise=3.0, seed=9).features  # hard
    results = []
    for n in (1, 2, 4):
        threads(n)
        results.append(primaps.masks(F, out_size=(57, 61), return_soft=True, return_info=True))
    for maps, soft, info in results[1:]:
        np.testing.assert_array_equal(maps, results[0][0])
        for a, b in zip(soft, results[0][1]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(info["iterations"], results[0][2]["iterations"])
    maps, soft, info = results[0]
    assert maps.shape == (5, 57, 61) and len(soft) == 5
    assert info["iterations"].shape == (5,) and info["iterations"].dtype == np.int64
    assert info["iterations"][3] > 50  # the hard image needs many masks
    for b in range(5):
        np.testing.assert_array_equal(primaps.masks(F[b], out_size=(57, 61)), maps[b])


@pytest.mark.parametrize("size", [(320, 320), (19, 7), (8, 8), (40, 40), 33])
def test_upsampled_argmax_is_the_argmax_of_the_upsampled_logits(size):
    s = synthetic.region_features((32, 16, 16), noise=1.0, seed=5)
    m, soft = primaps.masks(s.features, out_size=size, return_soft=True)
    up = primaps.upsample_bilinear(soft, size)
    np.testing.assert_array_equal(m, twin.argmax_map(up))
    HW = (size, size) if isinstance(size, int) else size
    assert m.shape == HW and consecutive(m)


def test_conversions():
    s = synthetic.region_features((16, 12, 10), noise=0.5, seed=1)
    ref = primaps.masks(s.features)
    np.testing.assert_array_equal(primaps.masks(s.features.astype(np.float64)), ref)
    F2 = np.asfortranarray(s.features)
    np.testing.assert_array_equal(primaps.masks(F2), ref)
    Fs = np.concatenate([s.features[:, :, ::-1]] * 1, axis=0)[:, :, ::-1]  # negative strides
    np.testing.assert_array_equal(primaps.masks(Fs), ref)
    np.testing.assert_array_equal(primaps.masks(s.features.tolist()), ref)
    empty = primaps.masks(np.zeros((0, 4, 3, 3), np.float32), out_size=5)
    assert empty.shape == (0, 5, 5)


def test_return_values():
    F = synthetic.region_features((8, 6, 5), batch=2, seed=0).features
    assert isinstance(primaps.masks(F), np.ndarray)
    m, info = primaps.masks(F, return_info=True)
    assert set(info) == {"iterations", "n_masks"} and info["n_masks"].shape == (2,)
    m, soft = primaps.masks(F, return_soft=True)
    assert isinstance(soft, list) and soft[0].dtype == np.float32
    m, soft, info = primaps.masks(F[0], return_soft=True, return_info=True)
    assert isinstance(info["iterations"], int) and soft.shape[1:] == (6, 5)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

GOOD = np.ones((3, 4, 4), np.float32)


@pytest.mark.parametrize(
    "features, exc, text",
    [
        (None, TypeError, "features"),
        ("abc", TypeError, "features"),
        (np.ones((3, 4, 4), complex), TypeError, "features"),
        (np.ones((3, 4, 4), bool), TypeError, "features"),
        (np.ones((4, 4), np.float32), ValueError, "features must have shape"),
        (np.ones((1, 2, 3, 4, 4), np.float32), ValueError, "features must have shape"),
        (np.ones((3, 0, 4), np.float32), ValueError, r"h \* w > 0"),
        (np.ones((0, 4, 4), np.float32), ValueError, "at least one channel"),
        (np.where(np.arange(48).reshape(3, 4, 4) == 7, np.nan, 1.0), ValueError, "NaN or inf"),
        (np.where(np.arange(48).reshape(3, 4, 4) == 7, np.inf, 1.0), ValueError, "NaN or inf"),
    ],
)
def test_bad_features(features, exc, text):
    with pytest.raises(exc, match=text):
        primaps.masks(features)


@pytest.mark.parametrize(
    "kw, exc, text",
    [
        (dict(threshold=0.0), ValueError, r"threshold must lie in \(0, 1\), got 0.0"),
        (dict(threshold=1.0), ValueError, "threshold"),
        (dict(threshold=-0.5), ValueError, "threshold"),
        (dict(threshold=float("nan")), ValueError, "threshold"),
        (dict(threshold="0.4"), TypeError, "threshold must be a real number, got str"),
        (dict(threshold=True), TypeError, "threshold"),
        (dict(stop_fraction=0.0), ValueError, r"stop_fraction must lie in \(0, 1\]"),
        (dict(stop_fraction=1.5), ValueError, "stop_fraction"),
        (dict(gain=0.0), ValueError, "gain must be a positive finite number"),
        (dict(gain=float("inf")), ValueError, "gain"),
        (dict(median_size=2), ValueError, "median_size must be an odd integer"),
        (dict(median_size=0), ValueError, "median_size"),
        (dict(median_size=65), ValueError, "median_size"),
        (dict(median_size=3.0), TypeError, "median_size"),
        (dict(max_masks=0), ValueError, "max_masks"),
        (dict(max_masks=2.5), TypeError, "max_masks must be None or a positive integer"),
        (dict(out_size=(0, 4)), ValueError, "out_size"),
        (dict(out_size=(4, 4, 4)), ValueError, "out_size"),
        (dict(out_size="big"), TypeError, "out_size"),
        (dict(out_size=10**7), ValueError, "out_size asks for an output"),
    ],
)
def test_bad_parameters(kw, exc, text):
    with pytest.raises(exc, match=text):
        primaps.masks(GOOD, **kw)


def test_single_pixel_stop_fraction_one_and_max_masks():
    F = np.random.default_rng(0).standard_normal((4, 5, 5)).astype(np.float32)
    _, info = primaps.masks(F, stop_fraction=1.0, median_size=1, return_info=True)
    m, info1 = primaps.masks(F, max_masks=1, median_size=1, gain=1.0, return_info=True)
    assert info1["iterations"] == 1 and m.max() <= 1
    assert info["iterations"] >= info1["iterations"]


# --------------------------------------------------------------------------
# The synthetic generator
# --------------------------------------------------------------------------


def test_synthetic_is_seeded_and_batch_independent():
    a = synthetic.region_features((32, 10, 12), batch=3, noise=0.7, seed=4)
    b = synthetic.region_features((32, 10, 12), batch=2, noise=0.7, seed=4)
    c = synthetic.region_features((32, 10, 12), noise=0.7, seed=4)
    np.testing.assert_array_equal(a.features[:2], b.features)
    np.testing.assert_array_equal(a.features[0], c.features)
    assert a.features.dtype == np.float32 and a.features.shape == (3, 32, 10, 12)
    assert a.regions.shape == (3, 10, 12) and a.classes.max() < 27
    d = synthetic.region_features((32, 10, 12), noise=0.7, seed=5)
    assert not np.array_equal(c.features, d.features)


def test_synthetic_noise_norm_is_as_stated():
    s = synthetic.region_features((384, 30, 30), noise=0.5, norm=40.0, seed=0)
    X = s.features.reshape(384, -1).T
    resid = X - 40.0 * s.prototypes[s.classes.ravel()]
    ratio = np.linalg.norm(resid, axis=1).mean() / 40.0
    assert 0.45 < ratio < 0.55
    with pytest.raises(ValueError, match="noise"):
        synthetic.region_features((4, 3, 3), noise=-1.0)
