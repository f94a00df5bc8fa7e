"""The notebooks are documentation: each is executed here, and what it
shows must be what it says.

- every code cell of the committed notebook has its outputs, and they are
  the outputs of a fresh execution (stdout, pictures by count);
- every "Acc / mIoU" pair the text quotes ("94.8 / 63.6") is printed by a
  cell;
- no notebook writes into the folder it runs in, or refers to a file
  outside the repository.

01 needs only the package; 02 and 03 need the torch extra (CI installs it).
03 rehearses its commands on a miniature data set it writes, with a tiny
random ViT, unless the real data are at its paths.
"""

import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # a test extra
from nbclient import NotebookClient  # noqa: E402

from primaps.config import load_config  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
pytestmark = pytest.mark.docs
PAIR = re.compile(r"\b\d{1,3}\.\d / \d{1,3}\.\d\b")


def execute(name, tmp_path, monkeypatch):
    # the notebooks' `!primaps ...` lines find the command of this Python
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep
                       + os.environ.get("PATH", ""))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def pictures(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def normalised(text: str) -> str:
    """Without what differs run to run: temporary folders and timings."""
    text = re.sub(r"/tmp/primaps-rehearsal-[^/\s]+", "TMP", text)
    return re.sub(r"Done in [0-9.]+ s\.", "Done in T s.", text)


def check(name, tmp_path, monkeypatch):
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    fresh = execute(name, tmp_path, monkeypatch)
    code = [(c, f) for c, f in zip(committed.cells, fresh.cells) if c.cell_type == "code"]
    for k, (c, f) in enumerate(code):
        assert c.get("execution_count"), f"{name}: code cell {k} is committed without outputs"
        assert normalised(stdout(c)) == normalised(stdout(f)), \
            f"{name}: code cell {k} prints other numbers than its committed outputs"
        assert pictures(c) == pictures(f)
        for o in f.get("outputs", []):
            assert o.get("output_type") != "error", f"{name}: code cell {k} fails"
    printed = "\n".join(stdout(f) for _, f in code)
    text = "\n".join(c.source for c in committed.cells if c.cell_type == "markdown")
    quoted = set(PAIR.findall(text))
    missing = sorted(p for p in quoted if p not in printed)
    assert not missing, f"{name}: the text quotes {missing}, which no cell prints"
    assert list(tmp_path.iterdir()) == [], f"{name} writes into the folder it runs in"
    return committed, fresh, quoted, printed


def test_01_quickstart(tmp_path, monkeypatch):
    nb, fresh, quoted, printed = check("01_quickstart.ipynb", tmp_path, monkeypatch)
    assert {"68.6 / 54.3", "94.8 / 63.6", "84.7 / 59.9"} <= quoted
    assert sum(pictures(c) for c in fresh.cells) >= 3  # masks, panels, confusion matrix
    assert "PriMaPs-EM teacher" in printed


def test_02_from_pytorch_features(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    nb, fresh, quoted, printed = check("02_from_pytorch_features.ipynb", tmp_path, monkeypatch)
    assert "layout='tokens'" in printed  # the tokens are refused with the hint
    assert "shares memory with the tensor: True" in printed
    assert quoted, "02 says what to expect"


def test_03_reproduce_paper_rehearses_every_command(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    nb, fresh, quoted, printed = check("03_reproduce_paper.ipynb", tmp_path, monkeypatch)
    assert "rehearsal on generated data" in printed
    assert "rehearsal (miniature data, random ViT)" in printed
    assert "PriMaPs-EM teacher, with CRF" in printed  # the images are at hand: CRF rows
    names = set()
    for cell in nb.cells:
        names |= set(re.findall(r"load_config\(\"([^\"]+)\"", cell.source))
        names |= set(re.findall(r"--config (\S+)", cell.source))
    assert {"cityscapes_dino_vits8", "cityscapes_dinov2_vitb14", "cocostuff_dino_vits8",
            "potsdam_dino_vits8"} <= names
    for name in names:
        load_config(name)


def test_no_notebook_refers_outside_the_repository():
    for path in NOTEBOOKS.glob("*.ipynb"):
        text = path.read_text(encoding="utf-8")
        for bad in ("DESIGN.md", "../shared", "STYLE.md"):
            assert bad not in text, f"{path.name} refers to {bad}"
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            for link in re.findall(r"`(docs/[\w./-]+|notebooks/[\w./-]+)`", cell.source):
                assert (NOTEBOOKS.parent / link).exists(), f"{path.name} names {link}"
