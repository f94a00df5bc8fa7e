"""The dense CRF as a refinement step: primaps.masks(..., images, crf=True),
PriMaPsEM.predict and LinearProbe.predict with crf=True (the original's
"with CRF" rows).  Constructed cases: an image of two colour regions whose
boundary does not follow the 8-pixel grid of the features, so that the
bilinearly upsampled logits blur it and the CRF can move it onto the edge.
"""

from __future__ import annotations

import numpy as np
import pytest

import primaps
from primaps import _core

S = 8  # pixels per feature


def scene(rng, H=64, W=72, slope=0.5, offset=37.0, proj=None):
    """(image (H, W, 3) uint8, region (H, W) bool, features (16, H/S, W/S),
    the projection (16, 2) of the regions' one-hot into the features)."""
    yy, xx = np.mgrid[0:H, 0:W]
    region = (xx + slope * yy) > offset
    img = np.empty((H, W, 3), np.float64)
    img[~region] = (40, 60, 200)
    img[region] = (220, 180, 40)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    onehot = np.stack([~region, region]).astype(np.float32)
    low = onehot.reshape(2, H // S, S, W // S, S).mean((2, 4))
    if proj is None:
        proj = rng.normal(size=(16, 2)).astype(np.float32)
    feat = np.einsum("ck,khw->chw", proj, low) + rng.normal(0, 0.05, (16, H // S, W // S))
    return img, region, feat.astype(np.float32), proj


def region_accuracy(labels, region):
    """Pixel accuracy of the best one-to-one matching of two labels."""
    best = 0.0
    for a in np.unique(labels):
        best = max(best, ((labels == a) == region).mean())
    return best


def batch(rng, n=3):
    """n scenes whose features share one projection."""
    proj = rng.normal(size=(16, 2)).astype(np.float32)
    scenes = [scene(rng, offset=30.0 + 7 * b, slope=0.3 + 0.2 * b, proj=proj) for b in range(n)]
    imgs = np.stack([s[0] for s in scenes])
    regions = np.stack([s[1] for s in scenes])
    feats = np.stack([s[2] for s in scenes])
    return imgs, regions, feats, scenes


# --------------------------------------------------------------------- masks


def test_masks_crf_moves_the_boundary_onto_the_image_edge(rng):
    img, region, feat, _ = scene(rng)
    H, W = region.shape
    plain = primaps.masks(feat, out_size=(H, W))
    refined, info = primaps.masks(feat, images=img, crf=True, return_info=True)
    assert refined.shape == (H, W) and refined.dtype == np.int32
    assert region_accuracy(plain, region) < 0.97
    assert region_accuracy(refined, region) >= 0.995
    assert region_accuracy(refined, region) > region_accuracy(plain, region)
    assert info["n_masks"] == refined.max()


def test_masks_crf_is_the_original_recipe(rng):
    """Upsampled soft logits, dense_crf on the BGR image with the 1e-5 floor,
    argmax, ids renumbered in extraction order."""
    img, _, feat, _ = scene(rng)
    H, W = img.shape[:2]
    _, soft = primaps.masks(feat, return_soft=True)
    q = primaps.dense_crf(img[..., ::-1], primaps.upsample_bilinear(soft, (H, W)), min_prob=1e-5)
    want = q.argmax(0)
    ids = np.unique(want[want > 0])
    lut = np.zeros(soft.shape[0], np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    got = primaps.masks(feat, images=img, crf=True)
    assert np.array_equal(got, lut[want])
    # a DenseCRF sets other parameters
    other = primaps.DenseCRF(iterations=3, smoothness_weight=0.0)
    q = other(img[..., ::-1], primaps.upsample_bilinear(soft, (H, W)))
    got = primaps.masks(feat, images=img, crf=other)
    assert np.array_equal(got > 0, q.argmax(0) > 0)


def test_masks_crf_batch_equals_loop_and_thread_counts(rng, threads):
    imgs, _, feats, _ = batch(rng)
    ref = None
    for n in (1, 2, 3):
        threads(n)
        maps, soft, info = primaps.masks(feats, images=imgs, crf=True, return_soft=True,
                                         return_info=True)
        assert maps.shape == imgs.shape[:3] and len(soft) == 3
        if ref is None:
            ref = maps
            for b in range(3):
                assert np.array_equal(maps[b], primaps.masks(feats[b], images=imgs[b], crf=True))
        assert np.array_equal(maps, ref), n
        assert list(info["n_masks"]) == [m.max() for m in maps]


def test_masks_crf_ids_are_consecutive(rng):
    imgs, _, feats, _ = batch(rng)
    for m in primaps.masks(feats, images=imgs, crf=True, max_masks=4):
        ids = np.unique(m)
        ids = ids[ids > 0]
        assert np.array_equal(ids, np.arange(1, ids.size + 1))


def test_masks_crf_out_size_equal_to_the_images_is_accepted(rng):
    img, _, feat, _ = scene(rng)
    H, W = img.shape[:2]
    a = primaps.masks(feat, images=img, crf=True, out_size=(H, W))
    assert np.array_equal(a, primaps.masks(feat, images=img, crf=True))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(crf=True), ValueError, "crf needs the images"),
        (dict(crf=True, images="img_f32"), TypeError, "images must be a uint8 array.*float32"),
        (dict(crf=True, images="img_2d"), ValueError, r"images must have shape \(H, W, 3\)"),
        (dict(crf=True, images="img_batch"), ValueError, r"images must have shape \(H, W, 3\)"),
        (dict(crf=True, images="img", out_size=(32, 32)), ValueError,
         r"out_size must be None or the images' size \(64, 72\)"),
        (dict(crf="yes", images="img"), TypeError, "crf must be a bool or a primaps.DenseCRF"),
        (dict(images="img_f32"), TypeError, "images must be a uint8 array"),
        (dict(crf=True, images=None), ValueError, "crf needs the images"),
        (dict(crf=True, images=7), TypeError, "images must be a uint8 array, got int"),
    ],
)
def test_masks_crf_bad_input(rng, kwargs, exc, match):
    img, _, feat, _ = scene(rng)
    named = {"img": img, "img_f32": img.astype(np.float32), "img_2d": img[..., 0],
             "img_batch": img[None]}
    if isinstance(kwargs.get("images"), str):
        kwargs = dict(kwargs, images=named[kwargs["images"]])
    with pytest.raises(exc, match=match):
        primaps.masks(feat, **kwargs)


def test_masks_crf_batch_bad_image_count(rng):
    imgs, _, feats, _ = batch(rng)
    with pytest.raises(ValueError, match=r"one image per features image \(3\), got 2"):
        primaps.masks(feats, images=imgs[:2], crf=True)
    with pytest.raises(ValueError, match=r"images must have shape \(B, H, W, 3\)"):
        primaps.masks(feats, images=imgs[0], crf=True)


# -------------------------------------------------------- estimators' predict


def fitted_em(proj):
    """A PriMaPsEM whose prototypes separate the two regions of scene()."""
    em = primaps.PriMaPsEM(n_classes=2)
    return em.init_from(np.linalg.pinv(proj).astype(np.float32))


def test_em_predict_crf_matches_the_recipe_and_helps(rng):
    imgs, regions, feats, scenes = batch(rng)
    em = fitted_em(scenes[0][3])
    H, W = regions.shape[1:]
    plain = em.predict(feats, (H, W))
    refined = em.predict(feats, (H, W), images=imgs, crf=True)
    assert refined.shape == (3, H, W) and refined.dtype == np.int32
    for b in range(3):
        assert region_accuracy(refined[b], regions[b]) >= 0.99
        assert region_accuracy(refined[b], regions[b]) > region_accuracy(plain[b], regions[b])
    # the recipe: logits theta . F upsampled, dense_crf on BGR, floor 1e-5
    theta = em.prototypes("teacher")
    logits = np.einsum("kc,bchw->bkhw", theta, feats).astype(np.float32)
    q = primaps.dense_crf(imgs[..., ::-1], primaps.upsample_bilinear(logits, (H, W)), min_prob=1e-5)
    agree = (q.argmax(1) == refined).mean()
    assert agree >= 0.999  # logits summed in another order: near ties may differ
    # single image, student, and the size as an int on a square crop
    one = em.predict(feats[1], (H, W), which="student", images=imgs[1], crf=True)
    assert one.shape == (H, W)
    sq = em.predict(feats[:, :, :8, :8], 64, images=np.ascontiguousarray(imgs[:, :, :64]), crf=True)
    assert sq.shape == (3, 64, 64)


def test_em_predict_crf_thread_counts(rng, threads):
    imgs, regions, feats, scenes = batch(rng, n=5)
    em = fitted_em(scenes[0][3])
    H, W = regions.shape[1:]
    ref = None
    for n in (1, 2, 3, 7):
        threads(n)
        out = em.predict(feats, (H, W), images=imgs, crf=True)
        if ref is None:
            ref = out
        assert np.array_equal(out, ref), n


def test_em_predict_crf_bad_input(rng):
    imgs, regions, feats, scenes = batch(rng)
    em = fitted_em(scenes[0][3])
    H, W = regions.shape[1:]
    with pytest.raises(ValueError, match="crf needs the images"):
        em.predict(feats, (H, W), crf=True)
    with pytest.raises(ValueError, match=r"size must be the images' size \(64, 72\)"):
        em.predict(feats, (32, 36), images=imgs, crf=True)
    with pytest.raises(ValueError, match=r"one image per features image \(3\), got 1"):
        em.predict(feats, (H, W), images=imgs[:1], crf=True)
    with pytest.raises(TypeError, match="images must be a uint8 array"):
        em.predict(feats, (H, W), images=imgs.astype(np.int16), crf=True)
    with pytest.raises(ValueError, match=r"images must have shape \(H, W, 3\)"):
        em.predict(feats[0], (H, W), images=imgs, crf=True)
    with pytest.raises(TypeError, match="crf must be a bool"):
        em.predict(feats, (H, W), images=imgs, crf="on")
    # mismatched images are refused without crf too
    with pytest.raises(ValueError, match="one image per features image"):
        em.predict(feats, (H, W), images=imgs[:2])
    bad = feats.copy()
    bad[1, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        em.predict(bad, (H, W), images=imgs, crf=True)


def test_probe_predict_crf(rng):
    imgs, regions, feats, scenes = batch(rng)
    probe = primaps.LinearProbe(n_classes=2)
    probe.weight_ = np.linalg.pinv(scenes[0][3]).astype(np.float32)
    probe.bias_ = np.array([0.1, -0.1], np.float32)
    H, W = regions.shape[1:]
    plain = probe.predict(feats, (H, W))
    refined = probe.predict(feats, (H, W), images=imgs, crf=True)
    assert refined.shape == plain.shape == (3, H, W)
    logits = (np.einsum("kc,bchw->bkhw", probe.weight_, feats)
              + probe.bias_[None, :, None, None]).astype(np.float32)
    q = primaps.dense_crf(imgs[..., ::-1], primaps.upsample_bilinear(logits, (H, W)), min_prob=1e-5)
    assert (q.argmax(1) == refined).mean() >= 0.999
    assert probe.predict(feats[0], (H, W), images=imgs[0], crf=True).shape == (H, W)
    with pytest.raises(ValueError, match="crf needs the images"):
        probe.predict(feats, (H, W), crf=True)


def test_refine_helpers_reject_bad_sizes():
    from primaps.crf import as_size2

    assert as_size2(5) == (5, 5) and as_size2((3, 4)) == (3, 4)
    with pytest.raises(TypeError, match="size must be an int or a pair"):
        as_size2("big")
    assert _core.upsample_bilinear(np.zeros((1, 2, 2), np.float32), (4, 4)).shape == (1, 4, 4)
