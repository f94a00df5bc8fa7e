"""Pictures: palettes, colouring, and PNG files of the confusion matrix and
of label-map panels (valid, sensibly sized, written atomically)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import primaps
from primaps import viz

CITYSCAPES = (
    "road sidewalk parking rail_track building wall fence guard_rail bridge tunnel pole "
    "polegroup traffic_light traffic_sign vegetation terrain sky person rider car truck bus "
    "caravan trailer train motorcycle bicycle"
).split()


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib", reason="matplotlib is the optional extra viz")


@pytest.fixture
def report27(rng):
    K = 27
    low = rng.integers(0, K, (6, 10, 10))
    gt = np.repeat(np.repeat(low, 8, 1), 8, 2).astype(np.uint8)
    gt[:, :4] = 255
    pred = rng.permutation(K)[np.where(gt == 255, 0, gt)]
    noise = rng.random(pred.shape) < 0.3
    pred[noise] = rng.integers(0, K, int(noise.sum()))
    return primaps.evaluate(pred, gt, K, class_names=CITYSCAPES), pred, gt


def png_size(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        im.load()
        return im.size


# ------------------------------------------------------------------ colours


@pytest.mark.parametrize("n", [1, 3, 27, 150])
def test_default_palette_is_distinct_and_never_black(n):
    p = viz.default_palette(n)
    assert p.shape == (n, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == n
    assert (p.astype(int).sum(axis=1) > 60).all()
    np.testing.assert_array_equal(p, viz.default_palette(n))


def test_default_palette_neighbours_differ():
    p = viz.default_palette(27).astype(float)
    assert (np.abs(np.diff(p, axis=0)).sum(axis=1) > 60).all()


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_default_palette_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        viz.default_palette(n)


def test_colorize_uses_palette_and_draws_ignore_black():
    pal = np.array([[10, 20, 30], [200, 100, 0]], np.uint8)
    out = viz.colorize(np.array([[0, 1], [255, 0]]), pal)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [200, 100, 0]
    assert out[1, 0].tolist() == [0, 0, 0]
    batch = viz.colorize(np.zeros((3, 4, 5), np.uint8), pal)
    assert batch.shape == (3, 4, 5, 3)
    other = viz.colorize(np.array([[-1, 1]]), pal, ignore_index=-1)
    assert other[0, 0].tolist() == [0, 0, 0]


def test_colorize_rejects_bad_input():
    pal = viz.default_palette(3)
    with pytest.raises(ValueError, match="labels holds 5, which the palette of 3 colours does not cover"):
        viz.colorize(np.array([[0, 5]]), pal)
    with pytest.raises(TypeError, match="labels must be an integer array, got dtype float64"):
        viz.colorize(np.zeros((2, 2)), pal)
    with pytest.raises(ValueError, match=r"palette must have shape \(K, 3\), got \(3,\)"):
        viz.colorize(np.zeros((2, 2), int), np.zeros(3, np.uint8))
    with pytest.raises(TypeError, match="palette must be a uint8 array"):
        viz.colorize(np.zeros((2, 2), int), np.full((3, 3), 0.5))


# ------------------------------------------------------------------ figures


def test_confusion_png_for_27_classes(mpl, report27, tmp_path):
    report, _, _ = report27
    path = tmp_path / "confusion.png"
    fig = viz.plot_confusion(report, path)
    w, h = png_size(path)
    assert 800 <= w <= 2000 and 700 <= h <= 2000  # room for 27 names
    assert path.stat().st_size > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]  # no temp file left
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == CITYSCAPES
    assert [t.get_text() for t in ax.get_yticklabels()] == CITYSCAPES
    # row-normalised: the image holds percentages per true class
    data = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(data.sum(axis=1), 100.0)
    m = report.matched_confusion.T
    np.testing.assert_allclose(data[3, 3], 100 * m[3, 3] / m[3].sum())


def test_confusion_png_raw_counts_and_small_k(mpl, tmp_path):
    r = primaps.evaluate(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    path = tmp_path / "c.png"
    viz.plot_confusion(r, path, normalize=False, title="counts")
    w, h = png_size(path)
    assert 300 <= w <= 1000 and 300 <= h <= 1000


def test_panels_png(mpl, report27, tmp_path, rng):
    report, pred, gt = report27
    images = rng.integers(0, 256, (3, 80, 80, 3), dtype=np.uint8)
    path = tmp_path / "panels.png"
    fig = viz.plot_panels(images, gt[:3], pred[:3], pred[:3], report=report, path=path)
    w, h = png_size(path)
    assert len(fig.axes) == 12
    assert w >= 4 * 150 and h >= 3 * 150
    titles = {ax.get_title() for ax in fig.axes}
    assert {"image", "ground truth", "prediction", "pseudo label"} <= titles
    # the prediction is drawn in matched classes with the palette
    pal = viz.default_palette(27)
    ax_pred = next(ax for ax in fig.axes if ax.get_title() == "prediction")
    drawn = np.asarray(ax_pred.images[0].get_array())
    np.testing.assert_array_equal(drawn, viz.colorize(report.map_clusters(pred[0]), pal))
    ax_gt = next(ax for ax in fig.axes if ax.get_title() == "ground truth")
    assert (np.asarray(ax_gt.images[0].get_array())[:4] == 0).all()  # 255 is black


def test_panels_with_own_palette_and_float_chw_image(mpl, tmp_path, rng):
    pal = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    img = rng.standard_normal((3, 40, 40)).astype(np.float32)  # normalised, channel-first
    gt = rng.integers(0, 3, (40, 40))
    path = tmp_path / "one.png"
    fig = viz.plot_panels(img, gt, palette=pal, class_names=["a", "b", "c"], path=path)
    png_size(path)
    assert len(fig.axes) == 2
    shown = np.asarray(fig.axes[1].images[0].get_array())
    np.testing.assert_array_equal(shown, pal[gt])
    assert len(fig.legends) == 1


def test_panels_reject_bad_input(mpl, rng):
    with pytest.raises(ValueError, match="plot_panels needs at least one of image, gt, pred, pseudo"):
        viz.plot_panels()
    with pytest.raises(ValueError, match="every panel needs the same number of samples"):
        viz.plot_panels(gt=np.zeros((2, 4, 4), int), pred=np.zeros((3, 4, 4), int))
    with pytest.raises(ValueError, match=r"gt must have 2 or 3 dimensions, got shape \(4,\)"):
        viz.plot_panels(gt=np.zeros(4, int))


def test_failed_write_leaves_nothing(mpl, tmp_path, report27):
    report, _, _ = report27
    with pytest.raises(FileNotFoundError):
        viz.plot_confusion(report, tmp_path / "missing" / "c.png")
    assert list(tmp_path.iterdir()) == []


def test_pictures_never_load_pyplot(mpl, tmp_path):
    code = (
        "import sys, numpy as np, primaps, primaps.viz as v;"
        "r = primaps.evaluate(np.array([0, 1]), np.array([1, 0]), 2);"
        "v.plot_confusion(r); v.plot_panels(gt=np.array([[0, 1]]));"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)  # outside the source tree
    assert res.returncode == 0, res.stderr


def test_missing_matplotlib_names_the_extra(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    r = primaps.evaluate(np.array([0, 1]), np.array([1, 0]), 2)
    with pytest.raises(ImportError, match=r"pip install primaps\[viz\]"):
        viz.plot_confusion(r)
    with pytest.raises(ImportError, match=r"pip install primaps\[viz\]"):
        viz.plot_panels(gt=np.zeros((2, 2), int))
    # colouring needs no matplotlib
    assert viz.colorize(np.zeros((2, 2), int)).shape == (2, 2, 3)


def test_panels_of_a_real_cityscapes_frame(mpl, shared_data, tmp_path):
    root = shared_data / "cityscapes"
    img = np.asarray(Image.open(next((root / "leftImg8bit").rglob("*.png"))).convert("RGB"))
    ids = np.asarray(Image.open(next((root / "gtFine").rglob("*_labelIds.png")))).astype(np.int64)
    gt = np.where((ids >= 7) & (ids <= 33), ids - 7, 255).astype(np.uint8)
    pred = np.where(gt == 255, 0, (gt.astype(np.int64) + 5) % 27)
    report = primaps.evaluate(pred, gt, 27, class_names=CITYSCAPES)
    path = tmp_path / "frame.png"
    fig = viz.plot_panels(img, gt, pred, report=report, path=path)
    w, h = png_size(path)
    assert w > h > 150
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [CITYSCAPES[k] for k in np.unique(report.map_clusters(pred)) if k != 255]


def test_panels_draw_mask_maps(mpl, rng):
    """PriMaPs mask maps get their own column: background black, every mask
    id a colour of its own, whatever the class palette."""
    masks = np.zeros((2, 16, 16), np.int32)
    masks[:, :8] = 1
    masks[:, 8:, 8:] = 40
    gt = np.zeros((2, 16, 16), np.uint8)
    fig = viz.plot_panels(gt=gt, masks=masks, palette=np.array([[200, 0, 0]], np.uint8))
    axes = fig.axes
    assert [a.get_title() for a in axes[:2]] == ["PriMaPs masks", "ground truth"]
    pic = axes[0].get_images()[0].get_array()
    assert tuple(pic[12, 2]) == (0, 0, 0)  # background
    assert tuple(pic[0, 0]) != tuple(pic[12, 12]) and tuple(pic[0, 0]) != (0, 0, 0)


@pytest.mark.parametrize("shape", [(160, 60), (40, 400), (64, 64)])
def test_single_row_titles_are_whole_and_apart(mpl, rng, shape):
    """Titles of one row of tall, wide or square panels neither overlap nor
    leave the figure."""
    img = rng.integers(0, 256, (1, *shape, 3), dtype=np.uint8)
    lab = rng.integers(0, 5, (1, *shape))
    fig = primaps.viz.plot_panels(img, lab, lab, lab, masks=lab, panel_size=2)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(boxes) == 5
    width = fig.bbox.width
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 <= b.x0, "two titles overlap"
    assert boxes[0].x0 >= 0 and boxes[-1].x1 <= width
