"""The ablation "EM without masks": batches whose masks are None take the
teacher's own label-resolution argmax as the pseudo label."""

import numpy as np
import pytest

import primaps


def toy(rng, n=6, C=12, K=3, h=4, w=4):
    protos = rng.standard_normal((K, C)).astype(np.float32) * 2
    lab = rng.integers(0, K, (n, h, w))
    F = protos[lab].transpose(0, 3, 1, 2) + 0.5 * rng.standard_normal((n, C, h, w))
    return np.ascontiguousarray(F, np.float32)


def started(F, K=3, **kw):
    em = primaps.PriMaPsEM(K, batch_size=3, hflip=False, **kw)
    em.init_pca(F, verbose=False)
    em.warmup(F, epochs=1, verbose=False)
    return em


def test_no_masks_equals_one_mask_per_pixel(rng):
    """The mode over a one-pixel mask is the teacher's argmax at that pixel:
    masks=None must give the step of per-pixel masks, to float rounding."""
    F = toy(rng)
    H, W = 8, 8
    ids = np.arange(1, H * W + 1, dtype=np.int32).reshape(H, W)
    pixel_masks = np.broadcast_to(ids, (F.shape[0], H, W)).copy()
    a, b = started(F), started(F)
    for _ in range(3):
        a.partial_fit((F, None), label_size=(H, W))
        b.partial_fit((F, pixel_masks))
    np.testing.assert_allclose(a.student_.v, b.student_.v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.student_.g, b.student_.g, rtol=1e-5, atol=1e-6)
    assert a.loss_history_ == pytest.approx(b.loss_history_, rel=1e-5)


def test_no_masks_fit_from_arrays_and_iterables(rng):
    F = toy(rng)
    a = primaps.PriMaPsEM(3, warmup_epochs=1, epochs=2, batch_size=3, hflip=True, seed=1)
    a.fit((F, None), verbose=False, label_size=8)
    assert a.epoch_ == 2 and a.step_ == 4
    batches = [(F[:3], None), (F[3:], None)]
    b = primaps.PriMaPsEM(3, warmup_epochs=1, epochs=2, batch_size=3, hflip=True, seed=1)
    b.fit(batches, verbose=False, label_size=(8, 8))
    assert b.step_ == 4 and np.all(np.isfinite(b.teacher_.v))


def test_no_masks_flip_is_consistent(rng):
    """Features are mirrored with their argmax: with and without hflip the
    steps agree to rounding (the model is per pixel)."""
    F = toy(rng)
    a, b = started(F), started(F)
    b.hflip = True
    for _ in range(2):
        a.partial_fit((F, None), label_size=(8, 8))
        b.partial_fit((F, None), label_size=(8, 8))
    np.testing.assert_allclose(a.student_.v, b.student_.v, rtol=1e-4, atol=1e-5)


def test_no_masks_bad_input(rng):
    F = toy(rng)
    em = started(F)
    with pytest.raises(ValueError, match="label_size"):
        em.partial_fit((F, None), label_size=0)
    with pytest.raises(TypeError, match="label_size"):
        em.partial_fit((F, None), label_size="big")
    with pytest.raises(ValueError, match="masks may be None"):
        primaps.PriMaPsEM(3, epochs=1).fit([(F,)], verbose=False)
