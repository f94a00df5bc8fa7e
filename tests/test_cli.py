"""The primaps command end to end, in subprocesses run in a temporary folder."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

TINY = """
[run]
out = "run"
threads = 1

[data]
dataset = "street"
n_train = 12
n_val = 6
size = 32

[em]
n_classes = 10
warmup_epochs = 1
epochs = 2
batch_size = 4

[eval]
pictures = false
"""


def primaps(tmp_path, *args, check=True):
    p = subprocess.run([sys.executable, "-m", "primaps", *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def as_json(p):
    return json.loads(p.stdout)


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    return tmp_path


def test_stages_one_by_one(tiny):
    r = as_json(primaps(tiny, "extract", "-c", "tiny.toml", "--json", "-q"))
    assert r["train"]["images"] == 12 and r["val"]["feature_shape"] == [64, 8, 8]
    assert (tiny / "run/features/train/index.json").is_file()
    r = as_json(primaps(tiny, "pseudo", "-c", "tiny.toml", "--json", "-q"))
    assert r["images"] == 12 and r["label_size"] == [32, 32] and r["masks_per_image"] >= 1
    r = as_json(primaps(tiny, "fit", "-c", "tiny.toml", "--json", "-q"))
    assert r["em"]["em_epochs"] == 2 and r["em"]["em_steps"] == 6
    for name in ("em.npz", "config.toml", "build_info.json", "metrics.json"):
        assert (tiny / "run" / name).is_file(), name
    info = json.loads((tiny / "run/build_info.json").read_text())
    assert "primaps" in info and "onednn" in info
    r = as_json(primaps(tiny, "evaluate", "-c", "tiny.toml", "--json", "-q", "--probe"))
    assert set(r["table"]) == {"em_teacher", "em_student", "probe"}
    for row in r["table"].values():
        assert 0 <= row["acc"] <= 100 and 0 <= row["miou"] <= 100
    metrics = json.loads((tiny / "run/metrics.json").read_text())
    assert {"pseudo", "fit", "evaluate"} <= set(metrics)
    assert metrics["evaluate"]["table"] == r["table"]
    # the config written next to the checkpoint reproduces the run's config
    dumped = primaps(tiny, "config", "-c", "run/config.toml").stdout
    assert dumped == primaps(tiny, "config", "-c", "tiny.toml").stdout
    # the text output of evaluate is the table
    text = primaps(tiny, "evaluate", "-c", "tiny.toml", "-q").stdout
    assert "PriMaPs-EM teacher" in text and "Acc %" in text
    # reproducible: the whole run again in the same folder (the generated
    # stores are reused) gives the same numbers; other data is refused
    again = as_json(primaps(tiny, "run", "-c", "tiny.toml", "--json", "-q"))
    assert {k: again["evaluate"]["table"][k] for k in ("em_teacher", "em_student")} == \
        {k: r["table"][k] for k in ("em_teacher", "em_student")}
    p = primaps(tiny, "run", "-c", "tiny.toml", "--set", "data.n_train=13", check=False)
    assert p.returncode == 1 and "n_train" in p.stderr and "Traceback" not in p.stderr


def test_config_list_and_dump_override_order(tiny):
    out = primaps(tiny, "config", "--list").stdout
    for name in ("demo", "cityscapes_dino_vits8", "cocostuff_dino_vits8", "potsdam_dino_vits8"):
        assert name in out
    listed = as_json(primaps(tiny, "config", "--list", "--json"))
    assert "cityscapes_dinov2_vitb14" in listed
    d = as_json(primaps(tiny, "config", "--dump", "-c", "tiny.toml", "--json"))
    assert d["em"]["epochs"] == 2 and d["data"]["size"] == 32
    # file < flags < --set, in order
    d = as_json(primaps(tiny, "config", "-c", "tiny.toml", "--seed", "5", "--json",
                        "--set", "run.seed=6", "--set", "em.epochs=3", "-s", "em.epochs=4"))
    assert d["run"]["seed"] == 6 and d["em"]["epochs"] == 4
    d = as_json(primaps(tiny, "config", "-c", "tiny.toml", "--seed", "5", "--json"))
    assert d["run"]["seed"] == 5
    d = as_json(primaps(tiny, "config", "--json"))
    assert d["em"]["epochs"] == 50  # the paper's default without a file


@pytest.mark.parametrize("args, code, msg", [
    (["config", "--set", "em.epoch=3"], 2, "unknown key em.epoch"),
    (["config", "--set", "em.epochs=x"], 2, "em.epochs"),
    (["config", "-c", "nonexistent_config"], 2, "no packaged config"),
    (["frobnicate"], 2, "invalid choice"),
    (["fit", "--seed", "x"], 2, "invalid int value"),
    (["fit", "-o", "missing"], 1, "no feature store at missing/features/train"),
    (["evaluate", "-c", "tiny.toml"], 1, "no checkpoint at run/em.npz"),
])
def test_exit_codes_and_messages(tiny, args, code, msg):
    p = primaps(tiny, *args, check=False)
    assert p.returncode == code, p.stderr
    assert msg in p.stderr
    assert "Traceback" not in p.stderr


def test_debug_shows_the_traceback(tiny):
    p = primaps(tiny, "fit", "-o", "missing", "--debug", check=False)
    assert p.returncode == 1 and "Traceback" in p.stderr and "PipelineError" in p.stderr


def test_bad_config_file_key_is_named(tiny):
    (tiny / "bad.toml").write_text("[masks]\nthreshhold = 0.5\n")
    p = primaps(tiny, "run", "-c", "bad.toml", check=False)
    assert p.returncode == 2
    assert "unknown key masks.threshhold in " in p.stderr and "bad.toml" in p.stderr


# ------------------------------------------------- run from Cityscapes folders

FEATURES = '''
import numpy as np

def features(images):
    """(B, H, W, 3) uint8 -> (B, 32, H/4, W/4): 4x4 mean colours through a
    fixed random map."""
    B, H, W, _ = images.shape
    x = images.astype(np.float32).reshape(B, H // 4, 4, W // 4, 4, 3).mean((2, 4)) / 255
    w = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    return np.tanh(2 * (x - 0.5) @ w).transpose(0, 3, 1, 2)
'''

CITY = """
[run]
out = "city-run"
threads = 1

[data]
dataset = "cityscapes"
root = "cityscapes"
resize = 32
crop = 32

[backbone]
callable = "tinyfeatures:features"
shard_size = 4

[em]
warmup_epochs = 1
epochs = 2
batch_size = 4

[eval]
probe = true
"""


def write_cityscapes(root, rng):
    """Street-like PNGs in the Cityscapes layout: sky, building, road."""
    colors = {7: (128, 64, 128), 11: (70, 70, 70), 23: (70, 130, 180), 26: (0, 0, 142)}
    for split, n in (("train", 6), ("val", 3)):
        for i in range(n):
            ids = np.full((40, 48), 7, np.uint8)
            ids[: 12 + i] = 23
            ids[12 + i: 20 + i, 8 * (i % 3): 20 + 8 * (i % 3)] = 11
            ids[28:34, 10 + 4 * i: 22 + 4 * i] = 26
            ids[:2] = 0  # unlabelled -> ignore
            img = np.zeros((40, 48, 3), np.uint8)
            for lid, col in colors.items():
                img[ids == lid] = col
            img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
            stem = f"city_{i:06d}_000019"
            for sub, name, arr in (("leftImg8bit", "leftImg8bit", img),
                                   ("gtFine", "gtFine_labelIds", ids)):
                d = root / sub / split / "city"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(d / f"{stem}_{name}.png")


def test_run_from_cityscapes_folders(tmp_path, rng):
    write_cityscapes(tmp_path / "cityscapes", rng)
    (tmp_path / "tinyfeatures.py").write_text(FEATURES)
    (tmp_path / "city.toml").write_text(CITY)
    r = as_json(primaps(tmp_path, "run", "-c", "city.toml", "--json", "-q"))
    assert r["extract"]["train"]["images"] == 6 and r["extract"]["val"]["images"] == 3
    assert r["extract"]["train"]["feature_shape"] == [32, 8, 8]
    assert r["pseudo"]["label_size"] == [32, 32]
    assert r["pseudo"]["refinement"] == "dense CRF over the images"  # images at hand
    ev = r["evaluate"]
    assert set(ev["table"]) == {"em_teacher", "em_student", "em_teacher_crf", "em_student_crf",
                                "probe"}
    assert ev["crf"].startswith("rows with CRF")
    rep = ev["reports"]["em_teacher"]
    assert rep["n_classes"] == 27 and rep["class_names"][0] == "road"
    assert rep["n_skipped"] > 0  # the unlabelled pixels
    for name in ("em.npz", "config.toml", "build_info.json", "metrics.json", "report.txt",
                 "panels.png", "confusion.png"):
        assert (tmp_path / "city-run" / name).is_file(), name
    text = (tmp_path / "city-run/report.txt").read_text()
    assert "PriMaPs-EM teacher, with CRF" in text
    # without CRF: the same rows as from features alone, and the report says why
    p = as_json(primaps(tmp_path, "evaluate", "-c", "city.toml", "--set", "eval.crf=false",
                        "--json", "-q"))
    assert set(p["table"]) == {"em_teacher", "em_student", "probe"}
    assert p["table"]["em_teacher"] == ev["table"]["em_teacher"]
    assert p["crf"] == "not applied: eval.crf = false"
    p = as_json(primaps(tmp_path, "pseudo", "-c", "city.toml", "--set", "masks.crf=false",
                        "--json", "-q"))
    assert p["refinement"] == "bilinear upsampling, no CRF (masks.crf = false)"
    # extract resumes: a second run finds every image in the stores
    p = primaps(tmp_path, "extract", "-c", "city.toml", "--json", "-q")
    assert as_json(p)["train"]["images"] == 6


def test_demo(tmp_path):
    """The demo as shipped: its table, words and pictures."""
    p = primaps(tmp_path, "demo", "-q")
    out = p.stdout
    for line in ("K-means baseline", "PriMaPs-EM teacher", "PriMaPs-EM student",
                 "EM without masks, teacher", "linear probe (supervised)",
                 "generated street scenes (synthetic", "without CRF"):
        assert line in out, line
    for name in ("panels.png", "confusion.png", "em.npz", "kmeans.npz", "em_no_masks.npz",
                 "config.toml", "build_info.json", "metrics.json", "report.txt"):
        assert (tmp_path / "primaps-demo" / name).is_file(), name
    m = json.loads((tmp_path / "primaps-demo/metrics.json").read_text())["evaluate"]["table"]
    assert m["em_teacher"]["acc"] > m["kmeans"]["acc"]
    assert m["probe"]["acc"] >= m["em_teacher"]["acc"] - 5
    with Image.open(tmp_path / "primaps-demo/panels.png") as im:
        assert im.size[0] > 400 and im.size[1] > 400


def test_extract_through_a_backbone_without_weights_fails_clearly(tmp_path, rng):
    """The backbone path needs local weights (and torch): a clear message
    and exit code 1, not a traceback."""
    write_cityscapes(tmp_path / "cityscapes", rng)
    p = primaps(tmp_path, "extract", "-c", "cityscapes_dino_vits8", "--set",
                "data.root=cityscapes", "--set", "backbone.weights=missing.pth", "-q",
                check=False)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert "missing.pth" in p.stderr or "torch" in p.stderr


def test_extract_reports_a_missing_data_folder_before_the_backbone(tmp_path):
    """Without torch or weights, a wrong data.root is what the user hears
    of first (the folder is the first thing to fix)."""
    p = primaps(tmp_path, "extract", "-c", "cityscapes_dino_vits8", "--set",
                "data.root=nowhere", "--set", "backbone.weights=missing.pth", "-q",
                check=False)
    assert p.returncode == 1, p.stderr
    assert "nowhere" in p.stderr and "missing.pth" not in p.stderr and "torch" not in p.stderr
