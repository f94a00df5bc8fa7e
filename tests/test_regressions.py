"""Regression tests of bugs the fuzz suite (tests/test_fuzz.py) found in
the bindings."""

from __future__ import annotations

import numpy as np
import pytest

import primaps
from primaps import _core


@pytest.mark.parametrize("size", [np.array([5, 7]), np.array([5, 7], np.uint16), [5, 7], (5, 7)])
def test_a_size_may_be_a_numpy_array_of_two_integers(size):
    x = np.ones((2, 3, 4), np.float32)
    assert primaps.upsample_bilinear(x, size).shape == (2, 5, 7)
    assert primaps.upsample_bilinear_adjoint(np.ones((2, 5, 7), np.float32), np.array([3, 4])).shape == (2, 3, 4)
    ws = _core.em_workspace()
    out = _core.em_predict(ws, np.ones((1, 3, 2, 2), np.float32), np.eye(2, 3, dtype=np.float32), size)
    assert out.shape == (1, 5, 7)


def test_a_size_array_of_the_wrong_length_names_the_argument():
    with pytest.raises(ValueError, match="size must be a pair"):
        primaps.upsample_bilinear(np.ones((3, 4), np.float32), np.array([1, 2, 3]))


def _batch():
    f = np.random.default_rng(0).random((2, 3, 2, 2), dtype=np.float32)
    v = np.ones((2, 3), np.float32)
    g = np.ones(2, np.float32)
    return _core.em_workspace(), f, v, g


@pytest.mark.parametrize("call, name", [
    (lambda ws, f, v, g: _core.teacher_pseudo(ws, f, None, v), "masks"),
    (lambda ws, f, v, g: _core.em_step(ws, f, None, v, g, v, g, 2.0), "masks"),
    (lambda ws, f, v, g: _core.focal_fwd(ws, f, None, v, g, 2.0), "labels"),
    (lambda ws, f, v, g: _core.focal_bwd(ws, f, None, v, g, 2.0), "labels"),
    (lambda ws, f, v, g: _core.probe_fwd(ws, f, None, v, g), "labels"),
    (lambda ws, f, v, g: _core.probe_bwd(ws, f, None, v, g), "labels"),
])
def test_a_required_map_given_as_none_is_a_type_error_naming_it(call, name):
    # it used to reach the kernel as "absent" and came back as
    # "ValueError: <kernel>: invalid argument"
    with pytest.raises(TypeError, match=f"{name} must be an integer array"):
        call(*_batch())


@pytest.mark.parametrize("index", [np.array([0.0, 1.0]), np.array([0.7]), [1.5]])
def test_a_float_index_is_refused_not_truncated(index):
    ws, f, v, g = _batch()
    with pytest.raises(TypeError, match="index must be an integer array"):
        _core.kmeans_fwd(ws, f, v, index=index)
    with pytest.raises(TypeError, match="index must be an integer array"):
        _core.em_predict(ws, f, v, 4, index=index)


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.uint64])
def test_an_index_of_any_integer_dtype_is_read(dtype):
    ws, f, v, g = _batch()
    want = _core.kmeans_fwd(ws, f, v, index=np.array([1, 0], np.int64))
    assert _core.kmeans_fwd(ws, f, v, index=np.array([1, 0], dtype)) == want


@pytest.mark.parametrize("size", [2**62, (2**62, 2**62), (3, 2**31)])
def test_a_size_beyond_the_tables_limit_is_refused_not_a_crash(size):
    # (size_t)(2 * W) * 4 wrapped around for W = 2^62: a segfault
    ws = _core.em_workspace()
    z = np.zeros((1, 2, 2, 2), np.float32)
    for call in (lambda: _core.label_softmax_mean(ws, z, size),
                 lambda: _core.label_argmax(ws, z, size),
                 lambda: primaps.upsample_bilinear(z, size),
                 lambda: _core.em_predict(ws, z, np.ones((2, 2), np.float32), size)):
        with pytest.raises(ValueError, match="size must be at most 2147483647 per axis"):
            call()


def test_an_output_too_large_for_memory_names_the_size_in_gib():
    # PyErr_Format has no %g: the message used to read "%.3g GiB"
    with pytest.raises(ValueError, match=r"asks for an output of [0-9.e+]+ GiB, more than"):
        primaps.upsample_bilinear(np.zeros((2, 2), np.float32), (2**31 - 1, 2**31 - 1))


@pytest.mark.parametrize("protos", ["abc", None, np.ones((2, 3), bool), np.ones((2, 3), complex),
                                    np.array([[{}, {}]], dtype=object)])
def test_init_from_refuses_what_is_not_a_numeric_array(protos):
    # bools were read as 0/1 prototypes, strings failed inside NumPy
    with pytest.raises(TypeError, match="prototypes must be a numeric array"):
        primaps.PriMaPsEM(2).init_from(protos)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_a_mask_id_of_minus_one_is_refused_by_name(dtype):
    # -1 doubled as the "no extra value" sentinel, so -1 passed the check
    masks = np.zeros((1, 4, 4), dtype)
    masks[0, 2, 3] = -1
    with pytest.raises(ValueError, match=r"masks must hold values in \[0, 65535\], got -1"):
        _core.as_mask_map(masks)
    ws, f, v, g = _batch()
    with pytest.raises(ValueError, match=r"masks must hold values in \[0, 65535\], got -1"):
        _core.em_step(ws, f[:1], masks.astype(np.int32), v, g, v, g, 2.0)
    with pytest.raises(ValueError, match="got -1"):
        primaps.PriMaPsEM(2).init_from(v).fit((f[:1], masks), verbose=False)


def test_permutohedral_filter_names_non_finite_features():
    # it answered "features: invalid argument"
    f = np.zeros((5, 2), np.float32)
    f[3, 1] = np.inf
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        _core.permutohedral_filter(f, np.ones((5, 1), np.float32))


@pytest.mark.parametrize("bad", ["labels.png", {"a": 1}, object()])
def test_a_tuple_of_features_and_a_non_array_names_the_entry(bad):
    # it was read as an iterable of batches: "a batch came without maps"
    f = np.zeros((2, 3, 2, 2), np.float32)
    with pytest.raises(TypeError, match="labels must be an array, got"):
        primaps.LinearProbe(2).fit((f, bad), verbose=False)
    with pytest.raises(TypeError, match="masks must be an array, got"):
        primaps.PriMaPsEM(2).fit((f, bad), verbose=False)


@pytest.mark.parametrize("flip", ["yes", b"\x01", {"a": 1}, np.array(["1"])])
def test_flip_flags_of_the_wrong_kind_are_a_type_error(flip):
    # a string became a 0-d boolean array: "flip must have shape (1,) ... got ()"
    ws, f, v, g = _batch()
    with pytest.raises(TypeError, match="flip must be an array of flags"):
        _core.teacher_pseudo(ws, f, np.ones((2, 4, 4), np.int32), v, flip=flip)


def test_flip_flags_may_be_bools_or_numbers():
    ws, f, v, g = _batch()
    m = np.ones((2, 4, 4), np.int32)
    want = _core.teacher_pseudo(ws, f, m, v, flip=np.array([True, False]))
    for flip in ([1, 0], np.array([1.0, 0.0]), (True, False)):
        assert np.array_equal(_core.teacher_pseudo(ws, f, m, v, flip=flip), want)


@pytest.mark.parametrize("features, error", [("features", TypeError), ({"a": 1}, TypeError),
                                             (np.zeros((4, 4)), ValueError)])
def test_masks_with_images_names_bad_features_first(features, error):
    # a string of 8 characters was counted as 8 images:
    # "images must hold one image per features image (8), got 1"
    images = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(error, match="features"):
        primaps.masks(features, images=images, crf=True)
    with pytest.raises(error, match="features"):
        primaps.masks(features, images=images)
