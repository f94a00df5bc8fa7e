"""The run folder keeps its promises: no stale, mixed or lost results.

Every case of the red-team of the command line (tests/RELIABILITY.md, "Run
folder"), run as a user would: the ``primaps`` command in subprocesses on a
tiny generated data set, real kills, real concurrent processes, real
SIGINTs.  Each suggested command in an error message is run in turn.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import primaps
from primaps import FeatureStore

TINY = """
[run]
out = "run"
threads = 1

[data]
dataset = "street"
n_train = 24
n_val = 6
size = 32

[backbone]
shard_size = 4

[masks]
crf = false

[em]
n_classes = 6
warmup_epochs = 1
epochs = 3
batch_size = 4
baseline = true

[eval]
pictures = false
"""


def cli(cwd: Path, *args: str, code: int = 0, config: str = "tiny.toml") -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "primaps", *args]
    if config and "-c" not in args:
        argv += ["-c", config]
    p = subprocess.run(argv + ["-q"], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert p.returncode == code, f"exit {p.returncode} (want {code})\n{p.stdout}\n{p.stderr}"
    return p


def suggested(stderr: str) -> list:
    """The command an error message tells the user to run (between quotes)."""
    start = stderr.index("'primaps ") + 1
    cmd = shlex.split(stderr[start:stderr.index("'", start)])
    assert cmd[0] == "primaps"
    return cmd[1:]


@pytest.fixture
def run(tmp_path):
    """A folder with extracted features and masks (no checkpoint yet)."""
    (tmp_path / "tiny.toml").write_text(TINY)
    cli(tmp_path, "extract")
    cli(tmp_path, "pseudo")
    return tmp_path


def mask_tags(folder: Path) -> dict:
    store = FeatureStore(folder / "run/features/train", mode="r")
    tags: dict = {}
    for i in store.mask_ids:
        tags[store.mask_tag(i)] = tags.get(store.mask_tag(i), 0) + 1
    return tags


# ------------------------------------------------------------ provenance


def test_evaluate_with_another_checkpoint_writes_into_out_and_names_its_rows(run):
    cli(run, "fit")
    cli(run, "evaluate")
    a = run / "run"
    before = {n: (a / n).read_bytes() for n in ("metrics.json", "report.txt")}
    b_cfg = run / "b.toml"
    b_cfg.write_text(TINY.replace('out = "run"', 'out = "B"'))
    cli(run, "extract", config="b.toml")
    res = json.loads(cli(run, "evaluate", "--checkpoint", "run/kmeans.npz", "--json",
                         config="b.toml").stdout)
    assert {n: (a / n).read_bytes() for n in before} == before  # A untouched
    assert set(res["table"]) == {"kmeans"}  # a K-means checkpoint scores as the baseline
    report = (run / "B/report.txt").read_text()
    assert "K-means baseline" in report and "PriMaPs-EM" not in report
    m = json.loads((run / "B/metrics.json").read_text())
    assert m["evaluate"]["checkpoint"] == "run/kmeans.npz"
    assert m["evaluate"]["models"]["run/kmeans.npz"]["role"] == "kmeans"


def test_fit_refuses_masks_of_another_config_and_the_suggested_command_rebuilds_them(run):
    cli(run, "fit")
    em_before = (run / "run/em.npz").read_bytes()
    p = cli(run, "fit", "--restart", "--set", "masks.threshold=0.6", code=1)
    assert "fit:" in p.stderr and "24 have masks made with another [masks] config" in p.stderr
    assert (run / "run/em.npz").read_bytes() == em_before  # nothing replaced
    cmd = suggested(p.stderr)
    assert cmd[0] == "pseudo" and "masks.threshold=0.6" in cmd
    res = json.loads(cli(run, *cmd, "--json", config="").stdout)
    assert res["reused"] == 0 and res["obsolete_shards_removed"] > 0
    assert len(mask_tags(run)) == 1
    fit = json.loads(cli(run, "fit", "--restart", "--set", "masks.threshold=0.6", "--json").stdout)
    assert fit["resumed_from_epoch"] == 0
    em = primaps.PriMaPsEM.load(run / "run/em.npz")
    assert em.provenance["masks"] == res["tag"]
    assert em.provenance["fields"]["masks.threshold"] == 0.6


def test_evaluate_after_a_masks_change_suggests_the_masks_first(run):
    cli(run, "fit")
    p = cli(run, "evaluate", "--set", "masks.threshold=0.6", code=1)
    assert "trained with a different config (masks.threshold)" in p.stderr
    cmd = suggested(p.stderr)  # the first command named: the masks
    assert cmd[0] == "pseudo" and "masks.threshold=0.6" in cmd
    rest = p.stderr[p.stderr.index("then '") + 5:]
    then = suggested(rest)
    assert then[:1] == ["fit"] and "--restart" in then
    cli(run, *cmd, config="")
    cli(run, *then, config="")
    res = json.loads(cli(run, "evaluate", "--set", "masks.threshold=0.6", "--json").stdout)
    assert "em_teacher" in res["table"]


def test_a_stage_that_fails_in_a_new_folder_leaves_no_folder(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    for stage in ("pseudo", "fit", "evaluate"):
        p = cli(tmp_path, stage, "--out", "fresh/run", code=1)
        assert "run 'primaps" in p.stderr
        assert not (tmp_path / "fresh").exists(), stage  # nor the parent it made
    (tmp_path / "kept").mkdir()  # a folder the user made stays
    cli(tmp_path, "fit", "--out", "kept", code=1)
    assert [q.name for q in (tmp_path / "kept").iterdir()] == [".lock"]


def test_fit_refuses_a_mix_of_masks_left_by_a_killed_pseudo(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY.replace("n_train = 24", "n_train = 96"))
    cli(tmp_path, "extract")
    cli(tmp_path, "pseudo")
    old = set(mask_tags(tmp_path))
    index = tmp_path / "run/features/train/index.json"
    for _ in range(5):  # until a kill lands between two shards of the new masks
        proc = subprocess.Popen([sys.executable, "-m", "primaps", "pseudo", "-c", "tiny.toml",
                                 "-q", "--set", "masks.threshold=0.6"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            tags = {e.get("tag") for e in json.loads(index.read_text())["mask_shards"]}
            if tags - old:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=600)
        if len(mask_tags(tmp_path)) == 2:
            break
        cli(tmp_path, "pseudo")  # finished before the kill: start again from the old masks
    tags = mask_tags(tmp_path)
    assert len(tags) == 2, "every pseudo run finished before its kill"
    for threshold in ("0.4", "0.6"):
        p = cli(tmp_path, "fit", "--set", f"masks.threshold={threshold}", code=1)
        assert "have masks made with another [masks] config" in p.stderr
    assert not (tmp_path / "run/em.npz").exists()
    # the suggested command completes the set, keeping the new masks already written
    p = cli(tmp_path, "fit", "--set", "masks.threshold=0.6", code=1)
    res = json.loads(cli(tmp_path, *suggested(p.stderr), "--json", config="").stdout)
    assert 0 < res["reused"] < 96
    assert len(mask_tags(tmp_path)) == 1
    cli(tmp_path, "fit", "--set", "masks.threshold=0.6")


def test_evaluate_scores_only_the_models_of_the_current_config(run):
    cli(run, "fit", "--set", "em.ablation_no_masks=true")
    res = json.loads(cli(run, "evaluate", "--set", "em.ablation_no_masks=true",
                         "--json").stdout)
    assert {"kmeans", "em_teacher", "nomask_teacher"} <= set(res["table"])
    over = ["--set", "em.epochs=2", "--set", "em.baseline=false"]
    cli(run, "fit", "--restart", *over)
    p = cli(run, "evaluate", *over, "--json")
    res = json.loads(p.stdout)
    assert set(res["table"]) == {"em_teacher", "em_student"}
    assert "em.epochs" in res["skipped"]["kmeans.npz"]
    assert "em.epochs" in res["skipped"]["em_no_masks.npz"]
    # em.npz of another config is an error naming the command that retrains it
    p = cli(run, "evaluate", "--set", "em.epochs=4", code=1)
    assert "evaluate:" in p.stderr and "em.npz" in p.stderr and "em.epochs" in p.stderr
    cmd = suggested(p.stderr)
    assert cmd[0] == "fit" and "--restart" in cmd
    cli(run, *cmd, config="")
    cli(run, "evaluate", "--set", "em.epochs=4")


# ------------------------------------------------------------- one writer


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(run):
    (run / "slow.toml").write_text(TINY.replace("epochs = 3", "epochs = 400"))
    first = subprocess.Popen([sys.executable, "-m", "primaps", "fit", "-c", "slow.toml", "-q"],
                             cwd=run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = run / "run/.lock"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (run / "run/em.npz").exists():
            time.sleep(0.01)
        assert lock.read_text().strip() == str(first.pid)
        for cmd in (["fit"], ["fit", "--restart"], ["evaluate"], ["pseudo"]):
            p = cli(run, *cmd, code=1, config="slow.toml")
            assert f"another primaps process (pid {first.pid}) is writing to the run folder" \
                   in p.stderr, p.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # the lock dies with its holder: the next writer goes on
    cli(run, "fit", "--restart")
    em = primaps.PriMaPsEM.load(run / "run/em.npz")
    assert em.epoch_ == 3 and em.epochs == 3


# ---------------------------------------------- nothing finished destroyed


def test_restart_with_a_corrupt_shard_keeps_the_finished_model(run):
    cli(run, "fit")
    cli(run, "evaluate")
    keep = {n: (run / "run" / n).read_bytes() for n in ("em.npz", "config.toml", "report.txt")}
    shard = sorted((run / "run/features/train").glob("features-*.npy"))[2]
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0xFF
    shard.write_bytes(bytes(data))
    p = cli(run, "fit", "--restart", "--set", "em.lr=0.01", code=1)
    assert "fit:" in p.stderr and shard.name in p.stderr and "checksum" in p.stderr
    assert {n: (run / "run" / n).read_bytes() for n in keep} == keep


def test_restart_replaces_the_checkpoint_only_when_the_new_one_is_written(run, monkeypatch):
    """In process: the first save of the new run is the moment em.npz changes."""
    from primaps import pipeline
    from primaps.config import load_config

    cli(run, "fit")
    ckpt = run / "run/em.npz"
    old = ckpt.read_bytes()
    seen = []
    real_save = primaps.PriMaPsEM.save

    def save(self, path):
        seen.append(Path(path).read_bytes() == old if Path(path).exists() else None)
        real_save(self, path)

    monkeypatch.setattr(primaps.PriMaPsEM, "save", save)
    monkeypatch.chdir(run)
    cfg = load_config("tiny.toml", ["em.lr=0.01"])
    pipeline.fit(cfg, pipeline.UI(quiet=True), restart=True)
    assert seen[0] is True  # the old model is there until the new run's first save
    assert ckpt.read_bytes() != old


def test_leftovers_of_killed_writes_are_removed_and_garbage_outputs_rewritten(run):
    cli(run, "fit")
    for folder in (run / "run", run / "run/labels"):
        (folder / ".primaps-killed.npz").write_bytes(b"half a checkpoint")
    (run / "run/metrics.json").write_text("{not json")
    p = cli(run, "evaluate")
    assert "written again" not in p.stderr  # -q: no messages
    assert not list((run / "run").glob(".primaps-*"))
    assert not list((run / "run/labels").glob(".primaps-*"))
    m = json.loads((run / "run/metrics.json").read_text())
    assert "evaluate" in m and "checksum" in m
    # an edited output fails its checksum and is rewritten too
    m["evaluate"]["table"]["em_teacher"]["acc"] = 99.9
    (run / "run/metrics.json").write_text(json.dumps(m))
    p = subprocess.run([sys.executable, "-m", "primaps", "evaluate", "-c", "tiny.toml"],
                       cwd=run, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "fails its checksum" in p.stderr
    m2 = json.loads((run / "run/metrics.json").read_text())
    assert m2["evaluate"]["table"]["em_teacher"]["acc"] != 99.9
    assert "fit" not in m2  # the rest of the edited file is not trusted either


def test_obsolete_mask_shards_are_removed(run):
    index = run / "run/features/train/index.json"
    n0 = len(json.loads(index.read_text())["mask_shards"])
    for threshold in ("0.6", "0.4", "0.5", "0.4", "0.6"):
        cli(run, "pseudo", "--set", f"masks.threshold={threshold}")
        files = sorted((run / "run/features/train").glob("masks-*.npy"))
        listed = json.loads(index.read_text())["mask_shards"]
        assert len(files) == len(listed) == n0
        assert len({e["tag"] for e in listed}) == 1


# ----------------------------------------------- errors name file and stage


def test_a_truncated_label_file_names_the_file_the_stage_and_the_fix(run):
    cli(run, "fit")
    labels = run / "run/labels/val.npz"
    labels.write_bytes(labels.read_bytes()[:100])
    p = cli(run, "evaluate", code=1)
    assert "evaluate:" in p.stderr and str(Path("run/labels/val.npz")) in p.stderr
    assert "Traceback" not in p.stderr
    cli(run, *suggested(p.stderr), config="")  # extract writes the labels again
    cli(run, "evaluate")


def test_a_latin1_config_is_a_config_error_naming_the_file(tmp_path):
    (tmp_path / "latin.toml").write_bytes(TINY.replace("[run]", "# caf\xe9\n[run]").encode("latin-1"))
    p = cli(tmp_path, "extract", code=2, config="latin.toml")
    assert "latin.toml is not UTF-8 text" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("errno_name", ["EACCES", "ENOSPC"])
def test_write_failures_name_the_file_and_the_stage(run, monkeypatch, capsys, errno_name):
    """A read-only run folder and a full disk, in process (root ignores file
    modes): the message names the file being written, not its temporary."""
    import errno
    import primaps._io as IO
    from primaps import cli as CLI

    cli(run, "fit")
    monkeypatch.chdir(run)
    code = getattr(errno, errno_name)
    exc = PermissionError if errno_name == "EACCES" else OSError

    def fail(*a, **k):
        raise exc(code, os.strerror(code))

    if errno_name == "EACCES":
        monkeypatch.setattr(IO.tempfile, "mkstemp", fail)
    else:
        monkeypatch.setattr(IO.os, "fsync", fail)
    assert CLI.main(["evaluate", "-c", "tiny.toml", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("primaps: error: evaluate: cannot write "), err
    assert err.endswith(os.strerror(code)) and "metrics.json" in err and ".primaps-" not in err
    assert not list((run / "run").glob(".primaps-*"))


# ------------------------------------------------------ checkpoint metadata


def _edit_meta(path: Path, edit, recompute_crc: bool) -> None:
    from primaps._training import META_CRC, _meta_crc

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta.json"].tobytes())
    edit(meta)
    if recompute_crc:
        meta[META_CRC] = _meta_crc(meta)
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("key,value", [("epoch", -7), ("adam_step", -1), ("warmup_epoch", 99),
                                       ("step", 1.5)])
def test_hand_edited_checkpoint_metadata_is_refused(tmp_path, key, value):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((8, 6, 4, 4)).astype(np.float32)
    masks = rng.integers(0, 3, (8, 8, 8)).astype(np.int32)
    em = primaps.PriMaPsEM(3, epochs=2, warmup_epochs=1, batch_size=4)
    em.fit((feats, masks), verbose=False)
    path = tmp_path / "em.npz"
    em.save(path)
    state = lambda m: m["state"].__setitem__(key, value)  # noqa: E731
    _edit_meta(path, state, recompute_crc=False)
    with pytest.raises(ValueError, match="checksum mismatch in its metadata"):
        primaps.PriMaPsEM.load(path)
    em.save(path)
    _edit_meta(path, state, recompute_crc=True)  # a consistent forgery: the values are checked
    with pytest.raises(ValueError, match=f"{key} = {value!r} in its metadata"):
        primaps.PriMaPsEM.load(path)


def test_provenance_round_trips_and_is_covered_by_the_checksum(tmp_path):
    em = primaps.PriMaPsEM(2, epochs=0, warmup_epochs=0)
    em.init_from(np.eye(2, 3, dtype=np.float32))
    em.provenance = {"role": "em", "store": "abc"}
    em.save(tmp_path / "a.npz")
    assert primaps.PriMaPsEM.load(tmp_path / "a.npz").provenance == {"role": "em", "store": "abc"}
    _edit_meta(tmp_path / "a.npz", lambda m: m["provenance"].__setitem__("store", "xyz"), False)
    with pytest.raises(ValueError, match="metadata"):
        primaps.PriMaPsEM.load(tmp_path / "a.npz")


# --------------------------------------------------- estimators are shared


class _Held:
    """Batches that stop in the middle of an epoch until released."""

    def __init__(self, feats, masks):
        self.feats, self.masks = feats, masks
        self.inside, self.release = threading.Event(), threading.Event()

    def __iter__(self):
        for s in range(0, len(self.feats), 4):
            if s == 8:
                self.inside.set()
                self.release.wait(60)
            yield self.feats[s:s + 4], self.masks[s:s + 4]


@pytest.mark.parametrize("second", ["fit", "partial_fit", "warmup", "init_pca"])
def test_a_second_thread_training_one_estimator_is_refused(second):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((16, 8, 4, 4)).astype(np.float32)
    masks = rng.integers(0, 3, (16, 8, 8)).astype(np.int32)
    em = primaps.PriMaPsEM(3, epochs=2, warmup_epochs=1, batch_size=4)
    held = _Held(feats, masks)
    t = threading.Thread(target=lambda: em.fit(held, verbose=False))
    t.start()
    assert held.inside.wait(60)  # the first thread is inside fit
    args = {"fit": ((feats, masks),), "partial_fit": ((feats[:4], masks[:4]),),
            "warmup": (feats,), "init_pca": (feats,)}[second]
    with pytest.raises(RuntimeError, match="being trained by another thread"):
        getattr(em, second)(*args)
    held.release.set()
    t.join(60)
    assert em.warmup_epoch_ == 1 and em.epoch_ == 2 and em.step_ == 8  # one run, whole


def test_threads_racing_to_train_one_estimator_never_interleave():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((64, 16, 8, 8)).astype(np.float32)
    masks = rng.integers(0, 4, (64, 32, 32)).astype(np.int32)
    em = primaps.PriMaPsEM(4, epochs=6, warmup_epochs=1, batch_size=4)
    errors = []

    def train():
        try:
            em.fit((feats, masks), verbose=False)
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=train) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all("being trained by another thread" in e for e in errors)
    assert em.epoch_ == em.epochs == 6 and em.warmup_epoch_ == 1  # never 7 of 6
    assert em.step_ == 6 * 16 and len(em.loss_history_) == em.step_


def test_a_copy_of_an_estimator_trains_in_another_thread():
    import copy

    rng = np.random.default_rng(1)
    feats = rng.standard_normal((16, 8, 4, 4)).astype(np.float32)
    masks = rng.integers(0, 3, (16, 8, 8)).astype(np.int32)
    em = primaps.PriMaPsEM(3, epochs=2, warmup_epochs=1, batch_size=4)
    twin = copy.deepcopy(em)
    out = {}
    ts = [threading.Thread(target=lambda e=e, k=k: out.__setitem__(k, e.fit((feats, masks), verbose=False)))
          for k, e in (("a", em), ("b", twin))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert np.array_equal(out["a"].teacher_.v, out["b"].teacher_.v)


# ---------------------------------------------------------------- Ctrl-C

SIGINT_PROGRAMS = {
    "masks": """
        x = np.random.default_rng(0).standard_normal((64, 384, 40, 40)).astype(np.float32)
        go()
        primaps.masks(x)
    """,
    "dense_crf": """
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:1024, 0:2048]
        base = np.stack([(x // 256) * 30 % 255, (y // 128) * 40 % 255,
                         ((x + y) // 300) * 50 % 255], -1)
        img = np.clip(base + rng.integers(0, 8, base.shape), 0, 255).astype(np.uint8)
        lg = rng.standard_normal((4, 8, 1024, 2048)).astype(np.float32)
        go()
        primaps.dense_crf(np.stack([img] * 4), lg, iterations=50)
    """,
}


# under the sanitizers (tests/run_asan.py) every loop runs several times slower
LIMIT = 5.0 if "asan" in os.environ.get("LD_PRELOAD", "") else 1.0


@pytest.mark.parametrize("what", sorted(SIGINT_PROGRAMS))
def test_ctrl_c_stops_a_long_kernel_within_a_second(tmp_path, what):
    body = textwrap.dedent(SIGINT_PROGRAMS[what])
    prog = textwrap.dedent("""
        import sys, time
        import numpy as np
        import primaps

        def go():
            print("go", flush=True)

        try:
    """) + textwrap.indent(body, "    ") + textwrap.dedent("""
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            sys.exit(3)
        print("finished", flush=True)
    """)
    (tmp_path / "prog.py").write_text(prog)
    p = subprocess.Popen([sys.executable, "prog.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "go"
    time.sleep(1.5)  # inside the kernel
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    took = time.monotonic() - t
    assert p.returncode == 3 and out.strip() == "KeyboardInterrupt", out
    print(f"\n{what}: KeyboardInterrupt {took:.3f} s after SIGINT")
    assert took < LIMIT, f"{what}: {took:.2f} s from SIGINT to KeyboardInterrupt"
    # the next call after an interrupted one runs normally
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(np.float32)
    assert primaps.masks(x).shape == (2, 6, 6)


def test_ctrl_c_stops_fit_within_a_second_leaving_a_checkpoint_that_resumes(run):
    (run / "slow.toml").write_text(TINY.replace("epochs = 3", "epochs = 400"))
    p = subprocess.Popen([sys.executable, "-m", "primaps", "fit", "-c", "slow.toml", "-q"],
                         cwd=run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = run / "run/em.npz"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ckpt.exists():
        time.sleep(0.01)
    time.sleep(0.5)
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    took = time.monotonic() - t
    assert p.returncode == 130 and "interrupted" in err
    print(f"\nprimaps fit: exit 130 {took:.3f} s after SIGINT")
    assert took < LIMIT, f"{took:.2f} s from SIGINT to exit"
    em = primaps.PriMaPsEM.load(ckpt)  # intact, nothing half-written beside it
    assert em.warmup_epoch_ + em.epoch_ >= 1
    assert not list((run / "run").glob(".primaps-*"))
