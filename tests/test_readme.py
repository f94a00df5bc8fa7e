"""The README is executed: every command and snippet in it runs as written,
and every number it quotes is what the demo prints.

- Quickstart: the first command ends in `primaps demo` (run here, in a
  fresh folder, after the venv and install steps this suite already
  stands on); the second is the test command `.ci/run` runs verbatim.
- The demo's output block is what `primaps demo` prints, line for line
  (the time aside); the numbers of docs/demo.md's seed-0 row too.
- The Python snippets run in order in one namespace, then every line of
  the other bash blocks runs in the same folder (after the demo) and
  exits 0.
- Every link of the README and of docs/ names a file of the repository.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.docs


def blocks(text: str, lang: str):
    return [body for kind, body in FENCE.findall(text) if kind == lang]


def prose(text: str) -> str:
    return FENCE.sub("", text)


def env_with_the_command():
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def shell(line: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(line, shell=True, cwd=cwd, env=env_with_the_command(),
                          capture_output=True, text=True, timeout=600)


def without_time(text: str) -> list:
    return [line.rstrip() for line in text.strip("\n").splitlines() if not line.startswith("Done in ")]


def test_quickstart_is_the_install_the_demo_and_the_ci_test_command():
    first, second = blocks(README, "bash")[:2]
    steps = [s.strip() for s in first.strip().split("&&")]
    assert steps[:3] == ["python3 -m venv .venv", ". .venv/bin/activate", "pip install ."]
    assert steps[3:] == ["primaps demo"]
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    test_cmd = re.search(r"^TEST_CMD='(.*)'$", ci, re.M).group(1)
    assert second.strip() == test_cmd  # .ci/run runs it verbatim, from a fresh venv


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder where `primaps demo` ran, as Quickstart runs it, and its stdout."""
    d = tmp_path_factory.mktemp("readme")
    p = shell("primaps demo", d)
    assert p.returncode == 0, p.stderr
    return d, p.stdout


def test_the_demo_prints_the_readme_block(demo_folder):
    _, out = demo_folder
    (block,) = [b for b in blocks(README, "text") if b.startswith("$ primaps demo\n")]
    assert without_time(block)[1:] == without_time(out)


def test_every_number_of_the_readme_prose_is_printed_by_the_demo(demo_folder):
    _, out = demo_folder
    text = prose(README).replace("Python ≥ 3.9", "")
    for number in re.findall(r"\b\d+\.\d+\b", text):
        assert number in out, f"the README quotes {number}, which the demo does not print"


def test_docs_demo_seed_0_row_is_the_demo_and_the_mean_is_the_mean(demo_folder):
    _, out = demo_folder
    table = (REPO / "docs/demo.md").read_text(encoding="utf-8")
    rows = {m.group(1): re.findall(r"(\d+\.\d) / (\d+\.\d)", m.group(2))
            for m in re.finditer(r"^\| (\d+|mean) \|(.*)\|$", table, re.M)}
    assert set(rows) == {"0", "1", "2", "3", "4", "mean"}
    printed = {}
    for line in out.splitlines():
        m = re.match(r"(.+?)\s+(\d+\.\d)\s+(\d+\.\d)$", line)
        if m:
            printed[m.group(1).strip()] = (m.group(2), m.group(3))
    names = ["K-means baseline", "PriMaPs-EM teacher", "PriMaPs-EM student",
             "EM without masks, teacher", "linear probe (supervised)"]
    assert rows["0"] == [printed[n] for n in names]
    for col in range(len(names)):
        for part in (0, 1):
            values = [float(rows[s][col][part]) for s in "01234"]
            assert abs(sum(values) / 5 - float(rows["mean"][col][part])) <= 0.051


def test_the_python_snippets_run_in_order(demo_folder, monkeypatch, capsys):
    d, _ = demo_folder
    monkeypatch.chdir(d)
    namespace: dict = {}
    for k, code in enumerate(blocks(README, "python")):
        exec(compile(code, f"README.md python block {k}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "Hungarian-matched evaluation" in out and "layout='tokens'" in out
    assert namespace["report"].accuracy > 80  # the tour's EM on the demo's scenes


def test_every_other_command_of_the_readme_runs(demo_folder):
    d, _ = demo_folder
    lines = [line.split("  #")[0].strip() for b in blocks(README, "bash")[2:]
             for line in b.splitlines()]
    lines = [line for line in lines if line]
    assert any("--features primaps-demo" in line for line in lines)
    for line in lines:
        p = shell(line, d)
        assert p.returncode == 0, f"{line}: {p.stderr}"


@pytest.mark.parametrize("doc", ["README.md"] + sorted(
    str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))
def test_links_name_files_of_the_repository(doc):
    path = REPO / doc
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://")):
            continue
        assert (path.parent / target).exists(), f"{doc} links to {target}, which is not there"
    for bad in ("DESIGN.md", "../shared", "STYLE.md"):
        assert bad not in text, f"{doc} refers to {bad}, outside the repository"
