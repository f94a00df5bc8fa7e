"""What a new user meets in the first hour: the package's attributes, quiet
by default, progress bars by the conventions (on a terminal only, never
with -q, never a bar of length 0)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

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
n_classes = 6
warmup_epochs = 1
epochs = 2
batch_size = 4

[eval]
pictures = false
"""


def test_import_primaps_then_primaps_viz(tmp_path):
    code = ("import sys, primaps; assert 'matplotlib' not in sys.modules; "
            "f = primaps.viz.plot_panels; import primaps.viz as v; assert f is v.plot_panels; "
            "print(primaps.pipeline.__name__)")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "primaps.pipeline", p.stderr
    import primaps

    with pytest.raises(AttributeError, match="no attribute 'vis'"):
        primaps.vis  # noqa: B018


def _on_a_terminal(cwd, *args) -> str:
    """stderr of `primaps ARGS` when stderr is a terminal (a pty)."""
    master, slave = pty.openpty()
    # a window of 24 x 120 (a new pty has 0 columns, and tqdm draws nothing in 0)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "primaps", *args], cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the pty closes with the process
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=300)
    os.close(master)
    assert p.returncode == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_cli_bars_on_a_terminal_only_and_never_with_quiet(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    p = subprocess.run([sys.executable, "-m", "primaps", "extract", "-c", "tiny.toml"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "it/s" not in p.stderr and "img/s" not in p.stderr
    assert "store train" not in p.stderr  # not a terminal: no bar
    err = _on_a_terminal(tmp_path, "pseudo", "-c", "tiny.toml")
    assert "PriMaPs masks" in err and "img" in err
    err = _on_a_terminal(tmp_path, "pseudo", "-c", "tiny.toml", "-q",
                         "--set", "masks.threshold=0.5")
    assert err == ""
    _on_a_terminal(tmp_path, "pseudo", "-c", "tiny.toml", "-q")  # back to the fit's masks
    err = _on_a_terminal(tmp_path, "fit", "-c", "tiny.toml")
    assert "PriMaPs-EM: EM 2/2" in err and " 0/0" not in err


def test_quiet_stages_print_nothing_and_summaries_are_short(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)

    def run(*args):
        p = subprocess.run([sys.executable, "-m", "primaps", *args, "-c", "tiny.toml"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p

    for stage in ("extract", "pseudo", "fit"):
        q = run(stage, "-q", "--set", "em.epochs=1")
        assert q.stdout == "" and q.stderr == ""
    out = run("fit", "--restart", "--set", "em.epochs=3").stdout
    assert out.startswith("fit: PriMaPs-EM: 1 K-means + 3 EM epochs (9 EM steps), focal loss")
    assert "run/em.npz" in out and "{" not in out


def test_python_api_is_quiet_by_default(capsys):
    import primaps

    rng = np.random.default_rng(0)
    F = rng.standard_normal((4, 8, 4, 4)).astype(np.float32)
    M = rng.integers(0, 3, (4, 8, 8)).astype(np.int32)
    primaps.PriMaPsEM(3, epochs=1, warmup_epochs=1, batch_size=2).fit((F, M))
    primaps.LinearProbe(3, epochs=1).fit((F, M.astype(np.uint8)))
    assert capsys.readouterr().err == ""
    primaps.LinearProbe(3, epochs=1).fit((F, M.astype(np.uint8)), progress=True)
    assert "linear probe 1/1" in capsys.readouterr().err


def _cli(cwd, *args, code=0):
    p = subprocess.run([sys.executable, "-m", "primaps", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == code, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def _suggested(stderr: str) -> list:
    import shlex

    start = stderr.index("'primaps ") + 1
    return shlex.split(stderr[start:stderr.index("'", start)])[1:]


SMALL_DEMO = ["--set", "data.n_train=16", "--set", "data.n_val=4", "--set", "data.size=32",
              "--set", "em.epochs=1", "--set", "eval.pictures=false", "-q"]


def test_demo_with_another_seed_gets_its_own_folder(tmp_path):
    _cli(tmp_path, "demo", *SMALL_DEMO)
    _cli(tmp_path, "demo", "--seed", "1", *SMALL_DEMO)
    again = _cli(tmp_path, "demo", "--seed", "1", *SMALL_DEMO)  # resumes, same numbers
    assert (tmp_path / "primaps-demo/em.npz").is_file()
    assert (tmp_path / "primaps-demo-seed1/em.npz").is_file()
    assert "Data: generated street scenes (synthetic, seed 1)" in again.stdout
    # another seed into the folder of seed 0: an error whose suggestion works
    p = _cli(tmp_path, "demo", "--seed", "2", "--out", "primaps-demo", *SMALL_DEMO, code=1)
    assert "--features primaps-demo" in p.stderr


def test_training_again_on_the_same_features_with_another_seed(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    _cli(tmp_path, "run", "-c", "tiny.toml", "-q")
    p = _cli(tmp_path, "fit", "-c", "tiny.toml", "--seed", "1", code=2)
    assert "--features run" in p.stderr
    p = _cli(tmp_path, "fit", "-c", "tiny.toml", "--seed", "1", "--out", "try", code=1)
    assert "no feature store" in p.stderr and "--features RUN" in p.stderr
    _cli(tmp_path, "fit", "-c", "tiny.toml", "--seed", "1", "--out", "try", "--features", "run",
         "-q")
    ev = _cli(tmp_path, "evaluate", "-c", "tiny.toml", "--seed", "1", "--out", "try",
              "--features", "run", "--json")
    import json

    assert "em_teacher" in json.loads(ev.stdout)["table"]
    assert not (tmp_path / "try/features").exists()  # nothing extracted again
    # run with --features skips the extract; extract itself refuses --features
    _cli(tmp_path, "run", "-c", "tiny.toml", "--seed", "2", "--out", "try2", "--features", "run",
         "-q")
    p = _cli(tmp_path, "extract", "-c", "tiny.toml", "--out", "x", "--features", "run", code=2)
    assert "drop --features" in p.stderr
    # a new mask config on shared features: the suggestion rebuilds them, and works
    p = _cli(tmp_path, "fit", "-c", "tiny.toml", "--out", "try3", "--features", "run",
             "--set", "masks.threshold=0.6", code=1)
    _cli(tmp_path, *_suggested(p.stderr), "-q")
    _cli(tmp_path, "fit", "-c", "tiny.toml", "--out", "try3", "--features", "run",
         "--set", "masks.threshold=0.6", "-q")
