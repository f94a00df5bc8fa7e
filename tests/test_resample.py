"""l2_normalize, upsample_bilinear and its adjoint against NumPy twins and
torch, on awkward inputs; bad input gets a clear error."""

import numpy as np
import pytest
from conftest import torch_or_skip
from twins import resample as twin

import primaps

SIZES = [
    ((5, 7), (20, 28)),   # upsample x4
    ((40, 40), (320, 320)),
    ((23, 23), (322, 322)),
    ((3, 5), (7, 11)),    # non-integer factors
    ((9, 6), (4, 3)),     # downsample
    ((1, 1), (5, 4)),     # a single pixel
    ((1, 6), (3, 13)),    # a 1 x N image
    ((6, 6), (6, 6)),     # identity
]


# ---------------------------------------------------------------- l2_normalize


@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (16, 5, 7), (3, 1, 4, 4), (1, 700, 3, 3)])
def test_l2_normalize_matches_twin(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32) * 3
    out = primaps.l2_normalize(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, twin.l2_normalize(x), rtol=2e-7, atol=1e-7)


def test_l2_normalize_zero_vector_stays_zero(rng):
    x = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    x[0, :, 1, 2] = 0
    x[1] = 0
    out = primaps.l2_normalize(x)
    assert np.all(out[0, :, 1, 2] == 0) and np.all(out[1] == 0)
    norms = np.linalg.norm(out[0].reshape(8, -1), axis=0)
    nz = np.ones(16, bool)
    nz[1 * 4 + 2] = False
    np.testing.assert_allclose(norms[nz], 1, rtol=1e-6)


def test_l2_normalize_extreme_magnitudes():
    """Tiny and huge finite vectors are normalised, not zeroed or overflowed."""
    x = np.zeros((3, 2, 1), np.float32)
    x[:, 0, 0] = [1e-40, 2e-40, 2e-40]  # subnormals
    x[:, 1, 0] = [3e38, 3e38, -3e38]
    out = primaps.l2_normalize(x)
    np.testing.assert_allclose(np.linalg.norm(out[:, :, 0].astype(np.float64), axis=0), 1, rtol=1e-6)


def test_l2_normalize_converts_awkward_inputs(rng):
    base = rng.standard_normal((2, 6, 5, 4))
    ref = twin.l2_normalize(base)
    variants = {
        "float64": base,
        "float16": base.astype(np.float16),
        "transposed": np.ascontiguousarray(base.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
        "negative stride": base[:, :, ::-1][:, :, ::-1],
        "strided": np.repeat(base, 2, axis=-1)[..., ::2],
        "big-endian": base.astype(">f4"),
        "list": base.tolist(),
        "int": (base * 100).astype(np.int32),
    }
    for name, v in variants.items():
        out = primaps.l2_normalize(v)
        want = twin.l2_normalize(np.asarray(v, dtype=np.float64))
        np.testing.assert_allclose(out, want, rtol=1e-3 if name == "float16" else 2e-6, atol=1e-6, err_msg=name)
    assert np.allclose(primaps.l2_normalize(base), ref, atol=1e-6)


def test_l2_normalize_in_place_input_untouched(rng):
    x = rng.standard_normal((4, 3, 3)).astype(np.float32)
    keep = x.copy()
    primaps.l2_normalize(x)
    assert np.array_equal(x, keep)


def test_l2_normalize_empty_batch():
    out = primaps.l2_normalize(np.zeros((0, 4, 3, 3), np.float32))
    assert out.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_l2_normalize_rejects_nonfinite(rng, bad):
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    x[1, 2, 0, 1] = bad
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        primaps.l2_normalize(x)


def test_l2_normalize_rejects_values_that_overflow_float32():
    # NumPy warns about the overflowing cast; the kernel then refuses the inf.
    with pytest.warns(RuntimeWarning, match="overflow"), pytest.raises(ValueError, match="NaN or inf"):
        primaps.l2_normalize(np.full((2, 2, 2), 1e300))


@pytest.mark.parametrize("shape", [(3, 40), (5,), (1, 2, 3, 4, 5), ()])
def test_l2_normalize_rejects_wrong_ndim(shape):
    with pytest.raises(ValueError, match=r"features must have shape \(B, C, h, w\) or \(C, h, w\), got"):
        primaps.l2_normalize(np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape", [(4, 0, 3), (2, 4, 3, 0)])
def test_l2_normalize_rejects_empty_images(shape):
    with pytest.raises(ValueError, match="features must have at least one pixel"):
        primaps.l2_normalize(np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    "bad",
    [None, "abc", b"abc", {"a": 1}, object(), np.zeros((2, 2, 2), bool),
     np.zeros((2, 2, 2), complex), np.array([["a"]]), [[1, [2]], [3]]],
)
def test_l2_normalize_rejects_non_numeric(bad):
    with pytest.raises(TypeError, match="features must be a numeric array"):
        primaps.l2_normalize(bad)


# ----------------------------------------------------------- upsample_bilinear


@pytest.mark.parametrize("src,dst", SIZES)
def test_upsample_matches_twin(rng, src, dst):
    x = rng.standard_normal((2, 3) + src).astype(np.float32)
    out = primaps.upsample_bilinear(x, dst)
    assert out.shape == (2, 3) + dst and out.dtype == np.float32
    np.testing.assert_allclose(out, twin.upsample_bilinear(x, dst), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("src,dst", SIZES)
def test_upsample_matches_torch(rng, src, dst):
    torch = torch_or_skip()
    x = rng.standard_normal((2, 3) + src).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(primaps.upsample_bilinear(x, dst), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("src,dst", SIZES)
def test_adjoint_is_the_transpose(rng, src, dst):
    x = rng.standard_normal((2, 3) + src).astype(np.float32)
    y = rng.standard_normal((2, 3) + dst).astype(np.float32)
    up = primaps.upsample_bilinear(x, dst).astype(np.float64)
    adj = primaps.upsample_bilinear_adjoint(y, src)
    assert adj.shape == x.shape and adj.dtype == np.float32
    lhs = float((up * y).sum())
    rhs = float((x.astype(np.float64) * adj).sum())
    assert abs(lhs - rhs) <= 1e-5 * (np.abs(up * y).sum() + 1)
    np.testing.assert_allclose(adj, twin.upsample_bilinear_adjoint(y, src), rtol=1e-5, atol=1e-4)


def test_adjoint_matches_torch_autograd(rng):
    torch = torch_or_skip()
    x = torch.from_numpy(rng.standard_normal((2, 4, 5, 7)).astype(np.float32)).requires_grad_()
    g = rng.standard_normal((2, 4, 19, 23)).astype(np.float32)
    up = torch.nn.functional.interpolate(x, size=(19, 23), mode="bilinear", align_corners=False)
    up.backward(torch.from_numpy(g))
    np.testing.assert_allclose(primaps.upsample_bilinear_adjoint(g, (5, 7)), x.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 7), (3, 5, 7), (2, 3, 5, 7)])
def test_upsample_accepts_2d_3d_4d(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    out = primaps.upsample_bilinear(x, (9, 10))
    assert out.shape == shape[:-2] + (9, 10)
    np.testing.assert_allclose(out, twin.upsample_bilinear(x, (9, 10)), rtol=1e-5, atol=1e-5)


def test_upsample_int_size_and_awkward_inputs(rng):
    x = rng.standard_normal((3, 6, 5))
    ref = twin.upsample_bilinear(x, (8, 8))
    for v in (x, x.astype(">f4"), x[:, ::-1][:, ::-1], np.asfortranarray(x), x.tolist()):
        np.testing.assert_allclose(primaps.upsample_bilinear(v, 8), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(primaps.upsample_bilinear(x, (np.int64(8), 8)), ref, rtol=1e-5, atol=1e-5)


def test_upsample_propagates_nan_locally():
    x = np.zeros((1, 6, 6), np.float32)
    x[0, 0, 0] = np.nan
    out = primaps.upsample_bilinear(x, (12, 12))
    assert np.isnan(out[0, 0, 0]) and not np.isnan(out[0, -1, -1])


def test_upsample_empty_batch():
    assert primaps.upsample_bilinear(np.zeros((0, 3, 4, 4), np.float32), 8).shape == (0, 3, 8, 8)


@pytest.mark.parametrize("size", [0, -3, (0, 4), (4, -1), 10**30])
def test_upsample_rejects_bad_size_values(size):
    with pytest.raises(ValueError, match="size must be a positive integer"):
        primaps.upsample_bilinear(np.zeros((2, 3, 3), np.float32), size)


@pytest.mark.parametrize("size", [2.5, "8", None, True, (4.0, 4), [4, None]])
def test_upsample_rejects_bad_size_types(size):
    with pytest.raises(TypeError, match="size must be"):
        primaps.upsample_bilinear(np.zeros((2, 3, 3), np.float32), size)


def test_upsample_rejects_bad_size_length():
    with pytest.raises(ValueError, match=r"size must be a pair \(H, W\)"):
        primaps.upsample_bilinear(np.zeros((2, 3, 3), np.float32), (4, 4, 4))


def test_upsample_rejects_absurd_output():
    with pytest.raises(ValueError, match="size asks for an output of .* GiB"):
        primaps.upsample_bilinear(np.zeros((32, 27, 4, 4), np.float32), (10**6, 10**6))


def test_adjoint_rejects_absurd_output():
    with pytest.raises(ValueError, match="in_size asks for an output of"):
        primaps.upsample_bilinear_adjoint(np.zeros((32, 27, 4, 4), np.float32), (10**6, 10**6))


@pytest.mark.parametrize("shape", [(5,), (1, 2, 3, 4, 5)])
def test_upsample_rejects_wrong_ndim(shape):
    with pytest.raises(ValueError, match=r"x must have shape"):
        primaps.upsample_bilinear(np.zeros(shape, np.float32), 4)


def test_upsample_rejects_empty_image():
    with pytest.raises(ValueError, match="x must have at least one pixel"):
        primaps.upsample_bilinear(np.zeros((2, 0, 3), np.float32), 4)
    with pytest.raises(ValueError, match="y must have at least one pixel"):
        primaps.upsample_bilinear_adjoint(np.zeros((2, 3, 0), np.float32), 4)


@pytest.mark.parametrize("bad", [None, "x", np.zeros((2, 2), bool), np.zeros((2, 2), complex)])
def test_resample_rejects_non_numeric(bad):
    with pytest.raises(TypeError, match="x must be a numeric array"):
        primaps.upsample_bilinear(bad, 4)
    with pytest.raises(TypeError, match="y must be a numeric array"):
        primaps.upsample_bilinear_adjoint(bad, 4)


# ------------------------------------------------------------- determinism


def test_results_identical_for_any_thread_count(rng, threads):
    x = rng.standard_normal((3, 16, 23, 23)).astype(np.float32)
    g = rng.standard_normal((3, 16, 322, 322)).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        threads(n)
        outs.append((primaps.l2_normalize(x), primaps.upsample_bilinear(x, (322, 322)),
                     primaps.upsample_bilinear_adjoint(g, (23, 23))))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a, b)


def test_concurrent_python_threads_agree_with_serial(rng):
    from concurrent.futures import ThreadPoolExecutor

    xs = [rng.standard_normal((2, 8, 10, 10)).astype(np.float32) for _ in range(8)]
    serial = [primaps.upsample_bilinear(primaps.l2_normalize(x), 40) for x in xs]
    with ThreadPoolExecutor(4) as ex:
        par = list(ex.map(lambda x: primaps.upsample_bilinear(primaps.l2_normalize(x), 40), xs))
    for a, b in zip(serial, par):
        assert np.array_equal(a, b)
