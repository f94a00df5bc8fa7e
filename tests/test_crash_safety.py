"""Crash safety of everything written to disk.

- kill -9 at random points of a checkpointed fit and of a pipeline that
  fills a feature store (features, then pseudo labels): every checkpoint
  and store left behind opens, holds at least what the writer had
  reported written, and a resumed run ends bitwise where an uninterrupted
  run ends;
- corrupt and truncated checkpoints and store files are reported with the
  file name, never read as something else;
- sizes read from files are checked before anything is allocated.

The writers run as subprocesses (cwd = tmp_path): Python programs on the
API (``via``), and the command line's ``pseudo`` and ``fit`` stages.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import primaps
from primaps import FeatureStore, FeatureStoreError

VIA = ["api"]
KILLS = 4  # kill -9 this many times before letting a run finish

# ------------------------------------------------------------ the writers

FIT_API = textwrap.dedent("""
    import os, sys
    import numpy as np
    import primaps

    ckpt, out = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((48, 24, 12, 12)).astype(np.float32)
    masks = rng.integers(0, 5, (48, 48, 48)).astype(np.int32)

    class Logged(primaps.PriMaPsEM):
        def save(self, path):
            super().save(path)  # returns once the checkpoint is durable
            print("saved", self.warmup_epoch_, self.epoch_, flush=True)

    if os.path.exists(ckpt):
        em = Logged.load(ckpt)
    else:
        em = Logged(n_classes=4, epochs=8, warmup_epochs=2, batch_size=6, seed=3)
    print("start", flush=True)
    em.fit((feats, masks), verbose=False, checkpoint=ckpt)
    np.savez(out, teacher_v=em.teacher_.v, teacher_g=em.teacher_.g, student_v=em.student_.v,
             student_g=em.student_.g, loss=np.asarray(em.loss_history_))
    print("done", flush=True)
""")

STORE_API = textwrap.dedent("""
    import sys
    import numpy as np
    import primaps

    path = sys.argv[1]
    n_shards, per_shard = 8, 6

    def features(k):
        rng = np.random.default_rng(k)
        return rng.standard_normal((per_shard, 16, 10, 10)).astype(np.float32)

    def pseudo_labels(feats):
        return primaps.masks(feats, out_size=(40, 40))

    store = primaps.FeatureStore(path, dtype="float32")
    print("start", flush=True)
    for k in range(n_shards):
        ids = [f"img{k}-{j}" for j in range(per_shard)]
        if ids[0] not in store:
            store.append(ids, features(k))
            print("appended", k, flush=True)
    have = set(store.mask_ids)
    for k, (ids, feats) in enumerate(store.iter_shards()):
        if ids[0] not in have:
            store.write_masks(ids, pseudo_labels(np.asarray(feats)))
            print("masks", k, flush=True)
    print("done", flush=True)
""")


def _spawn(program: str, args, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.Popen([sys.executable, "-c", program, *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(program: str, args, cwd: Path) -> list:
    proc = _spawn(program, args, cwd)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out.split("\n")


def _kill_at_random(program: str, args, cwd: Path, writes: int, gap: float, rng: random.Random):
    """Start the writer and kill -9 it at a random point: after a random
    number (below `writes`, the writes it has left) of its reported writes
    plus a random part of the mean time between two writes (`gap`), so the
    kill lands between writes or inside one.  Returns the lines it printed
    (each one after a durable write) and whether it finished first."""
    proc = _spawn(program, args, cwd)
    lines = []
    try:
        first = proc.stdout.readline()
        assert first.strip() == "start", proc.stderr.read()
        for _ in range(rng.randrange(max(writes - 1, 1))):  # a whole write is left
            line = proc.stdout.readline().strip()
            if not line:
                break
            lines.append(line)
        time.sleep(rng.uniform(0.0, gap))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += [ln for ln in out.split("\n") if ln]
    finished = "done" in lines
    assert finished or proc.returncode == -signal.SIGKILL, err
    return lines, finished


def _uninterrupted(program, args, cwd):
    """The writer's reported writes and the mean time between two of them."""
    proc = _spawn(program, args, cwd)
    assert proc.stdout.readline().strip() == "start"
    t0 = time.perf_counter()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    writes = [ln for ln in out.split("\n") if ln and ln != "done"]
    return writes, (time.perf_counter() - t0) / (len(writes) + 1)


# ------------------------------------------------------------ kill tests


@pytest.mark.parametrize("via", VIA)
def test_a_fit_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, via):
    program = {"api": FIT_API}[via]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir()
    broken.mkdir()
    writes, gap = _uninterrupted(program, ["em.npz", "result.npz"], whole)
    want = np.load(whole / "result.npz")
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    kills = 0
    saved = []
    done = 0  # checkpoints written so far
    for _ in range(2 * KILLS):
        if kills == KILLS:
            break
        lines, finished = _kill_at_random(program, ["em.npz", "out.npz"], broken,
                                          len(writes) - done, gap / 2, rng)
        if finished and kills:
            break
        if finished:  # the machine sped up: start over, the test needs a kill
            for p in broken.iterdir():
                p.unlink()
            continue
        kills += 1
        saved = [tuple(map(int, ln.split()[1:])) for ln in lines if ln.startswith("saved")] or saved
        ckpt = broken / "em.npz"
        if saved:  # nothing written before the kill is lost
            em = primaps.PriMaPsEM.load(ckpt)
            assert (em.warmup_epoch_, em.epoch_) >= saved[-1]
            done = sum(saved[-1])
        leftovers = [p.name for p in broken.iterdir() if p.name not in ("em.npz",)]
        assert all(n.startswith(".primaps-") for n in leftovers), leftovers
    print(f"\nfit: {kills} kills, last checkpoint (warm-up, EM epochs) {saved[-1] if saved else None}")
    assert kills >= 1, "the writer finished before any kill: the run is too short to test"
    _run(program, ["em.npz", "out.npz"], broken)
    got = np.load(broken / "out.npz")
    for key in want.files:
        assert np.array_equal(got[key], want[key]), f"{key} differs after {kills} kills"


def _store_contents(path: Path) -> dict:
    store = FeatureStore(path, mode="r")
    assert store.verify() == len(store._index["shards"]) + len(store._index["mask_shards"])
    return {i: (store[i], store.read_masks(i) if i in store.mask_ids else None) for i in store.ids}


@pytest.mark.parametrize("via", VIA)
def test_a_store_writer_killed_at_random_points_resumes_to_the_uninterrupted_store(tmp_path, via):
    program = {"api": STORE_API}[via]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir()
    broken.mkdir()
    writes, gap = _uninterrupted(program, ["s"], whole)
    want = _store_contents(whole / "s")
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    kills = []
    done = 0
    for _ in range(2 * KILLS):
        if len(kills) == KILLS:
            break
        lines, finished = _kill_at_random(program, ["s"], broken, len(writes) - done, gap / 2, rng)
        if finished and kills:
            break
        if finished:  # the machine sped up: start over, the test needs a kill
            shutil.rmtree(broken / "s")
            continue
        kills.append(lines[-1] if lines else "before the first write")
        done += len(lines)
        if not (broken / "s" / "index.json").exists():
            continue
        have = _store_contents(broken / "s")  # opens: the store is intact
        appended = [int(ln.split()[1]) for ln in lines if ln.startswith("appended")]
        masked = [int(ln.split()[1]) for ln in lines if ln.startswith("masks")]
        for k in appended:  # nothing reported written is lost
            assert f"img{k}-0" in have
        for k in masked:
            assert have[f"img{k}-0"][1] is not None
        for i, (f, m) in have.items():  # and what is there is right
            assert np.array_equal(f, want[i][0])
            assert m is None or np.array_equal(m, want[i][1])
    print(f"\nstore: {len(kills)} kills, after: {kills}")
    assert kills, "the writer finished before any kill: the run is too short to test"
    _run(program, ["s"], broken)
    got = _store_contents(broken / "s")
    assert list(got) == list(want)
    for i in want:
        assert np.array_equal(got[i][0], want[i][0]) and np.array_equal(got[i][1], want[i][1])


# ------------------------------------------------ corrupt and truncated files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((6, 8, 4, 4)).astype(np.float32)
    masks = rng.integers(0, 3, (6, 8, 8)).astype(np.int32)
    em = primaps.PriMaPsEM(3, epochs=2, warmup_epochs=1, batch_size=3)
    em.fit((feats, masks), verbose=False)
    path = tmp_path_factory.mktemp("ckpt") / "em.npz"
    em.save(path)
    return path, em


def _same(a, b) -> bool:
    return (np.array_equal(a.student_.v, b.student_.v) and np.array_equal(a.teacher_.g, b.teacher_.g)
            and a.loss_history_ == b.loss_history_ and a.step_ == b.step_)


def test_every_truncation_of_a_checkpoint_is_reported_with_its_name(checkpoint, tmp_path):
    path, _ = checkpoint
    data = path.read_bytes()
    bad = tmp_path / "cut.npz"
    for n in sorted(set(np.linspace(0, len(data) - 1, 40).astype(int))):
        bad.write_bytes(data[:n])
        with pytest.raises(ValueError, match="cut.npz"):
            primaps.PriMaPsEM.load(bad)


def test_a_flipped_byte_anywhere_in_a_checkpoint_is_reported_or_harmless(checkpoint, tmp_path):
    path, em = checkpoint
    data = bytearray(path.read_bytes())
    bad = tmp_path / "flip.npz"
    rng = np.random.default_rng(1)
    detected = 0
    for pos in rng.choice(len(data), 150, replace=False):
        mutated = bytearray(data)
        mutated[pos] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(mutated))
        try:
            got = primaps.PriMaPsEM.load(bad)
        except ValueError as e:
            assert "flip.npz" in str(e)
            detected += 1
        else:  # a flip in a field that carries no data (a time stamp) changes nothing
            assert _same(got, em), f"a flip at byte {pos} was read as different numbers"
    assert detected > 100


def test_a_flipped_bit_in_the_numbers_names_the_array(checkpoint, tmp_path):
    path, _ = checkpoint
    arrays = dict(np.load(path, allow_pickle=False))
    arrays["student_v"] = arrays["student_v"].copy()
    arrays["student_v"].view(np.uint32)[0, 0] ^= 1  # a different number, same shape
    bad = tmp_path / "bits.npz"
    np.savez(bad, **arrays)  # zip CRCs are right: only the checkpoint's own checksums see it
    with pytest.raises(ValueError, match=r"bits.npz: checksum mismatch in 'student_v'"):
        primaps.PriMaPsEM.load(bad)


def test_a_checkpoint_claiming_a_huge_array_is_refused_before_reading(tmp_path):
    # an .npy header that claims 2^40 float64 in a few bytes: refused, not allocated
    header = {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)}
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    bad = tmp_path / "huge.npz"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("student_v.npy", buf.getvalue() + b"\0" * 64)
    with pytest.raises(ValueError, match="huge.npz: entry student_v.npy claims shape"):
        primaps.PriMaPsEM.load(bad)


def test_a_checkpoint_with_pickled_objects_is_refused(tmp_path):
    bad = tmp_path / "obj.npz"
    np.savez(bad, student_v=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        primaps.PriMaPsEM.load(bad)


def test_a_compressed_or_oversized_checkpoint_is_refused(tmp_path, monkeypatch, checkpoint):
    path, _ = checkpoint
    arrays = dict(np.load(path, allow_pickle=False))
    bad = tmp_path / "zipped.npz"
    np.savez_compressed(bad, **arrays)
    with pytest.raises(ValueError, match="zipped.npz: entry .* is compressed"):
        primaps.PriMaPsEM.load(bad)
    import primaps._training as T

    monkeypatch.setattr(T, "MAX_CHECKPOINT_BYTES", path.stat().st_size - 1)
    with pytest.raises(ValueError, match="more than a primaps checkpoint may hold"):
        primaps.PriMaPsEM.load(path)


def test_a_store_index_claiming_more_than_a_shard_holds_is_refused(tmp_path):
    s = FeatureStore(tmp_path / "s", dtype="float32")
    s.append(["a", "b"], np.ones((2, 3, 4, 4), np.float32))
    s.close()
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    index["shards"][0]["shape"] = [2, 3, 4, 1 << 40]
    (tmp_path / "s" / "index.json").write_text(json.dumps(index))
    store = FeatureStore(tmp_path / "s", mode="r", verify=False)
    with pytest.raises(FeatureStoreError, match="features-000000.npy"):
        list(store.batches(2))
    with pytest.raises(FeatureStoreError, match="features-000000.npy"):
        store["a"]


def test_an_oversized_store_index_is_refused(tmp_path, monkeypatch):
    import primaps.features as F

    s = FeatureStore(tmp_path / "s")
    s.append(["a"], np.ones((1, 2, 2, 2), np.float32))
    s.close()
    monkeypatch.setattr(F, "MAX_INDEX_BYTES", 10)
    with pytest.raises(FeatureStoreError, match="index.json"):
        FeatureStore(tmp_path / "s", mode="r")


def test_every_report_and_picture_is_written_atomically(tmp_path, monkeypatch):
    """A failure in the middle of writing leaves the old file, no partial one."""
    import primaps._io as IO

    report = primaps.evaluate(np.array([[0, 1]]), np.array([[0, 1]]), 2)
    target = tmp_path / "report.json"
    report.to_json(target)
    before = target.read_bytes()
    monkeypatch.setattr(IO.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        primaps.evaluate(np.array([[1, 1]]), np.array([[0, 1]]), 2).to_json(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_mat_file_declaring_a_huge_array_is_refused_by_name(tmp_path, monkeypatch):
    from scipy.io import savemat

    from primaps.datasets import potsdam
    from primaps.datasets._base import DatasetFileError

    path = tmp_path / "tile.mat"
    savemat(path, {"img": np.zeros((20, 20, 4), np.uint8)})
    assert potsdam.load_mat(path, "img").shape == (20, 20, 4)
    monkeypatch.setattr(potsdam, "MAX_MAT_ELEMENTS", 20 * 20 * 4 - 1)
    with pytest.raises(DatasetFileError, match="tile.mat.*declares shape"):
        potsdam.load_mat(path, "img")


def test_the_package_never_unpickles_and_writes_only_through_atomic_write():
    """A static check of primaps/: every np.load refuses pickles, nothing
    unpickles, and only _io.py opens files for writing."""
    import re

    root = Path(primaps.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"np\.load\(([^)]*)\)", text):
            assert "allow_pickle=False" in m.group(1), f"{path.name}: {m.group(0)}"
        assert not re.search(r"pickle\.loads?\(|np\.fromfile|allow_pickle=True", text), path.name
        if path.name != "_io.py":
            assert not re.search(r"""open\([^)]*['"][wax]b?\+?['"]|os\.fdopen|mkstemp""", text), \
                f"{path.name} writes a file itself: use primaps._io.atomic_write"


# ------------------------------------------------- the command line, killed

CLI_TINY = """
[run]
out = "run"
threads = 1

[data]
dataset = "street"
n_train = 24
n_val = 4
size = 32

[backbone]
shard_size = 4

[masks]
crf = false

[em]
n_classes = 6
warmup_epochs = 1
epochs = 6
batch_size = 4

[eval]
pictures = false
"""


def _cli(cwd: Path, *args) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "primaps", *args, "-c", "tiny.toml", "-q"],
                       cwd=cwd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return p


def _cli_state(folder: Path, stage: str):
    """What the stage has written, read back (every file must open)."""
    if stage == "pseudo":
        store = FeatureStore(folder / "run/features/train", mode="r")
        store.verify()
        return {i: store.read_masks(i) for i in store.mask_ids}
    ckpt = folder / "run/em.npz"
    if not ckpt.exists():
        return None
    em = primaps.PriMaPsEM.load(ckpt)
    return em.teacher_.v, em.student_.v, em.loss_history_, (em.warmup_epoch_, em.epoch_)


def _written(folder: Path, stage: str):
    """Changes when the stage writes: the masks recorded, or em.npz's time stamp."""
    if stage == "pseudo":
        try:
            return _done_before_rerun(folder, stage)
        except ValueError:  # pragma: no cover - atomic writes: never half a file
            return None
    try:
        return (folder / "run/em.npz").stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _done_before_rerun(folder: Path, stage: str) -> int:
    """Work a rerun may reuse: masks in the store (all of the one config), or
    epochs in em.npz."""
    if stage == "pseudo":
        index = folder / "run/features/train/index.json"
        return len(FeatureStore(index.parent, mode="r").mask_ids) if index.exists() else 0
    state = _cli_state(folder, stage)
    return sum(state[3]) if state is not None else 0


@pytest.mark.parametrize("stage", ["pseudo", "fit"])
def test_a_cli_stage_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, stage):
    """`primaps pseudo` / `primaps fit` killed -9 at random moments: every
    store and checkpoint left behind opens intact, nothing written before a
    kill is lost, the rerun resumes (pseudo reuses the masks recorded, fit
    continues from the checkpoint's epoch) and ends bitwise where an
    uninterrupted run ends."""
    folders = {}
    for name in ("whole", "broken"):
        d = tmp_path / name
        d.mkdir()
        (d / "tiny.toml").write_text(CLI_TINY.replace("n_train = 24", "n_train = 96"))
        _cli(d, "extract")
        if stage == "fit":
            _cli(d, "pseudo")
        folders[name] = d
    first = json.loads(_cli(folders["whole"], stage, "--json").stdout)
    assert first.get("reused", first.get("resumed_from_epoch")) == 0
    seconds = first["seconds"] if stage == "pseudo" else first["em"]["seconds"]
    want = _cli_state(folders["whole"], stage)
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    kills = 0
    for _ in range(KILLS):
        before = _done_before_rerun(folders["broken"], stage)
        have = _cli_state(folders["broken"], stage)
        mark = _written(folders["broken"], stage)
        proc = subprocess.Popen([sys.executable, "-m", "primaps", stage, "-c", "tiny.toml", "-q"],
                                cwd=folders["broken"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # kill at a random moment after the run's next write (else the kill
        # mostly hits the interpreter's start-up, the stage being short)
        while proc.poll() is None and _written(folders["broken"], stage) == mark:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.6) * seconds)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=600)
        if proc.returncode == 0:
            continue
        kills += 1
        after = _done_before_rerun(folders["broken"], stage)
        assert after >= before, "a killed rerun lost work written before it"
        state = _cli_state(folders["broken"], stage)  # opens: nothing is corrupt
        if stage == "pseudo":  # the masks kept are the ones an uninterrupted run writes
            assert set(have) <= set(state)
            for i, m in state.items():
                assert np.array_equal(m, want[i])
        elif state is not None:
            k = len(state[2])
            assert state[2] == want[2][:k]
    print(f"\ncli {stage}: {kills} kills")
    before = _done_before_rerun(folders["broken"], stage)
    res = json.loads(_cli(folders["broken"], stage, "--json").stdout)
    if stage == "pseudo":
        assert res["reused"] == before  # every recorded mask reused, none recomputed
    else:
        assert res["resumed_from_epoch"] == before
    got = _cli_state(folders["broken"], stage)
    if stage == "pseudo":
        assert sorted(got) == sorted(want)
        for i in want:
            assert np.array_equal(got[i], want[i])
    else:
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert got[2] == want[2] and got[3] == want[3]
    assert kills >= 1, "every run finished before its kill"
    assert before > 0, "no kill came after the first write: nothing was resumed"


def test_fit_refuses_a_checkpoint_of_another_config_and_restart_starts_over(tmp_path):
    (tmp_path / "tiny.toml").write_text(CLI_TINY.replace("epochs = 6", "epochs = 2"))
    _cli(tmp_path, "extract")
    _cli(tmp_path, "pseudo")
    first = json.loads(_cli(tmp_path, "fit", "--json").stdout)
    assert first["resumed_from_epoch"] == 0
    again = json.loads(_cli(tmp_path, "fit", "--json").stdout)
    assert again["resumed_from_epoch"] == 3  # 1 warm-up + 2 EM epochs: nothing left to do
    p = subprocess.run([sys.executable, "-m", "primaps", "fit", "-c", "tiny.toml", "-q",
                        "--set", "em.lr=0.01", "--set", "em.epochs=3"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2
    assert "em.npz does not match the current inputs: it was trained with a different " \
           "config (em.lr, em.epochs)" in p.stderr
    assert "--restart" in p.stderr and "--out" in p.stderr
    # fields that do not change the result (threads, batch sizes of masks) are no mismatch
    same = json.loads(_cli(tmp_path, "fit", "--json", "--set", "run.threads=2",
                           "--set", "masks.batch_size=3").stdout)
    assert same["resumed_from_epoch"] == 3
    old = primaps.PriMaPsEM.load(tmp_path / "run/em.npz")
    new = json.loads(_cli(tmp_path, "fit", "--json", "--restart", "--set", "em.lr=0.01").stdout)
    assert new["resumed_from_epoch"] == 0
    em = primaps.PriMaPsEM.load(tmp_path / "run/em.npz")
    assert em.lr == 0.01 and em.epoch_ == 2
    assert not np.array_equal(em.teacher_.v, old.teacher_.v)
    again = json.loads(_cli(tmp_path, "fit", "--json", "--set", "em.lr=0.01").stdout)
    assert again["resumed_from_epoch"] == 3


def test_pseudo_recomputes_the_masks_of_another_mask_config(tmp_path):
    (tmp_path / "tiny.toml").write_text(CLI_TINY)
    _cli(tmp_path, "extract")
    assert json.loads(_cli(tmp_path, "pseudo", "--json").stdout)["reused"] == 0
    assert json.loads(_cli(tmp_path, "pseudo", "--json").stdout)["reused"] == 24
    res = json.loads(_cli(tmp_path, "pseudo", "--json", "--set", "masks.threshold=0.6").stdout)
    assert res["reused"] == 0 and res["images"] == 24
    store = FeatureStore(tmp_path / "run/features/train", mode="r")
    from primaps.config import load_config
    from primaps.pipeline import masks_of

    cfg = load_config(str(tmp_path / "tiny.toml"), ["masks.threshold=0.6"])
    want = masks_of(cfg, store.read(["street_train_00000"]), (32, 32))[0]
    assert np.array_equal(store.read_masks("street_train_00000"), want)
