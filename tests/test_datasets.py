"""Dataset loaders on the real sample files (Cityscapes, Potsdam) and on a
small COCO-Stuff folder written here; the protocol; errors that name paths."""

import pickle
import re
import shutil

import numpy as np
import pytest
import scipy.io
from conftest import torch_or_skip
from PIL import Image

from primaps.datasets import (
    Cityscapes,
    CocoStuff,
    DatasetFileError,
    Potsdam,
    Protocol,
    collate,
)
from primaps.datasets.protocol import crop_box, resized_size

CS_FRAME = "frankfurt_000000_000294"


def _cs_files(root):
    img = root / "leftImg8bit/val/frankfurt" / f"{CS_FRAME}_leftImg8bit.png"
    lbl = root / "gtFine/val/frankfurt" / f"{CS_FRAME}_gtFine_labelIds.png"
    return img, lbl


@pytest.fixture
def cs_copy(shared_data, tmp_path):
    """A writable copy of the Cityscapes sample (image + labelIds only)."""
    src_img, src_lbl = _cs_files(shared_data / "cityscapes")
    img, lbl = _cs_files(tmp_path / "cs")
    img.parent.mkdir(parents=True)
    lbl.parent.mkdir(parents=True)
    shutil.copy(src_img, img)
    shutil.copy(src_lbl, lbl)
    return tmp_path / "cs"


@pytest.fixture
def pd_copy(shared_data, tmp_path):
    shutil.copytree(shared_data / "potsdam", tmp_path / "pd")
    return tmp_path / "pd"


# ---------------------------------------------------------------- protocol


def test_resized_size_truncates_the_long_side_like_torchvision():
    assert resized_size(256, 128, 320) == (640, 320)
    assert resized_size(375, 500, 320) == (320, 426)  # 426.67 -> 426
    assert resized_size(500, 375, 322) == (429, 322)  # 429.33 -> 429
    assert resized_size(200, 200, 320) == (320, 320)


def test_crop_box_rounds_half_to_even_like_torchvision():
    assert crop_box(640, 320, 320) == (160, 0, 480, 320)
    assert crop_box(321, 320, 320) == (0, 0, 320, 320)  # round(0.5) = 0
    assert crop_box(323, 320, 320) == (2, 0, 322, 320)  # round(1.5) = 2
    assert crop_box(320, 426, 320) == (0, 53, 320, 373)


@pytest.mark.parametrize("kwargs,err,msg", [
    (dict(resize=320, crop=400), ValueError, "crop must not exceed resize .* crop=400 and resize=320"),
    (dict(resize=0, crop=0), ValueError, "resize must be a positive integer, got 0"),
    (dict(resize="320"), TypeError, "resize must be a positive integer, got '320'"),
    (dict(resize=320, crop=2.5), TypeError, "crop must be a positive integer, got 2.5"),
])  # fmt: skip
def test_protocol_rejects_bad_sizes(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        Protocol(**kwargs)


def test_protocol_downscales_with_antialiasing():
    # A 1-pixel checkerboard shrunk 4x: antialiased bilinear averages it to
    # grey; plain (non-antialiased) bilinear would keep extreme values.
    board = ((np.indices((1280, 1280)).sum(0) % 2) * 255).astype(np.uint8)
    image = Image.fromarray(np.repeat(board[:, :, None], 3, axis=2))
    out = Protocol().image(image)
    assert out.shape == (320, 320, 3) and out.dtype == np.uint8
    assert 120 <= out.min() and out.max() <= 135


# -------------------------------------------------------------- cityscapes


def test_cityscapes_sample(shared_data):
    root = shared_data / "cityscapes"
    ds = Cityscapes(root, "val")
    assert len(ds) == 1 and ds.ids == [CS_FRAME] and ds.n_classes == 27
    assert ds.palette.shape == (27, 3) and ds.palette.dtype == np.uint8
    image, label = ds[0]
    assert image.shape == (320, 320, 3) and image.dtype == np.uint8
    assert label.shape == (320, 320) and label.dtype == np.uint8
    # the protocol written out: 256x128 -> 640x320, crop columns 160..480
    src_img, src_lbl = _cs_files(root)
    with Image.open(src_img) as im:
        expected_image = np.asarray(im.convert("RGB").resize((640, 320), Image.BILINEAR))[:, 160:480]
    with Image.open(src_lbl) as im:
        ids = np.asarray(im.resize((640, 320), Image.NEAREST))[:, 160:480].astype(int)
    expected_label = np.where((ids >= 7) & (ids <= 33), ids - 7, 255)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(label, expected_label)
    # label ids present in the frame: 1-4 ignore, 7 road ... 26 car
    assert set(np.unique(label)) == {0, 1, 4, 6, 10, 13, 14, 16, 17, 19, 255}
    assert ds[-1][1].tobytes() == label.tobytes()


def test_cityscapes_label_mapping_every_id(cs_copy):
    _, lbl = _cs_files(cs_copy)
    ids = np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(8, 0).repeat(16, 1)  # 128x256
    Image.fromarray(ids).save(lbl)
    ds = Cityscapes(cs_copy, "val", resize=128, crop=128)
    _, label = ds[0]
    got = label[::8, ::16]  # one pixel per id block of the left half (crop 64..192)
    expected = ids[::8, 64:192:16].astype(int)
    expected = np.where((expected >= 7) & (expected <= 33), expected - 7, 255)
    np.testing.assert_array_equal(got, expected)


def test_cityscapes_patch14_protocol(shared_data):
    image, label = Cityscapes(shared_data / "cityscapes", "val", resize=322, crop=322)[0]
    assert image.shape == (322, 322, 3) and label.shape == (322, 322)


def test_cityscapes_missing_split_names_the_expected_folder(shared_data):
    root = shared_data / "cityscapes"
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "leftImg8bit" / "train"))):
        Cityscapes(root, "train")


def test_cityscapes_root_pointing_elsewhere(shared_data):
    with pytest.raises(FileNotFoundError, match=re.escape(str(shared_data / "leftImg8bit" / "val"))):
        Cityscapes(shared_data, "val")


def test_cityscapes_misnamed_label_folder(cs_copy):
    (cs_copy / "gtFine").rename(cs_copy / "gtfine")
    with pytest.raises(FileNotFoundError, match=re.escape(str(cs_copy / "gtFine" / "val"))):
        Cityscapes(cs_copy, "val")


def test_cityscapes_missing_label_file(cs_copy):
    _, lbl = _cs_files(cs_copy)
    lbl.unlink()
    with pytest.raises(FileNotFoundError, match="1 label maps are missing: expected " + re.escape(str(lbl))):
        Cityscapes(cs_copy, "val")


def test_cityscapes_no_images(cs_copy):
    img, _ = _cs_files(cs_copy)
    img.unlink()
    with pytest.raises(FileNotFoundError, match="no images found"):
        Cityscapes(cs_copy, "val")


def test_bad_split(shared_data):
    with pytest.raises(ValueError, match="split must be one of 'train', 'val', got 'test'"):
        Cityscapes(shared_data / "cityscapes", "test")


def test_corrupt_image_names_the_file(cs_copy):
    img, _ = _cs_files(cs_copy)
    img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    ds = Cityscapes(cs_copy, "val")
    with pytest.raises(DatasetFileError, match=re.escape(str(img)) + ": cannot read the image") as e:
        ds[0]
    assert e.value.path == str(img)


def test_truncated_image_names_the_file(cs_copy):
    img, _ = _cs_files(cs_copy)
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFileError, match=re.escape(str(img))):
        Cityscapes(cs_copy, "val")[0]


def test_label_of_the_wrong_size_names_the_file(cs_copy):
    _, lbl = _cs_files(cs_copy)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(lbl)
    with pytest.raises(DatasetFileError, match=re.escape(str(lbl)) + ": the label map is 10x10"):
        Cityscapes(cs_copy, "val")[0]


def test_rgb_label_names_the_file(cs_copy):
    _, lbl = _cs_files(cs_copy)
    Image.fromarray(np.zeros((128, 256, 3), np.uint8)).save(lbl)
    with pytest.raises(DatasetFileError, match=re.escape(str(lbl)) + ".*single-channel, got mode RGB"):
        Cityscapes(cs_copy, "val")[0]


def test_index_errors(shared_data):
    ds = Cityscapes(shared_data / "cityscapes", "val")
    with pytest.raises(IndexError, match="index 1 is out of range for 1 items"):
        ds[1]
    with pytest.raises(TypeError, match="index must be an integer, got str"):
        ds["0"]


# ----------------------------------------------------------------- potsdam


POTSDAM_MERGE = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}


def _merge(gt):
    out = np.full(gt.shape, 255)
    for fine, coarse in POTSDAM_MERGE.items():
        out[gt == fine] = coarse
    return out


def test_potsdam_sample(shared_data):
    root = shared_data / "potsdam"
    ds = Potsdam(root, "train")
    assert ds.ids == ["8550"] and ds.class_names == ("road", "building", "vegetation")
    image, label = ds[0]
    assert image.shape == (320, 320, 3) and label.shape == (320, 320)
    raw = scipy.io.loadmat(root / "imgs" / "8550.mat")["img"]
    gt = scipy.io.loadmat(root / "gt" / "8550.mat")["gt"]
    expected_image = np.asarray(Image.fromarray(raw[:, :, :3]).resize((320, 320), Image.BILINEAR))
    np.testing.assert_array_equal(image, expected_image)
    coarse = _merge(gt)
    np.testing.assert_array_equal(
        label, np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((320, 320), Image.NEAREST))
    )
    # per-class shares survive a 200 -> 320 nearest upscale within a few %
    for c in (0, 1, 2, 255):
        assert abs((label == c).mean() - (coarse == c).mean()) < 0.02


def test_potsdam_splits(shared_data):
    root = shared_data / "potsdam"
    assert Potsdam(root, "val").ids == ["8551"]
    unl = Potsdam(root, "unlabelled_train")
    assert unl.ids == ["8552"] and unl[0][1] is None and unl[0][0].shape == (320, 320, 3)
    every = Potsdam(root, "all")
    assert every.ids == ["8550", "8551", "8552"]
    assert [item[1] is None for item in (every[0], every[1], every[2])] == [False, False, True]
    np.testing.assert_array_equal(every[1][1], Potsdam(root, "val")[0][1])


def test_potsdam_every_fine_value_and_four_channels(pd_copy):
    fine = np.array([[0, 1, 2, 3], [4, 5, 6, 255], [-1, 1000, 7, 8], [3, 2, 1, 0]], dtype=np.int32)
    gt = fine.repeat(20, 0).repeat(20, 1)  # 80x80: the protocol at 80/80 is the identity
    rgb = np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)
    ir = np.full((80, 80, 1), 7, np.uint8)
    scipy.io.savemat(pd_copy / "gt" / "8550.mat", {"gt": gt})
    scipy.io.savemat(pd_copy / "imgs" / "8550.mat", {"img": np.concatenate([rgb, ir], axis=2)})
    image4, label = Potsdam(pd_copy, "train", resize=80, crop=80)[0]
    np.testing.assert_array_equal(label, _merge(gt))
    assert set(np.unique(label)) == {0, 1, 2, 255}
    np.testing.assert_array_equal(image4, rgb)
    scipy.io.savemat(pd_copy / "imgs" / "8550.mat", {"img": rgb})
    image3, _ = Potsdam(pd_copy, "train", resize=80, crop=80)[0]
    np.testing.assert_array_equal(image4, image3)


def test_potsdam_missing_gt_folder(pd_copy):
    shutil.rmtree(pd_copy / "gt")
    with pytest.raises(FileNotFoundError, match=re.escape(str(pd_copy / "gt"))):
        Potsdam(pd_copy, "val")
    assert Potsdam(pd_copy, "unlabelled_train")[0][1] is None


def test_potsdam_missing_split_list(pd_copy):
    (pd_copy / "labelled_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(pd_copy / "labelled_test.txt"))):
        Potsdam(pd_copy, "val")


def test_potsdam_missing_image_file(pd_copy):
    (pd_copy / "imgs" / "8551.mat").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(pd_copy / "imgs" / "8551.mat"))):
        Potsdam(pd_copy, "val")


def test_potsdam_corrupt_mat_names_the_file(pd_copy):
    path = pd_copy / "imgs" / "8551.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 10)
    with pytest.raises(DatasetFileError, match=re.escape(str(path)) + ": cannot read the MATLAB file"):
        Potsdam(pd_copy, "val")[0]


def test_potsdam_wrong_key_and_shape_name_the_file(pd_copy):
    path = pd_copy / "gt" / "8551.mat"
    scipy.io.savemat(path, {"label": np.zeros((200, 200), np.int32)})
    with pytest.raises(DatasetFileError, match=re.escape(str(path)) + ": the MATLAB file has no variable 'gt'"):
        Potsdam(pd_copy, "val")[0]
    img = pd_copy / "imgs" / "8551.mat"
    scipy.io.savemat(img, {"img": np.zeros((200, 200), np.uint8)})
    with pytest.raises(DatasetFileError, match=re.escape(str(img)) + r": 'img' must have shape \(H, W, 3\)"):
        Potsdam(pd_copy, "val")[0]


# -------------------------------------------------------------- cocostuff

# Coarse class of each fine id 0..181 of the stuffthingmaps, as in the
# STEGO / PriMaPs fine_to_coarse table: things as (first, last, coarse) runs,
# stuff ids 91..181 one by one.
COCO_THINGS = [(0, 0, 9), (1, 8, 11), (9, 14, 8), (15, 24, 7), (25, 32, 6), (33, 42, 10),
               (43, 50, 5), (51, 60, 2), (61, 70, 3), (71, 76, 0), (77, 82, 1), (83, 90, 4)]  # fmt: skip
COCO_STUFF = [17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21,
              15, 25, 13, 13, 13, 13, 13, 22, 26, 14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17,
              16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20,
              17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18,
              18, 18, 18, 18, 18, 18, 26, 26, 19, 19, 24]  # fmt: skip


def coco_expected():
    table = np.full(256, 255)
    for first, last, coarse in COCO_THINGS:
        table[first : last + 1] = coarse
    table[91:182] = COCO_STUFF
    return table


def make_coco(root, shared_data, split="val", n=3):
    """A COCO-Stuff folder with ids from the real curated list: the first
    image 320x320 with a label holding every value 0..255 in 20x20 blocks,
    the others JPEGs of COCO-like sizes."""
    sub = {"train": "train2017", "val": "val2017"}[split]
    lst = shared_data / "cocostuff/curated" / sub / "Coco164kFull_Stuff_Coarse_7.txt"
    ids = lst.read_text().split()[:n]
    (root / "curated" / sub).mkdir(parents=True)
    (root / "curated" / sub / lst.name).write_text("\n".join(ids) + "\n")
    (root / "images" / sub).mkdir(parents=True)
    (root / "annotations" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [(320, 320), (640, 480), (375, 500)]
    for k, i in enumerate(ids):
        w, h = sizes[k % 3]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / sub / f"{i}.jpg", quality=90)  # fmt: skip
        if k == 0:
            fine = np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(20, 0).repeat(20, 1)
        else:
            fine = rng.integers(0, 182, (h, w)).astype(np.uint8)
        Image.fromarray(fine).save(root / "annotations" / sub / f"{i}.png")
    return ids


def test_cocostuff_whole_fine_to_coarse_table(tmp_path, shared_data):
    ids = make_coco(tmp_path / "coco", shared_data)
    ds = CocoStuff(tmp_path / "coco", "val")
    assert ds.ids == ids == ["000000000139", "000000000724", "000000000785"]
    assert ds.n_classes == 27 and ds.palette.shape == (27, 3)
    image, label = ds[0]
    assert image.shape == (320, 320, 3) and label.dtype == np.uint8
    fine = np.arange(256).reshape(16, 16)
    np.testing.assert_array_equal(label[::20, ::20], coco_expected()[fine])
    assert set(np.unique(label)) == set(range(27)) | {255}
    for k in (1, 2):
        image, label = ds[k]
        assert image.shape == (320, 320, 3) and label.shape == (320, 320)
        assert label.max() < 27


def test_cocostuff_train_split_and_missing_files(tmp_path, shared_data):
    ids = make_coco(tmp_path / "coco", shared_data, split="train", n=2)
    assert CocoStuff(tmp_path / "coco", "train").ids == ids
    missing = tmp_path / "coco/annotations/train2017" / f"{ids[1]}.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="1 label maps of the curated list are missing: expected "
                       + re.escape(str(missing))):  # fmt: skip
        CocoStuff(tmp_path / "coco", "train")


def test_cocostuff_partial_download_with_allow_missing(tmp_path, shared_data):
    ids = make_coco(tmp_path / "coco", shared_data, split="val", n=3)
    (tmp_path / "coco/images/val2017" / f"{ids[0]}.jpg").unlink()
    (tmp_path / "coco/annotations/val2017" / f"{ids[2]}.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"allow_missing=True\) uses the ones present"):
        CocoStuff(tmp_path / "coco", "val")
    with pytest.warns(UserWarning, match="1 of the 3 images of the curated list are present"):
        ds = CocoStuff(tmp_path / "coco", "val", allow_missing=True)
    assert ds.ids == [ids[1]] and ds.n_listed == 3 and len(ds) == 1
    assert ds[0][0].shape == (320, 320, 3)
    for name in ids:
        (tmp_path / "coco/images/val2017" / f"{name}.jpg").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="none of the 3 images"):
        CocoStuff(tmp_path / "coco", "val", allow_missing=True)
    with pytest.raises(TypeError, match="allow_missing"):
        CocoStuff(tmp_path / "coco", "val", allow_missing="yes")


def test_cocostuff_empty_list_names_the_file(tmp_path, shared_data):
    make_coco(tmp_path / "coco", shared_data, n=1)
    lst = tmp_path / "coco/curated/val2017/Coco164kFull_Stuff_Coarse_7.txt"
    lst.write_text("\n\n")
    with pytest.raises(DatasetFileError, match=re.escape(str(lst)) + ": the image list holds no image ids"):
        CocoStuff(tmp_path / "coco", "val")


def test_cocostuff_sample_without_images_names_the_folder(shared_data):
    root = shared_data / "cocostuff"
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "images" / "val2017"))):
        CocoStuff(root, "val")


def test_cocostuff_missing_list(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(
            str(tmp_path / "curated/train2017/Coco164kFull_Stuff_Coarse_7.txt"))):  # fmt: skip
        CocoStuff(tmp_path, "train")


# ------------------------------------------------------ pickling, DataLoader


def test_collate_stacks_and_keeps_unlabelled(shared_data):
    every = Potsdam(shared_data / "potsdam", "all")
    images, labels = collate([every[0], every[1]])
    assert images.shape == (2, 320, 320, 3) and labels.shape == (2, 320, 320)
    images, labels = collate([every[2]])
    assert images.shape == (1, 320, 320, 3) and labels is None
    _, labels = collate([every[0], every[2]])
    assert isinstance(labels, list) and labels[1] is None


def test_datasets_pickle(shared_data):
    for ds in (Cityscapes(shared_data / "cityscapes", "val"), Potsdam(shared_data / "potsdam", "all")):
        copy = pickle.loads(pickle.dumps(ds))
        assert copy.ids == ds.ids and repr(copy) == repr(ds)
        np.testing.assert_array_equal(copy[0][0], ds[0][0])


# Python >= 3.12 warns about fork() in a process that has threads (torch's).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_torch_dataloader_with_workers(shared_data):
    torch = torch_or_skip()
    from torch.utils.data import DataLoader

    ds = Potsdam(shared_data / "potsdam", "all")
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [2, 1]
    np.testing.assert_array_equal(batches[0][0][1], ds[1][0])
    np.testing.assert_array_equal(batches[0][1][0], ds[0][1])
    assert batches[1][1] is None
    # the default collate turns labelled items into tensors
    cs = Cityscapes(shared_data / "cityscapes", "val")
    image, label = next(iter(DataLoader(cs, batch_size=1)))
    assert isinstance(image, torch.Tensor) and tuple(label.shape) == (1, 320, 320)
    assert label.dtype == torch.uint8


# ---------------------------------------------------------------- palettes


def _distances(palette):
    p = palette.astype(float)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d


@pytest.mark.parametrize("loader", [Cityscapes, CocoStuff, Potsdam])
def test_palette_colours_are_apart_and_not_black(loader):
    p = loader.palette
    assert p.shape == (len(loader.class_names), 3) and p.dtype == np.uint8
    assert _distances(p).min() >= 35, "two classes look alike"
    assert (p.astype(int).sum(1) > 0).all(), "black is the colour of ignored pixels"


def test_cityscapes_vehicles_are_distinguishable():
    names = list(Cityscapes.class_names)
    vehicles = [names.index(n) for n in ("car", "truck", "bus", "caravan", "trailer", "train",
                                         "motorcycle", "bicycle")]
    d = _distances(Cityscapes.palette)[np.ix_(vehicles, vehicles)]
    assert d.min() >= 60
    pole, polegroup = names.index("pole"), names.index("polegroup")
    assert _distances(Cityscapes.palette)[pole, polegroup] >= 60
