"""The notebooks: 01 and 02 are executed, 03 (real data and weights) is
checked for syntax and its configs are loaded."""

import ast
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # a test extra
from nbclient import NotebookClient  # noqa: E402

from primaps.config import load_config  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def outputs(nb):
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", ""))
            text.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def test_01_quickstart(tmp_path):
    nb = execute("01_quickstart.ipynb", tmp_path)
    text = outputs(nb)
    assert "PriMaPs-EM teacher" in text and "K-means: Acc" in text
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # masks, panels, confusion matrix
    assert list(tmp_path.iterdir()) == []  # the notebook writes nothing


def test_02_from_pytorch_features(tmp_path):
    pytest.importorskip("torch")
    nb = execute("02_from_pytorch_features.ipynb", tmp_path)
    text = outputs(nb)
    assert "Hungarian-matched evaluation" in text and "uint8" in text


def test_03_reproduce_paper_syntax_and_configs():
    nb = nbformat.read(NOTEBOOKS / "03_reproduce_paper.ipynb", as_version=4)
    names = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines()
        python = "\n".join(line for line in lines if not line.lstrip().startswith(("!", "%")))
        ast.parse(python)
        names |= set(re.findall(r"load_config\(\"([^\"]+)\"", cell.source))
        names |= set(re.findall(r"--config (\S+)", cell.source))
        for line in lines:
            if line.lstrip().startswith("!"):
                assert line.lstrip()[1:].split()[0] == "primaps", line
    assert {"cityscapes_dino_vits8", "cityscapes_dinov2_vitb14", "cocostuff_dino_vits8",
            "potsdam_dino_vits8"} <= names
    for name in names:
        load_config(name)
