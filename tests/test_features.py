"""FeatureStore: round trips, streaming, pseudo labels, corruption, a writer
killed in the middle of an append, and bounded memory while streaming a store
four times larger than the memory it may use."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from primaps import FeatureStore, FeatureStoreError
from primaps.datasets import Protocol



def feats(n, shape=(6, 4, 5), seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)


def ids(start, n):
    return [f"img{k:04d}" for k in range(start, start + n)]


@pytest.fixture
def store(tmp_path):
    """A float32 store of 3 shards (4 + 3 + 5 images)."""
    s = FeatureStore(tmp_path / "s", dtype="float32", backbone="dino_vits8", protocol=Protocol())
    x = feats(12)
    s.append(ids(0, 4), x[:4])
    s.append(ids(4, 3), x[4:7])
    s.append(ids(7, 5), x[7:])
    yield s, x
    s.close()


# ------------------------------------------------------------- round trips


def test_round_trip_float32(store, tmp_path):
    s, x = store
    assert len(s) == 12 and s.n_shards == 3 and s.ids == ids(0, 12)
    assert s.item_shape == (6, 4, 5) and s.dtype == np.float32
    for k, i in enumerate(s.ids):
        np.testing.assert_array_equal(s[i], x[k])
    np.testing.assert_array_equal(s.read(["img0005", "img0001"]), x[[5, 1]])
    s.close()
    r = FeatureStore(tmp_path / "s", mode="r")
    assert r.ids == ids(0, 12) and r.backbone == "dino_vits8"
    assert r.protocol == Protocol().as_dict() and r.protocol["center_crop"] == 320
    shard_ids, mm = r.shard(1)
    assert shard_ids == ids(4, 3) and isinstance(mm, np.memmap) and not mm.flags.writeable
    np.testing.assert_array_equal(mm, x[4:7])
    assert [len(i) for i, _ in r.iter_shards()] == [4, 3, 5]
    assert r.verify() == 3


def test_round_trip_float16_default(tmp_path):
    s = FeatureStore(tmp_path / "s")
    x = feats(5) * 100
    s.append(ids(0, 5), x.astype(np.float64))  # any real dtype is converted
    assert s.dtype == np.float16
    np.testing.assert_array_equal(s["img0003"], x[3].astype(np.float16))
    assert np.load(tmp_path / "s" / "features-000000.npy", allow_pickle=False).dtype == np.float16
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert index["shards"][0]["shape"] == [5, 6, 4, 5] and index["dtype"] == "float16"


def test_reopen_appends_after_the_last_shard(store, tmp_path):
    s, x = store
    s.close()
    s2 = FeatureStore(tmp_path / "s")
    s2.append(ids(12, 2), feats(2, seed=1))
    assert s2.n_shards == 4 and len(s2) == 14 and "img0013" in s2 and "nope" not in s2
    assert sorted(os.listdir(tmp_path / "s")) == [
        ".lock", "features-000000.npy", "features-000001.npy", "features-000002.npy",
        "features-000003.npy", "index.json"]  # fmt: skip


# --------------------------------------------------------------- streaming


def test_batches_cover_every_image_once_with_its_features(store):
    s, x = store
    seen = {}
    for batch_ids, f in s.batches(5, shuffle=True, seed=0):
        assert f.dtype == np.float32 and f.shape[1:] == (6, 4, 5)
        for i, row in zip(batch_ids, f):
            seen[i] = row
    assert sorted(seen) == s.ids
    for k, i in enumerate(s.ids):
        np.testing.assert_array_equal(seen[i], x[k])


def test_batches_sizes_and_drop_last(store):
    s, _ = store
    assert [len(b[0]) for b in s.batches(5, shuffle=False)] == [5, 5, 2]
    assert [len(b[0]) for b in s.batches(5, shuffle=False, drop_last=True)] == [5, 5]
    assert [b[0] for b in s.batches(12, shuffle=False)] == [ids(0, 12)]


def test_batches_shuffle_is_seeded(store):
    s, _ = store
    run = lambda seed: [i for b in s.batches(4, seed=seed) for i in b[0]]  # noqa: E731
    assert run(1) == run(1) and run(1) != run(2) and sorted(run(1)) == s.ids
    assert [i for b in s.batches(4, shuffle=False) for i in b[0]] == s.ids


def test_batches_with_a_window_of_one_shard(store):
    s, x = store
    rows = 0
    windows_seen = []
    for batch_ids, f in s.batches(3, seed=4, max_memory=1):
        rows += len(batch_ids)
        windows_seen.append(len(batch_ids))
        for i, row in zip(batch_ids, f):
            np.testing.assert_array_equal(row, x[int(i[3:])])
    assert rows == 12 and windows_seen == [3, 3, 3, 3]


def test_batches_in_store_dtype(tmp_path):
    s = FeatureStore(tmp_path / "s")
    s.append(ids(0, 3), feats(3))
    (_, f), = list(s.batches(3, dtype=None))
    assert f.dtype == np.float16


# ------------------------------------------------------------ pseudo labels


def test_masks_round_trip_and_compact_dtype(store, tmp_path):
    s, _ = store
    rng = np.random.default_rng(1)
    small = rng.integers(0, 30, (4, 16, 16))
    s.write_masks(ids(0, 4), small)
    wide = rng.integers(0, 1000, (3, 16, 16))
    s.write_masks(ids(4, 3), wide)
    neg = rng.integers(-5, 5, (5, 16, 16)).astype(np.int64)
    s.write_masks(ids(7, 5), neg)
    dtypes = [np.load(tmp_path / "s" / f"masks-00000{k}.npy", mmap_mode="r").dtype for k in range(3)]
    assert dtypes == [np.uint8, np.uint16, np.int32]
    out = s.read_masks("img0002")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, small[2])
    np.testing.assert_array_equal(s.read_masks("img0005"), wide[1])
    np.testing.assert_array_equal(s.read_masks("img0011"), neg[4])
    assert sorted(s.mask_ids) == s.ids


def test_masks_written_again_supersede(store, tmp_path):
    s, _ = store
    s.write_masks(["img0001", "img0002"], np.zeros((2, 8, 8), np.int32))
    s.write_masks(["img0002"], np.full((1, 8, 8), 7))
    s.close()
    r = FeatureStore(tmp_path / "s", mode="r")
    assert r.read_masks("img0002").max() == 7 and r.read_masks("img0001").max() == 0


def test_batches_with_masks(store):
    s, x = store
    for k in range(0, 12, 5):
        chunk = ids(k, min(5, 12 - k))
        s.write_masks(chunk, np.stack([np.full((8, 8), int(i[3:])) for i in chunk]))
    n = 0
    for batch_ids, f, m in s.batches(4, seed=3, masks=True):
        assert m.dtype == np.int32 and m.shape == (len(batch_ids), 8, 8)
        for i, row, mask in zip(batch_ids, f, m):
            assert np.all(mask == int(i[3:]))
            np.testing.assert_array_equal(row, x[int(i[3:])])
        n += len(batch_ids)
    assert n == 12


def test_batches_with_masks_requires_all(store):
    s, _ = store
    s.write_masks(["img0001"], np.zeros((1, 4, 4), np.int32))
    with pytest.raises(ValueError, match="masks=True but 11 images have no pseudo labels"):
        next(s.batches(2, masks=True))


def test_masks_errors(store):
    s, _ = store
    with pytest.raises(ValueError, match="ids not in the store: 'nope'"):
        s.write_masks(["nope"], np.zeros((1, 4, 4), np.int32))
    with pytest.raises(TypeError, match="masks must be an integer array, got dtype float32"):
        s.write_masks(["img0001"], np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"masks must have shape \(n, H, W\) with n >= 1, got \(4, 4\)"):
        s.write_masks(["img0001"], np.zeros((4, 4), np.int32))
    with pytest.raises(KeyError, match="no pseudo labels for 'img0001'"):
        s.read_masks("img0001")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,err,msg", [
    ((["a"], np.zeros((1, 2, 3))), ValueError, r"features must have shape \(n, C, h, w\) with n >= 1, got \(1, 2, 3\)"),
    ((["a", "b"], np.zeros((1, 2, 3, 3))), ValueError, "ids holds 2 ids for 1 arrays"),
    ((["a", "a"], np.zeros((2, 2, 3, 3))), ValueError, "ids holds 'a' more than once"),
    (([1], np.zeros((1, 2, 3, 3))), TypeError, "ids must hold strings, got int 1"),
    (("ab", np.zeros((2, 2, 3, 3))), TypeError, "ids must be a sequence of strings, got a single str"),
    ((["a"], np.zeros((1, 2, 3, 3), bool)), TypeError, "features must be a numeric array, got dtype bool"),
    ((["a"], "text"), TypeError, "features must be a numeric array, got dtype <U4"),
    ((["a"], np.full((1, 2, 3, 3), np.nan)), ValueError, "features hold NaN or inf"),
    ((["a"], np.full((1, 2, 3, 3), 1e6)), ValueError, "features hold values too large for float16"),
])  # fmt: skip
def test_append_bad_input(tmp_path, args, err, msg):
    s = FeatureStore(tmp_path / "s")
    with pytest.raises(err, match=msg):
        s.append(*args)
    assert len(s) == 0 and s.n_shards == 0


def test_append_shape_and_duplicates_across_shards(store):
    s, _ = store
    with pytest.raises(ValueError, match=r"features must have shape \(n, 6, 4, 5\) like the rest of the store, got \(1, 6, 4, 4\)"):
        s.append(["new"], np.zeros((1, 6, 4, 4)))
    with pytest.raises(ValueError, match="ids already in the store: 'img0003'"):
        s.append(["img0003"], np.zeros((1, 6, 4, 5)))


def test_open_errors(tmp_path, store):
    s, _ = store
    with pytest.raises(ValueError, match="mode must be 'a' or 'r', got 'w'"):
        FeatureStore(tmp_path / "x", mode="w")
    with pytest.raises(ValueError, match="dtype must be float16 or float32, got int8"):
        FeatureStore(tmp_path / "x", dtype="int8")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none" / "index.json"))):
        FeatureStore(tmp_path / "none", mode="r")
    with pytest.raises(ValueError, match="dtype=float16 but the store at .* holds float32"):
        FeatureStore(tmp_path / "s", mode="r", dtype="float16")
    with pytest.raises(ValueError, match="backbone='dinov2_vits14' but the store .* was written with 'dino_vits8'"):
        FeatureStore(tmp_path / "s", mode="r", backbone="dinov2_vits14")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a feature store: it holds notes.txt but no index.json"):
        FeatureStore(tmp_path / "other")


def test_one_writer_at_a_time(store, tmp_path):
    with pytest.raises(RuntimeError, match="another process is writing to the feature store"):
        FeatureStore(tmp_path / "s")
    reader = FeatureStore(tmp_path / "s", mode="r")
    with pytest.raises(ValueError, match="open read-only"):
        reader.append(["z"], np.zeros((1, 6, 4, 5)))


def test_batches_bad_arguments_fail_at_the_call(store):
    s, _ = store
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        s.batches(0)
    with pytest.raises(ValueError, match="max_memory must be a positive number of bytes, got -1"):
        s.batches(2, max_memory=-1)
    with pytest.raises(ValueError, match="dtype must be a floating-point dtype, got int32"):
        s.batches(2, dtype=np.int32)
    with pytest.raises(ValueError, match="masks=True but 12 images have no pseudo labels"):
        s.batches(2, masks=True)


def test_missing_image_id(store):
    s, _ = store
    with pytest.raises(KeyError, match="no image 'nope' in the feature store"):
        s["nope"]


# --------------------------------------------------------------- corruption


def test_truncated_shard_is_reported_at_open(store, tmp_path):
    s, _ = store
    s.close()
    path = tmp_path / "s" / "features-000001.npy"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    with pytest.raises(FeatureStoreError, match=re.escape(str(path)) + ": .* bytes, the index says"):
        FeatureStore(tmp_path / "s", mode="r")


def test_missing_shard_is_reported_at_open(store, tmp_path):
    s, _ = store
    s.close()
    (tmp_path / "s" / "features-000002.npy").unlink()
    with pytest.raises(FeatureStoreError, match="features-000002.npy: listed in the index but missing"):
        FeatureStore(tmp_path / "s", mode="r")


@pytest.mark.parametrize("read", ["getitem", "batches", "verify"])
def test_corrupt_shard_is_reported_with_its_name(store, tmp_path, read):
    s, _ = store
    s.close()
    path = tmp_path / "s" / "features-000001.npy"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x40
    path.write_bytes(bytes(data))
    r = FeatureStore(tmp_path / "s", mode="r")
    np.testing.assert_array_equal(r["img0000"], store[1][0])  # other shards still read
    with pytest.raises(FeatureStoreError, match=re.escape(str(path)) + ": checksum mismatch") as e:
        if read == "getitem":
            r["img0005"]
        elif read == "batches":
            list(r.batches(4))
        else:
            r.verify()
    assert e.value.path == str(path)


def test_corrupt_header_is_reported_with_its_name(store, tmp_path):
    s, _ = store
    s.close()
    path = tmp_path / "s" / "features-000000.npy"
    data = bytearray(path.read_bytes())
    data[:6] = b"NOTNPY"
    path.write_bytes(bytes(data))
    r = FeatureStore(tmp_path / "s", mode="r", verify=False)
    with pytest.raises(FeatureStoreError, match=re.escape(str(path)) + ": not a valid .npy shard"):
        list(r.batches(4, shuffle=False))


def test_corrupt_index_is_reported_with_its_name(store, tmp_path):
    s, _ = store
    s.close()
    (tmp_path / "s" / "index.json").write_text('{"format": "primaps-feature-store", ')
    with pytest.raises(FeatureStoreError, match=re.escape(str(tmp_path / "s" / "index.json")) + ": cannot read the index"):
        FeatureStore(tmp_path / "s")


# ------------------------------------------------------ killed writer (SIGKILL)

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import primaps.features as F
    path, phase = sys.argv[1], sys.argv[2]
    store = F.FeatureStore(path, dtype="float32")
    def batch(k):
        return np.full((3, 4, 8, 8), float(k), np.float32) + np.arange(3, dtype=np.float32)[:, None, None, None]
    for k in range(3):
        store.append([f"s{k}-{j}" for j in range(3)], batch(k))

    def stall():
        print("STALLED", flush=True)
        time.sleep(120)

    if phase == "mid-write":            # half of the temporary shard is on disk
        F.CHUNK = 256
        real = F.zlib.crc32
        calls = []
        class Z:
            @staticmethod
            def crc32(data, value=0):
                calls.append(1)
                if len(calls) == 4:
                    stall()
                return real(data, value)
        F.zlib = Z
    elif phase == "before-rename":      # the temporary shard is complete
        F.os.replace = lambda src, dst: stall()
    elif phase == "before-index":       # the shard is renamed, the index not yet
        real_replace = F.os.replace
        def replace(src, dst):
            if F.os.path.basename(dst) == "index.json":
                stall()
            real_replace(src, dst)
        F.os.replace = replace
    elif phase == "index-temp":         # the new index is written but not renamed
        real_fsync = F.os.fsync
        count = []
        def fsync(fd):
            real_fsync(fd)
            count.append(1)
            if len(count) == 3:  # shard file, shard folder, then the index file
                stall()
        F.os.fsync = fsync
    store.append([f"s3-{j}" for j in range(3)], batch(3))
    print("FINISHED", flush=True)
""")


@pytest.mark.parametrize("phase", ["mid-write", "before-rename", "before-index", "index-temp"])
def test_writer_killed_in_the_middle_of_an_append(tmp_path, phase):
    path = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), phase],
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    try:
        line = proc.stdout.readline().strip()
        assert line == "STALLED", f"the writer did not reach the {phase} point: {line!r}"
        leftovers = sorted(os.listdir(path))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert any(n.startswith(".tmp-") or n == "features-000003.npy" for n in leftovers), leftovers

    reader = FeatureStore(path, mode="r")
    assert reader.ids == [f"s{k}-{j}" for k in range(3) for j in range(3)]
    for k in range(3):
        for j in range(3):
            np.testing.assert_array_equal(reader[f"s{k}-{j}"], np.full((4, 8, 8), k + j, np.float32))
    assert reader.verify() == 3

    writer = FeatureStore(path)  # resumes: the leftovers are removed
    assert sorted(os.listdir(path)) == [".lock", "features-000000.npy", "features-000001.npy",
                                        "features-000002.npy", "index.json"]  # fmt: skip
    missing = [i for i in [f"s3-{j}" for j in range(3)] if i not in writer]
    writer.append(missing, np.full((3, 4, 8, 8), 3.0, np.float32))
    assert len(writer) == 12 and writer.verify() == 4
    assert sum(len(b[0]) for b in writer.batches(5)) == 12


# ------------------------------------------------------- bounded memory (RSS)

STREAMER = textwrap.dedent("""
    import sys
    import numpy as np
    import primaps

    def hwm():
        # VmHWM: peak RSS of this process image (ru_maxrss would include the
        # parent's RSS at fork time, which survives exec on Linux)
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

    path, budget = sys.argv[1], int(sys.argv[2])
    store = primaps.FeatureStore(path, mode="r")
    base = hwm()
    n, total = 0, 0.0
    for ids, f in store.batches(16, shuffle=True, seed=0, max_memory=budget, dtype=None):
        n += len(ids)
        total += float(f[:, 0, 0, 0].astype(np.float64).sum())
    print(n, total, base, hwm())
""")


@pytest.mark.rss
def test_streaming_a_store_larger_than_memory_stays_bounded(tmp_path):
    # 32 shards x 64 MiB = 2 GiB of float16 features (52 images of 384 x 40 x 40
    # each, like DINO ViT-S/8 on 320 x 320 crops), streamed under a 512 MiB cap
    # (in the store's dtype: NumPy's float16 -> float32 cast would dominate the
    # test's time; the conversion is covered by the small tests).
    path = tmp_path / "big"
    s = FeatureStore(path, dtype="float16")
    per_shard, shape = 52, (384, 40, 40)
    block = np.empty((per_shard,) + shape, np.float16)
    expected = 0.0
    for k in range(32):
        block[...] = np.arange(per_shard, dtype=np.float16)[:, None, None, None] + k
        s.append([f"{k}-{j}" for j in range(per_shard)], block)
        expected += float(block[:, 0, 0, 0].astype(np.float64).sum())
    del block
    s.close()
    size = sum(f.stat().st_size for f in path.glob("features-*.npy"))
    assert size > 2 * 10**9
    budget = 192 << 20
    out = subprocess.run([sys.executable, "-c", STREAMER, str(path), str(budget)],
                         capture_output=True, text=True, check=True, cwd=tmp_path)  # fmt: skip
    n, total, base, peak = out.stdout.split()
    assert int(n) == 32 * per_shard and float(total) == expected
    # window (192 MiB) + two float16 batches (2 x 20 MiB) + the carried rows (< 20 MiB)
    assert int(peak) < 512 << 20, f"peak RSS {int(peak) >> 20} MiB (baseline {int(base) >> 20} MiB)"
    assert int(peak) - int(base) < budget + (96 << 20)


def test_a_failed_index_write_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    import primaps._io as IO

    s = FeatureStore(tmp_path / "s")
    real = IO.os.replace

    def failing(src, dst):
        if os.path.basename(dst) == "index.json":
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(IO.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        s.append(ids(0, 2), feats(2))
    assert len(s) == 0 and s.item_shape is None and "img0000" not in s
    monkeypatch.setattr(IO.os, "replace", real)
    s.append(ids(0, 3), feats(3, shape=(2, 2, 2)))
    assert s.item_shape == (2, 2, 2) and s.ids == ids(0, 3)
