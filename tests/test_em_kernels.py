"""The kernels of em.c against their float64 NumPy twins (themselves checked
by central finite differences), against torch autograd on the original
formulation (features upsampled to 320 x 320, weight-normed 1x1 conv), and
for invariance to thread count, batch indexing and mirroring."""

import numpy as np
import pytest
from conftest import torch_or_skip
from twins import em as twin
from twins import resample as rtwin

import primaps
from primaps import _core

TOL = 1e-4  # float32 kernels vs float64 twins, relative to the largest entry

# (h, w) -> (H, W): integer, non-integer and down-sampling factors, a single
# pixel, a single row, odd sizes that leave a partial row segment.
SIZES = [
    ((5, 7), (20, 28)),
    ((4, 4), (32, 32)),
    ((3, 5), (7, 11)),
    ((9, 6), (4, 3)),
    ((1, 1), (5, 4)),
    ((1, 6), (3, 13)),
    ((6, 9), (70, 150)),
]


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = max(np.max(np.abs(b)), 1e-30)
    return float(np.max(np.abs(a - b)) / scale)


@pytest.fixture(scope="module")
def ws():
    return _core.em_workspace()


def make_labels(rng, B, H, W, K, ignore=0.2):
    y = rng.integers(0, K, (B, H, W))
    y[rng.random((B, H, W)) < ignore] = 255
    return y.astype(np.uint8)


def fd_grad(f, x, eps=1e-6):
    """Central finite differences of a scalar function of an array."""
    x = np.array(x, np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = f(x)
        x[i] = old - eps
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


# ------------------------------------------------ twins vs finite differences


def test_twin_weightnorm_gradient_by_finite_differences(rng):
    v = rng.standard_normal((3, 5))
    g = rng.standard_normal(3)
    D = rng.standard_normal((3, 5))
    dv, dg = twin.weightnorm_bwd(v, g, D)
    np.testing.assert_allclose(dv, fd_grad(lambda x: np.sum(D * twin.weightnorm(x, g)), v),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dg, fd_grad(lambda x: np.sum(D * twin.weightnorm(v, x)), g),
                               rtol=1e-7, atol=1e-9)


def test_twin_label_ce_gradient_by_finite_differences(rng):
    Z = rng.standard_normal((2, 4, 3, 5)) * 2
    y = make_labels(rng, 2, 7, 11, 4)
    wt = rng.random(4) + 0.1
    _, dZ = twin.label_ce(Z, y, wt, 0.3)
    fd = fd_grad(lambda x: twin.label_ce(x, y, wt, 0.3)[0], Z)
    np.testing.assert_allclose(dZ, fd, rtol=1e-6, atol=1e-9)


def test_twin_focal_gradient_by_finite_differences(rng):
    """chi is a constant of the gradient: finite differences of the loss with
    the class weights frozen at their value."""
    K, C = 3, 4
    v = rng.standard_normal((K, C))
    g = rng.random(K) + 0.5
    F = rng.standard_normal((2, C, 3, 4))
    y = make_labels(rng, 2, 9, 10, K)
    loss, chi, dv, dg = twin.focal(v, g, F, y, 2.0)
    wt = twin.focal_weights(chi, 2.0)
    np.testing.assert_allclose(loss, twin.focal_loss_fixed(v, g, F, y, wt), rtol=1e-12)
    np.testing.assert_allclose(dv, fd_grad(lambda x: twin.focal_loss_fixed(x, g, F, y, wt), v),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dg, fd_grad(lambda x: twin.focal_loss_fixed(v, x, F, y, wt), g),
                               rtol=1e-6, atol=1e-9)


def test_twin_kmeans_gradient_by_finite_differences(rng):
    K, C = 4, 6
    v = rng.standard_normal((K, C))
    F = rng.standard_normal((2, C, 3, 3))
    F[0, :, 1, 1] = 0  # a zero feature vector
    loss, dv = twin.kmeans(v, F)
    u = twin.weightnorm(v, np.ones(K))
    n = np.linalg.norm(F, axis=1, keepdims=True)
    cos = np.einsum("kc,bchw->bkhw", u, np.divide(F, n, out=np.zeros_like(F), where=n > 0))
    assign = cos.argmax(axis=1)
    np.testing.assert_allclose(loss, twin.kmeans_loss_fixed(v, F, assign), rtol=1e-12)
    np.testing.assert_allclose(dv, fd_grad(lambda x: twin.kmeans_loss_fixed(x, F, assign), v),
                               rtol=1e-6, atol=1e-9)


def test_twin_probe_gradient_by_finite_differences(rng):
    K, C = 3, 4
    Wt = rng.standard_normal((K, C))
    b = rng.standard_normal(K)
    F = rng.standard_normal((2, C, 3, 4))
    y = make_labels(rng, 2, 6, 9, K)
    _, dW, db = twin.probe(Wt, b, F, y)
    np.testing.assert_allclose(dW, fd_grad(lambda x: twin.probe(x, b, F, y)[0], Wt),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(db, fd_grad(lambda x: twin.probe(Wt, x, F, y)[0], b),
                               rtol=1e-6, atol=1e-9)


def test_resolution_trick_equals_upsampled_features(rng):
    """Logits upsampled == features upsampled then the 1x1 conv: loss, chi,
    gradient and every argmax."""
    K, C = 5, 12
    v = rng.standard_normal((K, C))
    g = rng.random(K) + 0.5
    F = rng.standard_normal((2, C, 5, 6))
    y = make_labels(rng, 2, 40, 48, K)
    loss, chi, dv, dg = twin.focal(v, g, F, y, 2.0)
    loss_o, chi_o, dtheta_o = twin.focal_original(v, g, F, y, 2.0)
    dv_o, dg_o = twin.weightnorm_bwd(v, g, dtheta_o)
    np.testing.assert_allclose(loss, loss_o, rtol=1e-12)
    np.testing.assert_allclose(chi, chi_o, rtol=1e-12)
    np.testing.assert_allclose(dv, dv_o, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dg, dg_o, rtol=1e-10, atol=1e-14)
    theta = twin.weightnorm(v, g)
    t_trick = twin.label_argmax(twin.logits(theta, F), (40, 48))
    t_orig = twin.logits(theta, rtwin.upsample_bilinear(F, (40, 48))).argmax(axis=1)
    assert np.array_equal(t_trick, t_orig)


# ------------------------------------------------------ C kernels vs twins


def test_weightnorm_matches_twin(rng):
    v = rng.standard_normal((6, 9)).astype(np.float32)
    v[2] = 0  # no direction: theta and the gradients are 0
    g = rng.standard_normal(6).astype(np.float32)
    D = rng.standard_normal((6, 9)).astype(np.float32)
    theta = _core.weightnorm_fwd(v, g)
    assert theta.dtype == np.float32 and np.all(theta[2] == 0)
    assert rel_err(theta, twin.weightnorm(v, g)) < TOL
    dv, dg = _core.weightnorm_bwd(v, g, D)
    rdv, rdg = twin.weightnorm_bwd(v, g, D)
    assert rel_err(dv, rdv) < TOL and rel_err(dg, rdg) < TOL
    assert np.all(dv[2] == 0) and dg[2] == 0


@pytest.mark.parametrize("lo,hi", SIZES)
def test_label_softmax_mean_matches_twin(ws, rng, lo, hi):
    Z = (rng.standard_normal((2, 5) + lo) * 3).astype(np.float32)
    chi = _core.label_softmax_mean(ws, Z, hi)
    assert chi.shape == (5,) and chi.dtype == np.float64
    assert rel_err(chi, twin.label_softmax_mean(Z, hi)) < TOL
    np.testing.assert_allclose(chi.sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("lo,hi", SIZES)
def test_label_ce_matches_twin(ws, rng, lo, hi):
    K = 6
    Z = (rng.standard_normal((3, K) + lo) * 3).astype(np.float32)
    y = make_labels(rng, 3, *hi, K)
    wt = (rng.random(K) + 0.1).astype(np.float32)
    loss, dZ = _core.label_ce_bwd(ws, Z, y, wt, 0.01)
    rl, rdZ = twin.label_ce(Z, y, wt, 0.01)
    assert rel_err(loss, rl) < TOL
    assert rel_err(dZ, rdZ) < TOL
    assert _core.label_ce_fwd(ws, Z, y, wt, 0.01) == pytest.approx(loss, rel=1e-12)


def test_label_ce_is_stable_for_large_logits(ws, rng):
    K = 4
    Z = (rng.standard_normal((2, K, 4, 4)) * 200).astype(np.float32)
    y = make_labels(rng, 2, 16, 16, K)
    wt = np.ones(K, np.float32)
    loss, dZ = _core.label_ce_bwd(ws, Z, y, wt, 1.0 / y.size)
    rl, rdZ = twin.label_ce(Z, y, wt, 1.0 / y.size)
    assert np.isfinite(loss) and np.all(np.isfinite(dZ))
    assert rel_err(loss, rl) < TOL and rel_err(dZ, rdZ) < TOL


def test_label_ce_all_ignored_is_zero(ws, rng):
    Z = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    y = np.full((2, 8, 8), 255, np.uint8)
    loss, dZ = _core.label_ce_bwd(ws, Z, y, np.ones(3, np.float32), 1.0)
    assert loss == 0.0 and np.all(dZ == 0)


@pytest.mark.parametrize("lo,hi", SIZES)
def test_label_argmax_is_argmax_of_upsampled_logits(ws, rng, lo, hi):
    """Bitwise the argmax of primaps.upsample_bilinear (ties: first class)."""
    Z = rng.standard_normal((2, 7) + lo).astype(np.float32)
    Z[:, 3] = Z[:, 1]  # exact ties go to the smaller class
    out = _core.label_argmax(ws, Z, hi)
    assert out.dtype == np.int32 and out.shape == (2,) + hi
    assert np.array_equal(out, primaps.upsample_bilinear(Z, hi).argmax(axis=1))
    assert not np.any(out == 3)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 3e4])
def test_label_argmax_shortcut_keeps_the_bits(ws, rng, scale):
    """Where every corner of a pixel has the same clear winner the kernel
    fills the class without interpolating; near ties, exact ties between
    regions, large and tiny logits, odd sizes and downsampling give the
    argmax of primaps.upsample_bilinear all the same."""
    K = 9
    for lo, hi in (((40, 40), (320, 320)), ((13, 17), (100, 61)), ((9, 6), (4, 3)),
                   ((23, 23), (322, 322))):
        h, w = lo
        cls = np.repeat(np.repeat(rng.integers(0, K, (2, 3, 3)), -(-h // 3), 1),
                        -(-w // 3), 2)[:, :h, :w]
        Z = rng.standard_normal((2, K, h, w)).astype(np.float32) * 0.1
        np.put_along_axis(Z, cls[:, None], 3.0, axis=1)  # clear winners in regions
        Z[0, :, : h // 2, : w // 2] = 1.0  # exact ties everywhere: class 0 wins
        Z[1, 2, : h // 3] = Z[1, 5, : h // 3] = 3.0 + 1e-7  # ties of two classes
        Z[1, 4, h // 2] = 3.0 + np.float32(2.0) ** -20  # margins near the bound
        Z *= np.float32(scale)
        out = _core.label_argmax(ws, Z, hi)
        assert np.array_equal(out, primaps.upsample_bilinear(Z, hi).argmax(axis=1)), (lo, hi)


def test_kmeans_matches_twin(ws, rng):
    K, C = 5, 24
    F = rng.standard_normal((3, C, 6, 7)).astype(np.float32)
    F[1, :, 2, 3] = 0  # cosine 0 with every prototype, no gradient
    v = (rng.standard_normal((K, C)) * 3).astype(np.float32)
    loss, dv = _core.kmeans_bwd(ws, F, v)
    rl, rdv = twin.kmeans(v, F)
    assert rel_err(loss, rl) < TOL and rel_err(dv, rdv) < TOL
    assert _core.kmeans_fwd(ws, F, v) == pytest.approx(loss, rel=1e-12)


def test_focal_matches_twin(ws, rng):
    K, C = 6, 20
    F = rng.standard_normal((3, C, 5, 6)).astype(np.float32)
    S = rng.standard_normal((3, C, 5, 6)).astype(np.float32)
    v = rng.standard_normal((K, C)).astype(np.float32)
    g = (rng.random(K) + 0.5).astype(np.float32)
    y = make_labels(rng, 3, 30, 33, K)
    for student in (None, S):
        loss, chi, dv, dg = _core.focal_bwd(ws, F, y, v, g, 2.0, student_features=student)
        rl, rchi, rdv, rdg = twin.focal(v, g, F, y, 2.0, student=student)
        assert rel_err(loss, rl) < TOL and rel_err(chi, rchi) < TOL
        assert rel_err(dv, rdv) < TOL and rel_err(dg, rdg) < TOL
        l2, chi2 = _core.focal_fwd(ws, F, y, v, g, 2.0, student_features=student)
        assert l2 == pytest.approx(loss, rel=1e-12) and np.array_equal(chi2, chi)


def test_focal_gamma_zero_is_plain_cross_entropy(ws, rng):
    K, C = 4, 8
    F = rng.standard_normal((2, C, 4, 4)).astype(np.float32)
    v = rng.standard_normal((K, C)).astype(np.float32)
    g = np.ones(K, np.float32)
    y = make_labels(rng, 2, 12, 12, K)
    loss, _ = _core.focal_fwd(ws, F, y, v, g, 0.0)
    Z = twin.logits(twin.weightnorm(v, g), F)
    ref, _ = twin.label_ce(Z, y, np.ones(K), 1.0 / y.size)
    assert rel_err(loss, ref) < TOL


def test_teacher_pseudo_matches_twin(ws, rng):
    K, C, H, W = 5, 16, 24, 30
    F = rng.standard_normal((3, C, 4, 5)).astype(np.float32)
    theta = rng.standard_normal((K, C)).astype(np.float32)
    masks = np.zeros((3, H, W), np.int32)
    masks[0, :12, :] = 1
    masks[0, 12:, 10:] = 7  # ids need not be consecutive
    masks[1] = rng.integers(0, 4, (H, W))
    # image 2: background only -> all ignore
    out = _core.teacher_pseudo(ws, F, masks, theta)
    assert out.dtype == np.uint8 and out.shape == (3, H, W)
    t = primaps.upsample_bilinear(
        np.einsum("kc,bchw->bkhw", theta, F).astype(np.float32), (H, W)).argmax(axis=1)
    # The C logits come from oneDNN: compare with the float64 twin where the
    # argmax is not a near tie, and exactly through mode_labels otherwise.
    ref = twin.teacher_pseudo(theta, F, masks)
    assert np.array_equal(out, ref) or np.array_equal(out, twin.mode_labels(t, masks))
    assert np.all(out[2] == 255) and np.all(out[0][masks[0] == 0] == 255)
    for b, i in ((0, 1), (0, 7), (1, 1), (1, 3)):
        assert len(np.unique(out[b][masks[b] == i])) == 1


def test_pseudo_label_mode_ties_go_to_the_smallest_class(ws):
    """Two classes with equal counts inside a mask: the smaller one wins."""
    C, K = 2, 3
    theta = np.array([[1, 0], [0, 1], [-1, -1]], np.float32)
    F = np.zeros((1, C, 1, 2), np.float32)
    F[0, :, 0, 0] = [0, 1]  # class 1 on the left half
    F[0, :, 0, 1] = [1, 0]  # class 0 on the right half
    masks = np.ones((1, 1, 2), np.int32)
    out = _core.teacher_pseudo(ws, F, masks, theta)
    assert out.tolist() == [[[0, 0]]]


def test_em_step_is_pseudo_labels_then_focal(ws, rng):
    K, C = 4, 12
    F = rng.standard_normal((2, C, 5, 5)).astype(np.float32)
    vt = rng.standard_normal((K, C)).astype(np.float32)
    gt = (rng.random(K) + 0.5).astype(np.float32)
    vs = rng.standard_normal((K, C)).astype(np.float32)
    gs = (rng.random(K) + 0.5).astype(np.float32)
    masks = rng.integers(0, 5, (2, 20, 20)).astype(np.int32)
    loss, chi, dv, dg, pseudo = _core.em_step(ws, F, masks, vt, gt, vs, gs, 2.0,
                                              return_pseudo=True)
    assert np.array_equal(pseudo, _core.teacher_pseudo(ws, F, masks,
                                                       _core.weightnorm_fwd(vt, gt)))
    ref = _core.focal_bwd(ws, F, pseudo, vs, gs, 2.0)
    assert loss == ref[0]
    for a, b in zip((chi, dv, dg), ref[1:]):
        assert np.array_equal(a, b)


def test_probe_matches_twin(ws, rng):
    K, C = 5, 10
    F = rng.standard_normal((3, C, 4, 6)).astype(np.float32)
    Wt = rng.standard_normal((K, C)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    y = make_labels(rng, 3, 13, 17, K)
    loss, dW, db = _core.probe_bwd(ws, F, y, Wt, b)
    rl, rdW, rdb = twin.probe(Wt, b, F, y)
    assert rel_err(loss, rl) < TOL and rel_err(dW, rdW) < TOL and rel_err(db, rdb) < TOL
    assert _core.probe_fwd(ws, F, y, Wt, b) == pytest.approx(loss, rel=1e-12)


def test_predict_is_argmax_of_upsampled_logits(ws, rng):
    K, C = 6, 9
    F = rng.standard_normal((40, C, 3, 4)).astype(np.float32)  # > one group of 32
    theta = rng.standard_normal((K, C)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    out = _core.em_predict(ws, F, theta, (9, 13), bias=b)
    Z = twin.logits(theta, F, b)
    ref = twin.predict(theta, F, (9, 13), bias=b)
    # equal wherever the top two classes are not within float32 rounding
    up = np.sort(rtwin.upsample_bilinear(Z, (9, 13)), axis=1)
    clear = (up[:, -1] - up[:, -2]) > 1e-4 * np.abs(up[:, -1]).max()
    assert np.array_equal(out[clear], ref[clear])
    assert clear.mean() > 0.95


# ------------------------------------------------ indexing, mirrors, threads


def test_index_reads_the_batch_in_place(ws, rng):
    K, C = 4, 8
    F = rng.standard_normal((6, C, 4, 5)).astype(np.float32)
    masks = rng.integers(0, 4, (6, 16, 20)).astype(np.int32)
    v = rng.standard_normal((K, C)).astype(np.float32)
    g = np.ones(K, np.float32)
    idx = np.array([4, 1, 1, 5])
    a = _core.em_step(ws, F, masks, v, g, v, g, 2.0, index=idx)
    b = _core.em_step(ws, F[idx], masks[idx], v, g, v, g, 2.0)
    assert a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:]))
    ka = _core.kmeans_bwd(ws, F, v, index=idx)
    kb = _core.kmeans_bwd(ws, F[idx], v)
    assert ka[0] == kb[0] and np.array_equal(ka[1], kb[1])


def test_float16_features_are_widened_exactly(ws, rng):
    # float16 batches (a feature store's dtype) are widened in C: every
    # kernel gives the bits of the float32 copy, subnormals included
    K, C = 4, 8
    F = rng.standard_normal((5, C, 4, 5)).astype(np.float16)
    F[0, 0, 0, :3] = [6e-8, -3e-6, 0.0]  # float16 subnormals and zero
    S = (F * np.float16(0.5)).astype(np.float16)
    F32, S32 = F.astype(np.float32), S.astype(np.float32)
    masks = rng.integers(0, 4, (5, 16, 20)).astype(np.int32)
    labels = make_labels(rng, 5, 16, 20, K)
    v = rng.standard_normal((K, C)).astype(np.float32)
    g = np.ones(K, np.float32)
    flip = np.array([1, 0, 1, 0, 0], bool)

    def same(a, b):
        a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))

    for f16, f32 in ((F, F32), (F.astype(np.float32), F32)):
        assert same(_core.em_step(ws, f16, masks, v, g, v * 1.1, g, 2.0, student_features=S,
                                  flip=flip),
                    _core.em_step(ws, f32, masks, v, g, v * 1.1, g, 2.0,
                                  student_features=S32, flip=flip))
    assert same(_core.kmeans_bwd(ws, F, v), _core.kmeans_bwd(ws, F32, v))
    assert same(_core.focal_bwd(ws, F, labels, v, g, 2.0), _core.focal_bwd(ws, F32, labels, v, g, 2.0))
    assert same(_core.em_predict(ws, F, v, (16, 20)), _core.em_predict(ws, F32, v, (16, 20)))
    # with an index, the rows are read as float32 (NumPy converts them)
    idx = np.array([4, 1])
    assert same(_core.em_step(ws, F, masks, v, g, v, g, 2.0, index=idx),
                _core.em_step(ws, F32[idx], masks[idx], v, g, v, g, 2.0))
    # float16 NaN / inf are refused as float32 ones are
    bad = F.copy()
    bad[1, 2, 0, 1] = np.inf
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        _core.em_step(ws, bad, masks, v, g, v, g, 2.0)


def test_flip_equals_mirrored_inputs(ws, rng):
    K, C = 4, 8
    F = rng.standard_normal((3, C, 5, 6)).astype(np.float32)
    masks = rng.integers(0, 4, (3, 20, 24)).astype(np.int32)
    v = rng.standard_normal((K, C)).astype(np.float32)
    g = (rng.random(K) + 0.5).astype(np.float32)
    flip = np.array([True, False, True])
    a = _core.em_step(ws, F, masks, v, g, v, g, 2.0, flip=flip, return_pseudo=True)
    Fm, Mm = F.copy(), masks.copy()
    Fm[flip] = Fm[flip][..., ::-1]
    Mm[flip] = Mm[flip][..., ::-1]
    b = _core.em_step(ws, Fm, Mm, v, g, v, g, 2.0, return_pseudo=True)
    assert np.array_equal(a[4], b[4])
    assert a[0] == pytest.approx(b[0], rel=1e-6)
    for x, y in zip(a[1:4], b[1:4]):
        assert rel_err(x, y) < 1e-5


def test_results_do_not_depend_on_the_thread_count(ws, threads, rng):
    K, C = 5, 16
    F = rng.standard_normal((5, C, 6, 7)).astype(np.float32)
    masks = rng.integers(0, 6, (5, 130, 60)).astype(np.int32)
    y = make_labels(rng, 5, 130, 60, K)
    v = rng.standard_normal((K, C)).astype(np.float32)
    g = (rng.random(K) + 0.5).astype(np.float32)
    flip = rng.random(5) < 0.5
    runs = []
    for n in (1, 2, 3):
        threads(n)
        runs.append((_core.em_step(ws, F, masks, v, g, v, g, 2.0, flip=flip),
                     _core.kmeans_bwd(ws, F, v),
                     _core.probe_bwd(ws, F, y, v, g)))
    for other in runs[1:]:
        for r0, r1 in zip(runs[0], other):
            assert r0[0] == r1[0]
            for a, b in zip(r0[1:], r1[1:]):
                assert np.array_equal(a, b)


# ------------------------------------------------------------------- torch


def _torch_weightnorm_conv(torch, v, g):
    conv = torch.nn.Conv2d(v.shape[1], v.shape[0], 1, bias=False).double()
    conv = torch.nn.utils.parametrizations.weight_norm(conv, dim=0)
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(
            torch.from_numpy(g.astype(np.float64)).reshape(-1, 1, 1, 1))
        conv.parametrizations.weight.original1.copy_(
            torch.from_numpy(v.astype(np.float64))[:, :, None, None])
    return conv


def test_focal_matches_torch_original_formulation(ws, rng):
    """Features upsampled to 320 x 320, weight_norm conv, softmax focal loss
    of the original code, autograd."""
    torch = torch_or_skip()
    Fn = torch.nn.functional
    K, C, B = 7, 24, 2
    F = rng.standard_normal((B, C, 40, 40)).astype(np.float32)
    v = rng.standard_normal((K, C)).astype(np.float32)
    g = (rng.random(K) + 0.5).astype(np.float32)
    y = make_labels(rng, B, 320, 320, K)
    conv = _torch_weightnorm_conv(torch, v, g)
    up = Fn.interpolate(torch.from_numpy(F).double(), (320, 320), mode="bilinear",
                        align_corners=False)
    logits = conv(up)
    chi = logits.detach().softmax(1).permute(1, 0, 2, 3).reshape(K, -1).mean(1)
    loss = Fn.cross_entropy(logits, torch.from_numpy(y).long(), weight=(1 - chi) ** 2,
                            ignore_index=255, reduction="none").mean()
    loss.backward()
    tg = conv.parametrizations.weight.original0.grad.numpy().reshape(K)
    tv = conv.parametrizations.weight.original1.grad.numpy().reshape(K, C)
    l, c, dv, dg = _core.focal_bwd(ws, F, y, v, g, 2.0)
    assert rel_err(l, loss.item()) < TOL
    assert rel_err(c, chi.numpy()) < TOL
    assert rel_err(dv, tv) < TOL and rel_err(dg, tg) < TOL


def test_kmeans_matches_torch_original(ws, rng):
    """The original ClusterLoss on F.normalize'd features and a weight-normed
    conv with g forced to 1."""
    torch = torch_or_skip()
    Fn = torch.nn.functional
    K, C = 6, 20
    F = rng.standard_normal((2, C, 8, 8)).astype(np.float32)
    v = rng.standard_normal((K, C)).astype(np.float32)
    conv = _torch_weightnorm_conv(torch, v, np.ones(K, np.float32))
    inner = conv(Fn.normalize(torch.from_numpy(F).double(), dim=1))
    probs = Fn.one_hot(inner.argmax(1), K).permute(0, 3, 1, 2).double()
    loss = -(probs * inner).sum(1).mean()
    loss.backward()
    tv = conv.parametrizations.weight.original1.grad.numpy().reshape(K, C)
    l, dv = _core.kmeans_bwd(ws, F, v)
    assert rel_err(l, loss.item()) < TOL and rel_err(dv, tv) < TOL


def test_probe_matches_torch_original(ws, rng):
    torch = torch_or_skip()
    Fn = torch.nn.functional
    K, C = 5, 16
    F = rng.standard_normal((2, C, 10, 10)).astype(np.float32)
    y = make_labels(rng, 2, 80, 80, K)
    conv = torch.nn.Conv2d(C, K, 1).double()
    logits = Fn.interpolate(conv(torch.from_numpy(F).double()), (80, 80), mode="bilinear",
                            align_corners=False)
    loss = Fn.cross_entropy(logits, torch.from_numpy(y).long(), ignore_index=255,
                            reduction="none").mean()
    loss.backward()
    Wt = conv.weight.detach().numpy().reshape(K, C).astype(np.float32)
    b = conv.bias.detach().numpy().astype(np.float32)
    l, dW, db = _core.probe_bwd(ws, F, y, Wt, b)
    assert rel_err(l, loss.item()) < TOL
    assert rel_err(dW, conv.weight.grad.numpy().reshape(K, C)) < TOL
    assert rel_err(db, conv.bias.grad.numpy()) < TOL


# --------------------------------------------------------------- bad input


def test_labels_out_of_range_are_refused(ws, rng):
    F = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    y = np.zeros((1, 6, 6), np.int64)
    y[0, 2, 2] = 5
    v = rng.standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(ValueError,
                       match=r"labels must hold values in \[0, 4\] or 255 \(ignore\), got 5"):
        _core.focal_fwd(ws, F, y, v, np.ones(5, np.float32), 2.0)
    y[0, 2, 2] = 300
    with pytest.raises(ValueError, match="got 300"):
        _core.probe_fwd(ws, F, y, v, np.ones(5, np.float32))
    y[0, 2, 2] = -1
    with pytest.raises(ValueError, match="got -1"):
        _core.label_ce_fwd(ws, rng.standard_normal((1, 5, 3, 3)).astype(np.float32), y,
                           np.ones(5, np.float32), 1.0)


def test_uint8_labels_out_of_range_are_refused(ws, rng):
    F = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    y = np.zeros((2, 6, 6), np.uint8)
    y[1, 0, 0] = 9
    v = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"labels must hold values in \[0, 2\] or 255"):
        _core.probe_bwd(ws, F, y, v, np.zeros(3, np.float32))


def test_float_labels_are_refused(ws, rng):
    F = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    v = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="labels must be an integer array, got dtype float64"):
        _core.probe_fwd(ws, F, np.zeros((1, 6, 6)), v, np.zeros(3, np.float32))


def test_negative_mask_ids_are_refused(ws, rng):
    F = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    masks = np.zeros((1, 6, 6), np.int32)
    masks[0, 1, 1] = -2
    theta = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"masks must hold values in \[0, 65535\], got -2"):
        _core.teacher_pseudo(ws, F, masks, theta)


def test_mismatched_features_and_masks_are_refused(ws, rng):
    F = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    v = rng.standard_normal((3, 4)).astype(np.float32)
    g = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"masks must have shape \(n, H, W\) with n = 2 images"):
        _core.em_step(ws, F, np.zeros((3, 6, 6), np.int32), v, g, v, g, 2.0)


def test_mismatched_student_features_are_refused(ws, rng):
    F = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    v = rng.standard_normal((3, 4)).astype(np.float32)
    g = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="student_features must have the shape of features"):
        _core.em_step(ws, F, np.zeros((2, 6, 6), np.int32), v, g, v, g, 2.0,
                      student_features=F[:, :, :2])


def test_prototype_channels_must_match(ws, rng):
    F = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    v = rng.standard_normal((3, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"v must have shape \(K, 4\)"):
        _core.kmeans_fwd(ws, F, v)


def test_nan_features_are_refused(ws, rng):
    F = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    F[1, 2, 0, 1] = np.nan
    v = rng.standard_normal((3, 4)).astype(np.float32)
    g = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        _core.em_step(ws, F, np.ones((2, 6, 6), np.int32), v, g, v, g, 2.0)
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        _core.kmeans_bwd(ws, F, v)


def test_nan_prototypes_are_refused(ws, rng):
    F = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    v = rng.standard_normal((3, 4)).astype(np.float32)
    v[0, 0] = np.inf
    with pytest.raises(ValueError, match="v contains NaN or inf"):
        _core.kmeans_fwd(ws, F, v)


def test_index_out_of_range_is_refused(ws, rng):
    F = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    v = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"index must hold image numbers in \[0, 2\), got 2"):
        _core.kmeans_fwd(ws, F, v, index=[0, 2])


def test_flip_of_wrong_length_is_refused(ws, rng):
    F = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    v = rng.standard_normal((3, 4)).astype(np.float32)
    g = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"flip must have shape \(2,\)"):
        _core.em_step(ws, F, np.ones((2, 6, 6), np.int32), v, g, v, g, 2.0, flip=[True])


def test_workspace_must_be_a_workspace(rng):
    with pytest.raises(TypeError, match="ws must be a workspace from em_workspace"):
        _core.kmeans_fwd(object(), np.zeros((1, 2, 2, 2), np.float32), np.ones((1, 2)))


def test_awkward_inputs_are_converted(ws, rng):
    """float64, Fortran-ordered and negative-stride inputs give the numbers
    of their float32 C-contiguous copies."""
    K, C = 3, 6
    F = rng.standard_normal((2, C, 4, 5))
    v = rng.standard_normal((K, C))
    ref = _core.kmeans_bwd(ws, F.astype(np.float32), v.astype(np.float32))
    for Fx in (F, np.asfortranarray(F), F[:, ::-1][:, ::-1]):
        out = _core.kmeans_bwd(ws, Fx, v)
        assert out[0] == ref[0] and np.array_equal(out[1], ref[1])
