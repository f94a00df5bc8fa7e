"""The PriMaPsEM estimator: the training schedule (Adam, EMA), determinism,
checkpoints and resuming, inputs from arrays and iterables, bad input."""

import json
import os

import numpy as np
import pytest
from conftest import torch_or_skip
from twins import em as twin

import primaps
from primaps import _core
from primaps._training import Adam, ema_decay


def toy_data(rng, n=12, C=16, K=4, h=6, w=6, scale=4):
    """Blocks of K classes with prototypes + noise; masks: the blocks,
    renumbered per image, at label resolution."""
    protos = rng.standard_normal((K, C)).astype(np.float32) * 2
    lab = np.zeros((n, h, w), np.int64)
    for i in range(n):
        cls = rng.permutation(K)
        lab[i, : h // 2, : w // 2] = cls[0]
        lab[i, : h // 2, w // 2:] = cls[1 % K]
        lab[i, h // 2:, : w // 2] = cls[2 % K]
        lab[i, h // 2:, w // 2:] = cls[3 % K]
    F = protos[lab].transpose(0, 3, 1, 2) + 0.6 * rng.standard_normal((n, C, h, w))
    ids = np.zeros((h, w), np.int32)
    ids[: h // 2, : w // 2], ids[: h // 2, w // 2:] = 1, 2
    ids[h // 2:, : w // 2], ids[h // 2:, w // 2:] = 3, 4
    masks = np.repeat(np.repeat(ids, scale, 0), scale, 1)
    masks = np.broadcast_to(masks, (n,) + masks.shape).copy()
    masks[:, -2:, :] = 0  # a background strip
    gt = np.repeat(np.repeat(lab, scale, 1), scale, 2)
    return np.ascontiguousarray(F, np.float32), masks, gt


@pytest.fixture
def data(rng):
    return toy_data(rng)


def small_em(**kw):
    args = dict(n_classes=4, epochs=2, warmup_epochs=1, batch_size=4, ema_every=2)
    args.update(kw)
    return primaps.PriMaPsEM(**args)


# ------------------------------------------------------------ schedule


def test_ema_schedule_values():
    beta = 0.98
    assert ema_decay(1, beta) == 0.0 and ema_decay(2, beta) == 0.0
    assert ema_decay(3, beta) == pytest.approx(2 / 3)
    assert ema_decay(4, beta) == pytest.approx(3 / 4)
    assert ema_decay(49, beta) == pytest.approx(1 - 1 / 49)
    assert ema_decay(50, beta) == pytest.approx(0.98)
    assert ema_decay(500, beta) == 0.98
    for j in range(1, 80):
        assert ema_decay(j, beta) == twin.ema_decay(j, beta)
    with pytest.raises(ValueError, match="j must be >= 1"):
        ema_decay(0, beta)


def test_teacher_follows_the_schedule(data):
    """Replay the student's states: the teacher equals the EMA of the
    students after every ema_every-th step, with the schedule's decays."""
    F, masks, _ = data
    em = small_em(ema_every=2, hflip=False)
    em.init_pca(F, verbose=False)
    teacher = em.teacher_.v.astype(np.float64).copy()
    j = 0
    for step in range(1, 9):
        em.partial_fit((F[:4], masks[:4]))
        assert em.step_ == step
        if step % 2 == 0:
            j += 1
            d = twin.ema_decay(j, 0.98)
            teacher = d * teacher + (1 - d) * em.student_.v
            assert em.ema_updates_ == j
        np.testing.assert_allclose(em.teacher_.v, teacher, rtol=1e-5, atol=1e-6)
    # the first two updates copied the student exactly
    em2 = small_em(ema_every=1, hflip=False)
    em2.init_pca(F, verbose=False)
    em2.partial_fit((F[:4], masks[:4]))
    assert np.array_equal(em2.teacher_.v, em2.student_.v)


def test_adam_matches_reference(rng):
    p = rng.standard_normal((5, 3)).astype(np.float32)
    ref = p.astype(np.float64)
    opt = Adam({"p": p}, lr=5e-3)
    ref_opt = twin.AdamRef(p.shape, 5e-3)
    for _ in range(30):
        g = rng.standard_normal(p.shape).astype(np.float32)
        opt.update({"p": p}, {"p": g})
        ref = ref_opt.step(ref, g.astype(np.float64))
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)
    assert opt.step == 30


def test_adam_matches_torch(rng):
    torch = torch_or_skip()
    p = rng.standard_normal((7, 4)).astype(np.float32)
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    topt = torch.optim.Adam([tp], lr=5e-3, betas=(0.9, 0.999), eps=1e-8)
    opt = Adam({"p": p}, lr=5e-3)
    for _ in range(25):
        g = rng.standard_normal(p.shape).astype(np.float32) * 1e-3
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        opt.update({"p": p}, {"p": g})
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_partial_fit_takes_exactly_one_step(data):
    F, masks, _ = data
    em = small_em()
    em.init_pca(F, verbose=False)
    before = em.student_.v.copy()
    em.partial_fit((F[:3], masks[:3]))
    assert em.step_ == 1 and len(em.loss_history_) == 1 and em._adam.step == 1
    assert not np.array_equal(before, em.student_.v)
    assert np.isfinite(em.loss_history_[0]) and em.loss_history_[0] > 0


def test_partial_fit_equals_one_step_by_hand(data):
    F, masks, _ = data
    em = small_em(hflip=False)
    em.init_pca(F, verbose=False)
    s = em.student_.copy()
    ws = _core.em_workspace()
    loss, chi, dv, dg = _core.em_step(ws, F[:4], masks[:4], s.v, s.g, s.v, s.g, 2.0)
    opt = Adam({"v": s.v, "g": s.g}, 5e-3)
    opt.update({"v": s.v, "g": s.g}, {"v": dv, "g": dg})
    em.partial_fit((F[:4], masks[:4]))
    assert em.loss_history_ == [loss]
    assert np.array_equal(em.student_.v, s.v) and np.array_equal(em.student_.g, s.g)


# -------------------------------------------------------------- fitting


def test_fit_improves_on_kmeans_and_predicts(data):
    F, masks, gt = data
    em = small_em(epochs=6, warmup_epochs=2, ema_every=3)
    em.fit((F, masks), verbose=False)
    assert em.epoch_ == 6 and em.warmup_epoch_ == 2
    assert len(em.warmup_loss_history_) == 2 * 3 and len(em.loss_history_) == 6 * 3
    assert em.loss_history_[-1] < em.loss_history_[0]
    pred = em.predict(F, gt.shape[1:])
    assert pred.shape == gt.shape and pred.dtype == np.int32
    assert pred.min() >= 0 and pred.max() < 4
    # the prediction is the argmax of theta . F, upsampled
    theta = em.prototypes("teacher")
    np.testing.assert_allclose(theta, twin.weightnorm(em.teacher_.v, em.teacher_.g),
                               rtol=1e-5, atol=1e-6)
    assert np.array_equal(em.predict(F[0], 24, which="student"),
                          _core.em_predict(_core.em_workspace(), F[:1],
                                           em.prototypes("student"), 24)[0])
    # a clean toy problem: clusters match classes up to a permutation
    from scipy.optimize import linear_sum_assignment

    S = np.zeros((4, 4))
    np.add.at(S, (pred.ravel(), gt.ravel()), 1)
    r, c = linear_sum_assignment(S, maximize=True)
    assert S[r, c].sum() / S.sum() > 0.9


def test_pseudo_labels_follow_the_masks(data):
    F, masks, _ = data
    em = small_em()
    em.init_pca(F, verbose=False)
    p = em.pseudo_labels(F[:2], masks[:2])
    assert p.dtype == np.uint8 and p.shape == masks[:2].shape
    assert np.all(p[masks[:2] == 0] == 255)
    for i in range(1, 5):
        assert len(np.unique(p[0][masks[0] == i])) == 1
    assert em.pseudo_labels(F[0], masks[0]).shape == masks[0].shape


def test_student_views_feed_the_student(data, rng):
    F, masks, _ = data
    S = (F + 0.3 * rng.standard_normal(F.shape)).astype(np.float32)
    a = small_em(hflip=False).init_from(F[0, :, :4, 0].T.copy())
    b = small_em(hflip=False).init_from(F[0, :, :4, 0].T.copy())
    a.partial_fit((F[:4], masks[:4], S[:4]))
    b.partial_fit((F[:4], masks[:4]))
    assert not np.array_equal(a.student_.v, b.student_.v)
    ws = _core.em_workspace()
    v0 = F[0, :, :4, 0].T.copy()
    g0 = np.ones(4, np.float32)
    ref = _core.em_step(ws, F[:4], masks[:4], v0, g0, v0, g0, 2.0, student_features=S[:4])
    assert a.loss_history_[0] == ref[0]


def test_fit_from_an_iterable_of_batches(data):
    F, masks, _ = data
    batches = [(F[i:i + 4], masks[i:i + 4]) for i in range(0, 12, 4)]
    em = small_em(epochs=2, warmup_epochs=1)
    em.fit(batches, verbose=False)
    assert em.step_ == 6 and len(em.warmup_loss_history_) == 3
    with pytest.raises(TypeError, match="one-shot iterator"):
        small_em().fit(iter(batches), verbose=False)


def test_init_pca_gives_signed_principal_directions(data, rng):
    F, _, _ = data
    em = small_em()
    em.init_pca(F, verbose=False)
    V = em.student_.v.astype(np.float64)
    assert V.shape == (4, 16)
    np.testing.assert_allclose(V @ V.T, np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(em.student_.g, np.ones(4))
    np.testing.assert_array_equal(em.teacher_.v, em.student_.v)
    X = F.transpose(1, 0, 2, 3).reshape(16, -1).astype(np.float64)
    evals, evecs = np.linalg.eigh(np.cov(X, bias=True))
    ref = evecs[:, ::-1][:, :4].T
    np.testing.assert_allclose(np.abs(np.sum(V * ref, axis=1)), 1, atol=1e-4)
    s = V @ (X / np.linalg.norm(X, axis=0))
    assert np.all(s.max(axis=1) >= -s.min(axis=1))  # the extreme pole is positive
    # iterables and sub-sampled pixels give the same directions up to sign
    em2 = small_em().init_pca([F[:6], F[6:]], verbose=False)
    np.testing.assert_allclose(em2.student_.v, em.student_.v, atol=1e-5)
    em3 = small_em().init_pca(F, max_pixels=200, verbose=False)
    assert np.all(np.abs(np.sum(em3.student_.v * V, axis=1)) > 0.8)


def test_init_pca_reads_batches_once_with_their_pixel_count(data, monkeypatch):
    # with n_pixels the batches are read once (the sample kept, in their
    # dtype, for the signs); the directions are the bits of the array's
    F, _, _ = data
    F16 = F.astype(np.float16)
    ref = small_em().init_pca(F16.astype(np.float32), max_pixels=500, verbose=False).student_.v

    class Once:
        reads = 0

        def __iter__(self):
            Once.reads += 1
            yield F16[:5]
            yield F16[5:]

    n = F.shape[0] * F.shape[2] * F.shape[3]
    em = small_em().init_pca(Once(), max_pixels=500, n_pixels=n, verbose=False)
    assert Once.reads == 1
    np.testing.assert_array_equal(em.student_.v, ref)
    # a sample over the size kept is read again instead: the same bits
    import primaps.em as em_mod
    monkeypatch.setattr(em_mod, "KEEP_SAMPLE_BYTES", 0)
    Once.reads = 0
    em = small_em().init_pca(Once(), max_pixels=500, n_pixels=n, verbose=False)
    assert Once.reads == 2
    np.testing.assert_array_equal(em.student_.v, ref)
    Once.reads = 0
    np.testing.assert_array_equal(small_em().init_pca(Once(), max_pixels=500,
                                                      verbose=False).student_.v, ref)
    assert Once.reads == 3  # counting, covariance, signs
    with pytest.raises(ValueError, match="n_pixels = 7, but the features hold"):
        small_em().init_pca(Once(), n_pixels=7, verbose=False)
    with pytest.raises(ValueError, match="features hold no images"):
        small_em().init_pca([], verbose=False)


def test_init_from_sets_both_and_skips_warmup(data, rng):
    F, masks, _ = data
    P = rng.standard_normal((4, 16))
    em = small_em(warmup_epochs=3, epochs=1).init_from(P)
    np.testing.assert_array_equal(em.student_.v, P.astype(np.float32))
    np.testing.assert_array_equal(em.teacher_.g, np.ones(4))
    em.fit((F, masks), verbose=False)
    assert em.warmup_loss_history_ == [] and em.step_ == 3


def test_warmup_alone_is_the_kmeans_baseline(data):
    F, _, _ = data
    em = small_em()
    em.warmup(F, epochs=3, verbose=False)
    assert len(em.warmup_loss_history_) == 9
    assert em.warmup_loss_history_[-1] < em.warmup_loss_history_[0]
    np.testing.assert_array_equal(em.teacher_.v, em.student_.v)
    assert em.step_ == 0 and em.ema_updates_ == 0


def test_quiet_by_default_and_progress_on_request(data, capsys):
    F, masks, _ = data
    small_em(epochs=1, warmup_epochs=0).init_pca(F).fit((F, masks))
    assert capsys.readouterr().err == ""
    small_em(epochs=1, warmup_epochs=0).init_pca(F).fit((F, masks), progress=True)
    assert "EM 1/1" in capsys.readouterr().err
    small_em(epochs=1, warmup_epochs=0).init_pca(F).fit((F, masks), verbose=True)  # old name
    assert "EM 1/1" in capsys.readouterr().err
    # no bar of length 0: a store with nothing to do shows none
    small_em(epochs=0, warmup_epochs=0).init_pca(F, progress=True)
    err = capsys.readouterr().err
    assert "PCA init" in err and "0it" not in err and f"/{len(F)}" in err


# --------------------------------------------------------- determinism


def test_same_seed_gives_bitwise_identical_prototypes(data):
    F, masks, _ = data
    a = small_em(seed=3).fit((F, masks), verbose=False)
    b = small_em(seed=3).fit((F, masks), verbose=False)
    c = small_em(seed=4).fit((F, masks), verbose=False)
    for x, y in ((a.student_, b.student_), (a.teacher_, b.teacher_)):
        assert np.array_equal(x.v, y.v) and np.array_equal(x.g, y.g)
    assert a.loss_history_ == b.loss_history_
    assert not np.array_equal(a.student_.v, c.student_.v)


def test_thread_counts_agree(data, threads):
    F, masks, _ = data
    runs = []
    for n in (1, 2):
        threads(n)
        runs.append(small_em(seed=1).fit((F, masks), verbose=False))
    a, b = runs
    # the contract is agreement within float32 rounding; the kernels give
    # the same bits for any thread count, so the runs agree exactly.
    for x, y in ((a.student_, b.student_), (a.teacher_, b.teacher_)):
        assert np.array_equal(x.v, y.v) and np.array_equal(x.g, y.g)
    assert a.loss_history_ == b.loss_history_


# ---------------------------------------------------------- checkpoints


def test_save_load_round_trip(data, tmp_path):
    F, masks, _ = data
    em = small_em().fit((F, masks), verbose=False)
    path = tmp_path / "em.npz"
    em.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["em.npz"]  # no temporary left
    back = primaps.PriMaPsEM.load(path)
    assert repr(back) == repr(em)
    for x, y in ((em.student_, back.student_), (em.teacher_, back.teacher_)):
        assert np.array_equal(x.v, y.v) and np.array_equal(x.g, y.g)
    assert back.loss_history_ == em.loss_history_
    assert back.warmup_loss_history_ == em.warmup_loss_history_
    assert (back.step_, back.ema_updates_, back.epoch_, back.warmup_epoch_) == \
        (em.step_, em.ema_updates_, em.epoch_, em.warmup_epoch_)
    for k in em._adam.m:
        assert np.array_equal(em._adam.m[k], back._adam.m[k])
        assert np.array_equal(em._adam.s[k], back._adam.s[k])
    assert back._rng.random() == em._rng.random()
    with np.load(path) as z:
        meta = json.loads(z["meta.json"].tobytes())
    assert meta["format"] == "primaps.PriMaPsEM" and meta["version"] == 2


def test_pickle_and_deepcopy(data):
    import copy
    import pickle

    F, masks, _ = data
    em = small_em(epochs=1).fit((F, masks), verbose=False)
    for other in (pickle.loads(pickle.dumps(em)), copy.deepcopy(em)):
        assert np.array_equal(other.teacher_.v, em.teacher_.v)
        other.partial_fit((F[:4], masks[:4]))
        em2 = copy.deepcopy(em)
        em2.partial_fit((F[:4], masks[:4]))
        assert np.array_equal(other.student_.v, em2.student_.v)


def test_save_replaces_atomically(data, tmp_path, monkeypatch):
    F, masks, _ = data
    em = small_em(epochs=1).fit((F, masks), verbose=False)
    path = tmp_path / "em.npz"
    em.save(path)
    good = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    em.partial_fit((F[:4], masks[:4]))
    with pytest.raises(OSError, match="disk full"):
        em.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["em.npz"]


def test_resume_ends_where_the_uninterrupted_run_does(data, tmp_path):
    F, masks, _ = data
    full = small_em(epochs=4, seed=7).fit((F, masks), verbose=False)
    part = small_em(epochs=2, seed=7).fit((F, masks), verbose=False)
    part.save(tmp_path / "half.npz")
    resumed = primaps.PriMaPsEM.load(tmp_path / "half.npz")
    resumed.epochs = 4
    resumed.fit((F, masks), verbose=False)
    for x, y in ((full.student_, resumed.student_), (full.teacher_, resumed.teacher_)):
        assert np.array_equal(x.v, y.v) and np.array_equal(x.g, y.g)
    assert full.loss_history_ == resumed.loss_history_


def test_resume_after_a_crash_from_the_epoch_checkpoint(data, tmp_path):
    F, masks, _ = data
    batches = [(F[i:i + 4], masks[i:i + 4]) for i in range(0, 12, 4)]

    class Crash(Exception):
        pass

    class Flaky:
        """Re-iterable batches that raise at the fail_at-th batch served."""

        def __init__(self, fail_at):
            self.served, self.fail_at = 0, fail_at

        def __iter__(self):
            for b in batches:
                self.served += 1
                if self.served == self.fail_at:
                    raise Crash
                yield b

        def __len__(self):
            return len(batches)

    probe = Flaky(fail_at=-1)
    ref = small_em(epochs=3, seed=2).fit(probe, verbose=False)
    ck = tmp_path / "ck.npz"
    with pytest.raises(Crash):  # two batches before the end: in the last epoch
        small_em(epochs=3, seed=2).fit(Flaky(probe.served - 1), verbose=False,
                                       checkpoint=ck)
    back = primaps.PriMaPsEM.load(ck)
    assert back.epoch_ == 2 and back.warmup_epoch_ == 1
    back.fit(batches, verbose=False)
    assert back.step_ == ref.step_ == 9
    assert np.array_equal(back.teacher_.v, ref.teacher_.v)
    assert np.array_equal(back.student_.g, ref.student_.g)
    assert back.loss_history_ == ref.loss_history_


def test_load_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ValueError, match="is not a readable primaps checkpoint"):
        primaps.PriMaPsEM.load(path)


def test_load_refuses_a_truncated_file(data, tmp_path):
    F, masks, _ = data
    path = tmp_path / "em.npz"
    small_em(epochs=1).fit((F, masks), verbose=False).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="is not a readable primaps checkpoint"):
        primaps.PriMaPsEM.load(path)


def test_load_refuses_a_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.ones(3))
    with pytest.raises(ValueError, match="is not a primaps checkpoint"):
        primaps.PriMaPsEM.load(path)


def test_load_refuses_another_format_and_newer_versions(data, tmp_path):
    from primaps._training import write_npz_atomic

    path = tmp_path / "x.npz"
    write_npz_atomic(path, {"a": np.ones(2)}, {"format": "something.else", "version": 1})
    with pytest.raises(ValueError, match="is not a primaps.PriMaPsEM checkpoint"):
        primaps.PriMaPsEM.load(path)
    write_npz_atomic(path, {"a": np.ones(2)}, {"format": "primaps.PriMaPsEM", "version": 9})
    with pytest.raises(ValueError, match="format version 9.*upgrade primaps"):
        primaps.PriMaPsEM.load(path)
    write_npz_atomic(path, {"a": np.ones(2)}, {"format": "primaps.PriMaPsEM", "version": 1})
    with pytest.raises(ValueError, match="incomplete primaps.PriMaPsEM checkpoint"):
        primaps.PriMaPsEM.load(path)


def test_load_of_a_missing_file():
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        primaps.PriMaPsEM.load("/nonexistent/em.npz")


# ------------------------------------------------------------ bad input


def test_bad_parameters():
    with pytest.raises(ValueError, match=r"n_classes must be in \[1, 255\], got 256"):
        primaps.PriMaPsEM(256)
    with pytest.raises(TypeError, match="n_classes must be an integer, got float"):
        primaps.PriMaPsEM(2.5)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        primaps.PriMaPsEM(3, lr=0)
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\]"):
        primaps.PriMaPsEM(3, ema_decay=1.5)


def test_predict_before_fitting():
    with pytest.raises(RuntimeError, match="call init_pca and warmup, init_from, fit or load"):
        primaps.PriMaPsEM(3).predict(np.zeros((2, 4, 4), np.float32), 8)


def test_partial_fit_before_init():
    with pytest.raises(RuntimeError, match="partial_fit needs prototypes"):
        primaps.PriMaPsEM(3).partial_fit((np.zeros((1, 2, 4, 4)), np.zeros((1, 8, 8))))


def test_fit_with_mismatched_masks(data):
    F, masks, _ = data
    with pytest.raises(ValueError, match=r"masks must have shape \(n, H, W\) with n = 12"):
        small_em().fit((F, masks[:5]), verbose=False)


def test_fit_with_mismatched_student_features(data):
    F, masks, _ = data
    with pytest.raises(ValueError, match="student_features must have the shape of features"):
        small_em().fit((F, masks, F[:, :8]), verbose=False)


def test_fit_with_nan_features(data):
    F, masks, _ = data
    F = F.copy()
    F[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        small_em().fit((F, masks), verbose=False)


def test_partial_fit_with_nan_features(data):
    F, masks, _ = data
    em = small_em().init_pca(F, verbose=False)
    G = F[:2].copy()
    G[1, 3, 2, 2] = np.inf
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        em.partial_fit((G, masks[:2]))


def test_fit_with_float_masks(data):
    F, masks, _ = data
    with pytest.raises(TypeError, match="masks must be an integer array"):
        small_em().fit((F, masks.astype(np.float32)), verbose=False)


def test_fit_without_masks(data):
    F, _, _ = data
    with pytest.raises(ValueError, match=r"must be \(features, masks\[, student_features\]\)"):
        small_em().fit(F, verbose=False)


def test_init_from_with_wrong_shape():
    with pytest.raises(ValueError, match=r"prototypes must have shape \(4, C\)"):
        small_em().init_from(np.ones((3, 8)))


def test_init_from_with_nan():
    P = np.ones((4, 8))
    P[1, 1] = np.nan
    with pytest.raises(ValueError, match="prototypes contains NaN or inf"):
        small_em().init_from(P)


def test_predict_with_wrong_channels(data):
    F, _, _ = data
    em = small_em().init_pca(F, verbose=False)
    with pytest.raises(ValueError, match="features have 8 channels but the prototypes have 16"):
        em.predict(F[:, :8], 12)


def test_predict_with_unknown_which(data):
    F, _, _ = data
    em = small_em().init_pca(F, verbose=False)
    with pytest.raises(ValueError, match="which must be 'teacher' or 'student', got 'ema'"):
        em.predict(F, 12, which="ema")


def test_init_pca_needs_enough_channels(rng):
    with pytest.raises(ValueError, match="n_classes = 4 principal directions need at least 4"):
        small_em().init_pca(rng.standard_normal((2, 3, 4, 4)), verbose=False)


def test_float16_features_train_as_their_float32_copy(rng):
    # an in-memory float16 array is gathered batch by batch and widened in
    # C; a float32 one is read in place by index: the same model either way
    F = rng.standard_normal((20, 16, 6, 6)).astype(np.float16)
    M = rng.integers(0, 4, (20, 24, 24)).astype(np.int32)
    a = small_em(batch_size=6, seed=0).fit((F, M))
    b = small_em(batch_size=6, seed=0).fit((F.astype(np.float32), M))
    assert np.array_equal(a.prototypes(), b.prototypes())
    assert np.array_equal(a.prototypes("student"), b.prototypes("student"))
    assert a.loss_history_ == b.loss_history_
    assert a.warmup_loss_history_ == b.warmup_loss_history_
