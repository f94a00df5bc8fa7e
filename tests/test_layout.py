"""Feature layouts: every entry that takes features takes channels-first
maps, and channels-last maps or ViT tokens when told; a shape that fits
another layout far better is an error (or, where a channels-first input
could have it, a warning) naming the argument to pass."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import primaps
from primaps import FeatureStore, LinearProbe, PriMaPsEM
from primaps._layout import LayoutWarning, to_nchw

RNG = np.random.default_rng(0)
F = RNG.standard_normal((4, 64, 6, 6)).astype(np.float32)  # (B, C, h, w)
MASKS = RNG.integers(0, 3, (4, 12, 12)).astype(np.int32)
LABELS = RNG.integers(0, 3, (4, 12, 12)).astype(np.uint8)


def nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def tokens(x, cls=False):
    t = nhwc(x).reshape(x.shape[0], -1, x.shape[1])
    if cls:
        t = np.concatenate([np.full((x.shape[0], 1, x.shape[1]), 7.0, np.float32), t], 1)
    return t


LAYOUTS = {
    "nchw": lambda x: x,
    "nhwc": nhwc,
    "tokens": tokens,
    "tokens+cls": lambda x: tokens(x, cls=True),
}


def layout_kw(name):
    return {"layout": name.split("+")[0]}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_masks_in_every_layout_equal_the_channels_first_result(name):
    want = primaps.masks(F, out_size=12)
    got = primaps.masks(LAYOUTS[name](F), out_size=12, **layout_kw(name))
    assert np.array_equal(got, want)
    one = primaps.masks(LAYOUTS[name](F)[0], out_size=12, **layout_kw(name))  # one image
    assert np.array_equal(one, want[0])


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_priMaPsEM_in_every_layout_trains_and_predicts_as_channels_first(name):
    ref = PriMaPsEM(3, epochs=2, warmup_epochs=1, batch_size=2, seed=1).fit((F, MASKS),
                                                                           verbose=False)
    em = PriMaPsEM(3, epochs=2, warmup_epochs=1, batch_size=2, seed=1, **layout_kw(name))
    x = LAYOUTS[name](F)
    em.fit((x, MASKS), verbose=False)
    assert np.array_equal(em.teacher_.v, ref.teacher_.v)
    assert np.array_equal(em.predict(x, 12), ref.predict(F, 12))
    assert np.array_equal(em.pseudo_labels(x, MASKS), ref.pseudo_labels(F, MASKS))
    # iterables of batches and partial_fit take the layout too
    it = PriMaPsEM(3, epochs=2, warmup_epochs=1, batch_size=2, seed=1, **layout_kw(name))
    it.fit([(x[:2], MASKS[:2]), (x[2:], MASKS[2:])], verbose=False)
    it.partial_fit((x[:2], MASKS[:2]))
    assert it.step_ == 5


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_linear_probe_in_every_layout(name):
    ref = LinearProbe(3, epochs=2, batch_size=2).fit((F, LABELS), verbose=False)
    p = LinearProbe(3, epochs=2, batch_size=2, **layout_kw(name))
    x = LAYOUTS[name](F)
    p.fit((x, LABELS), verbose=False)
    assert np.array_equal(p.weight_, ref.weight_)
    assert np.array_equal(p.predict(x, 12), ref.predict(F, 12))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_feature_store_append_in_every_layout(tmp_path, name):
    s = FeatureStore(tmp_path / "s", dtype="float32")
    s.append(["a", "b", "c", "d"], LAYOUTS[name](F), **layout_kw(name))
    assert np.array_equal(s.read(["a", "b", "c", "d"]), F)


def test_channels_first_views_are_zero_copy():
    x = np.ascontiguousarray(F.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NCHW view of NHWC
    back = x.transpose(0, 2, 3, 1)
    assert np.shares_memory(to_nchw(back, "nhwc"), back)
    t = tokens(F)
    assert np.shares_memory(to_nchw(t, "tokens"), t)
    assert to_nchw(F) is F


def test_torch_tensors_and_permuted_views():
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(F)
    want = primaps.masks(F)
    assert np.array_equal(primaps.masks(t), want)
    assert np.array_equal(primaps.masks(t.permute(0, 2, 3, 1), layout="nhwc"), want)
    v = to_nchw(t.permute(0, 2, 3, 1), "nhwc")
    assert v.flags.c_contiguous and np.shares_memory(v, t.numpy())  # back to NCHW: no copy
    with pytest.raises(TypeError, match=r"requires grad: pass features\.detach\(\)"):
        primaps.masks(t.clone().requires_grad_())
    em = PriMaPsEM(3, epochs=1, warmup_epochs=1, batch_size=2)
    with pytest.raises(TypeError, match=r"\.detach\(\)"):
        em.fit((t.clone().requires_grad_(), MASKS), verbose=False)


WRONG = [
    ((2, 40, 40, 384), "layout='nhwc'"),   # channels-last DINO ViT-S maps
    ((40, 40, 384), "layout='nhwc'"),      # one channels-last map
    ((2, 1600, 384), "layout='tokens'"),   # ViT tokens read as (C, h, w)
    ((2, 1601, 768), "layout='tokens'"),   # with a CLS token
    ((2, 28, 28, 768), "layout='nhwc'"),
]


@pytest.mark.parametrize("shape,hint", WRONG)
def test_a_shape_of_another_layout_is_an_error_naming_the_argument(shape, hint):
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=hint):
        primaps.masks(x)
    em = PriMaPsEM(3)
    with pytest.raises(ValueError, match=hint):
        em.init_pca(x, verbose=False)
    if len(shape) == 4:
        with pytest.raises(ValueError, match=hint):
            FeatureStore_append(x)
        with pytest.raises(ValueError, match=hint):
            LinearProbe(3).fit((x, np.zeros((shape[0], 8, 8), np.uint8)), verbose=False)


def FeatureStore_append(x):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        FeatureStore(d + "/s").append([str(i) for i in range(len(x))], x)


def test_an_ambiguous_shape_warns_and_layout_nchw_silences_it():
    x = RNG.standard_normal((40, 40, 64)).astype(np.float32)  # (h, w, C) or 40 PCA channels?
    with pytest.warns(LayoutWarning, match="layout='nhwc'.*layout='nchw'"):
        primaps.masks(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        primaps.masks(x, layout="nchw")
        primaps.masks(F)  # the usual channels-first shapes raise nothing
        primaps.masks(np.ones((2, 3, 256, 256), np.float32) + RNG.random((2, 3, 256, 256)))


def test_bad_layout_arguments_are_clear():
    with pytest.raises(ValueError, match="layout must be"):
        primaps.masks(F, layout="NHWC")
    with pytest.raises(TypeError, match="layout must be"):
        PriMaPsEM(3, layout=1)
    with pytest.raises(ValueError, match="grid is only for layout='tokens'"):
        primaps.masks(F, grid=6)
    with pytest.raises(ValueError, match="neither grid 5 x 5"):
        primaps.masks(tokens(F), layout="tokens", grid=5)
    with pytest.raises(ValueError, match="not a square grid"):
        primaps.masks(np.ones((2, 30, 64), np.float32), layout="tokens")
    g = primaps.masks(np.ascontiguousarray(tokens(F)[:, :30]), layout="tokens", grid=(5, 6))
    assert g.shape == (4, 5, 6)


def test_the_cli_callable_backbone_takes_the_configured_layout(tmp_path):
    import subprocess
    import sys
    import textwrap

    (tmp_path / "bb.py").write_text(textwrap.dedent("""
        import numpy as np
        def tokens(images):
            B = len(images)
            x = images.reshape(B, 8, 4, 8, 4, 3).mean(axis=(2, 4)).astype(np.float32)
            f = np.concatenate([x] * 22, -1)[..., :64] / 255.0  # (B, 8, 8, 64)
            return np.concatenate([np.zeros((B, 1, 64), np.float32), f.reshape(B, 64, 64)], 1)
    """))
    from PIL import Image

    root = tmp_path / "cs"
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            img = root / "leftImg8bit" / split / "c" / f"c_{i:06d}_000019_leftImg8bit.png"
            lab = root / "gtFine" / split / "c" / f"c_{i:06d}_000019_gtFine_labelIds.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            lab.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(RNG.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
            Image.fromarray(RNG.integers(0, 34, (40, 40), dtype=np.uint8)).save(lab)
    base = [sys.executable, "-m", "primaps", "extract", "-q", "--out", "r",
            "--set", "data.dataset=cityscapes", "--set", f"data.root={root}",
            "--set", "data.resize=32", "--set", "data.crop=32",
            "--set", "backbone.callable=bb:tokens", "--set", "backbone.flip=false"]
    p = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "layout='tokens'" in p.stderr and "backbone.layout" in p.stderr
    p = subprocess.run(base + ["--set", "backbone.layout=tokens"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert FeatureStore(tmp_path / "r/features/train", mode="r").item_shape == (64, 8, 8)


def test_tokens_of_a_model_of_unusual_width_warn():
    """(B, N + 1, C) tokens of a small model (C = 48, not a usual width)
    read as one (C, h, w) map: a warning, as a map of 65 rows could be real."""
    x = RNG.standard_normal((48, 65, 48)).astype(np.float32)
    with pytest.warns(LayoutWarning, match="layout='tokens'.*layout='nchw'"):
        primaps.masks(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        primaps.masks(x, layout="nchw")
        primaps.masks(RNG.standard_normal((64, 49, 49)).astype(np.float32))  # 7 x 7 x 7 rows
