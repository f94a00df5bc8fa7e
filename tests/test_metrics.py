"""Evaluation: the C confusion matrix against a bincount twin, Hungarian
matching against brute force, scores against their original definition,
hand-made examples, merging, thread counts, reports and bad input."""

import itertools
import json
import pickle
import threading

import numpy as np
import pytest
from conftest import torch_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st
from twins import metrics as twin

import primaps
from primaps import _core
from primaps.metrics import EvaluationReport, match_clusters


def blocky(rng, shape, n_labels, block=4):
    """Spatially coherent label maps (blocks), as segmentations are."""
    B, H, W = shape
    low = rng.integers(0, n_labels, (B, -(-H // block), -(-W // block)))
    return np.repeat(np.repeat(low, block, 1), block, 2)[:, :H, :W]


# ------------------------------------------------------------ hand-made


def test_swapped_labels_match_perfectly():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = 1 - gt
    r = primaps.evaluate(pred, gt, 2)
    assert r.accuracy == 100.0 and r.miou == 100.0
    assert r.assignment.tolist() == [1, 0]
    np.testing.assert_array_equal(r.map_clusters(pred), gt)


def test_known_scores_three_classes():
    # S[pred, gt]: (2,0)=2, (1,0)=1, (1,1)=2, (0,2)=1 -> clusters 2,1,0 match
    # classes 0,1,2; 5 of 6 pixels right.  IoU: class 0 2/3, class 1 2/3,
    # class 2 1/1.
    gt = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([2, 2, 1, 1, 1, 0])
    r = primaps.evaluate(pred, gt, 3)
    assert r.assignment.tolist() == [2, 1, 0]
    assert r.accuracy == pytest.approx(500 / 6)
    np.testing.assert_allclose(r.iou, [200 / 3, 200 / 3, 100])
    assert r.miou == pytest.approx((200 / 3 + 200 / 3 + 100) / 3)
    assert r.undefined == ()
    np.testing.assert_array_equal(r.support, [3, 2, 1])
    np.testing.assert_allclose(r.class_accuracy, [200 / 3, 100, 100])


def test_undefined_iou_is_left_out_and_named():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 1]])
    r = primaps.evaluate(pred, gt, 3, class_names=["road", "sky", "tunnel"])
    assert r.undefined == (2,)
    assert np.isnan(r.iou[2])
    assert r.miou == 100.0 and r.accuracy == 100.0
    text = str(r)
    assert "mean over 2 of 3 classes" in text
    assert "IoU undefined (left out of mIoU): tunnel" in text
    assert r.to_dict()["undefined"] == ["tunnel"]
    assert r.to_dict()["iou"][2] is None


def test_predicted_but_absent_class_scores_zero():
    # class 2 never occurs in gt, but cluster 2 (matched to it) is predicted
    gt = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 2])
    r = primaps.evaluate(pred, gt, 3)
    assert r.iou[2] == 0.0 and r.undefined == ()
    assert r.miou == pytest.approx((100 + 200 / 3 + 0) / 3)
    assert r.accuracy == pytest.approx(80.0)


def test_ground_truth_outside_classes_is_skipped():
    gt = np.array([[0, 255, 1], [7, 1, 0]], dtype=np.int64)
    gt_neg = np.where(gt == 7, -1, gt)
    pred = np.array([[1, 0, 0], [0, 0, 1]])
    for g in (gt, gt_neg):
        ev = primaps.Evaluator(2).update(pred, g)
        assert ev.n_pixels == 4 and ev.n_skipped == 2
        r = ev.compute()
        assert r.accuracy == 100.0 and r.n_skipped == 2 and r.n_pixels == 4


def test_ignore_index_other_than_255():
    gt = np.array([[0, -1, 1, 1]], dtype=np.int32)
    pred = np.array([[0, 1, 1, 1]], dtype=np.int32)
    r = primaps.evaluate(pred, gt, 2, ignore_index=-1)
    assert r.ignore_index == -1 and r.n_skipped == 1 and r.accuracy == 100.0
    keep = r.map_clusters(np.array([0, -1, 1]))
    assert keep.tolist() == [0, -1, 1]


def test_extra_clusters_merge_into_their_majority_class():
    gt = np.array([0, 0, 0, 1, 1, 1, 0])
    pred = np.array([0, 0, 2, 1, 1, 1, 3])  # clusters 2, 3 are leftovers of class 0
    r = primaps.evaluate(pred, gt, 2, extra_clusters=2)
    assert r.assignment.tolist() == [0, 1, 0, 0]
    assert r.accuracy == 100.0 and r.miou == 100.0
    assert r.clusters_of(0) == (0, 2, 3)
    assert r.map_clusters(pred).tolist() == gt.tolist()
    assert r.confusion.shape == (4, 2) and r.matched_confusion.shape == (2, 2)


def test_extra_cluster_that_mostly_overlaps_another_class():
    # cluster 2 is a leftover that overlaps class 1 most
    gt = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 0, 1, 2, 2, 2])
    r = primaps.evaluate(pred, gt, 2, extra_clusters=1)
    assert r.assignment.tolist() == [0, 1, 1]
    assert r.accuracy == pytest.approx(500 / 6)


def test_accepts_common_dtypes_and_shapes(rng):
    gt = blocky(rng, (3, 17, 23), 5)
    gt[:, 0] = 255
    pred = blocky(rng, (3, 17, 23), 5, block=3)
    ref = twin.confusion_bincount(pred, gt, 5)
    for pd in (np.uint8, np.int32, np.int64, np.int16, np.uint16, np.int8, np.uint32, np.uint64):
        for gd in (np.uint8, np.int32, np.int64, np.uint16):
            conf, skipped = _core.confusion_matrix(pred.astype(pd), gt.astype(gd), 5)
            assert conf.dtype == np.int64
            np.testing.assert_array_equal(conf, ref, err_msg=f"{pd} {gd}")
            assert skipped == 3 * 23
    ev = primaps.Evaluator(5)
    ev.update(pred[0], gt[0])  # (H, W)
    ev.update(pred[1:], gt[1:])  # (B, H, W)
    np.testing.assert_array_equal(ev.confusion, ref)


def test_awkward_layouts_are_converted(rng):
    gt = blocky(rng, (2, 12, 10), 4)
    pred = blocky(rng, (2, 12, 10), 6, block=2)
    ref = twin.confusion_bincount(pred, gt, 4, 2)
    variants = [
        (pred[:, ::-1][:, ::-1], gt),
        (np.asfortranarray(pred), np.asfortranarray(gt)),
        (pred.astype(">i4"), gt.astype(">i8")),
        (pred.tolist(), gt.tolist()),
        (np.repeat(pred, 2, axis=-1)[..., ::2], gt),
        (pred.reshape(-1), gt.reshape(-1)),
        (pred[:, None], gt[:, None]),
    ]
    for p, g in variants:
        conf, _ = _core.confusion_matrix(p, g, 4, 2)
        np.testing.assert_array_equal(conf, ref)


def test_empty_batch_counts_nothing():
    ev = primaps.Evaluator(3).update(np.zeros((0, 5, 5), np.int64), np.zeros((0, 5, 5), np.uint8))
    assert ev.n_pixels == 0
    with pytest.raises(ValueError, match="no pixel was counted"):
        ev.compute()


def test_torch_tensors_are_accepted(rng):
    torch = torch_or_skip()
    gt = blocky(rng, (2, 8, 8), 3)
    pred = blocky(rng, (2, 8, 8), 3, block=2)
    r1 = primaps.evaluate(torch.from_numpy(pred), torch.from_numpy(gt.astype(np.uint8)), 3)
    r2 = primaps.evaluate(pred, gt, 3)
    np.testing.assert_array_equal(r1.confusion, r2.confusion)


# ------------------------------------------------------------ twins


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    K=st.integers(1, 6),
    E=st.integers(0, 2),
    ties=st.booleans(),
)
def test_hungarian_equals_brute_force(seed, K, E, ties):
    rng = np.random.default_rng(seed)
    hi = 3 if ties else 10**6  # small counts make ties frequent
    S = rng.integers(0, hi, (K + E, K))
    best, _ = twin.brute_force_matching(S)
    a = match_clusters(S)
    assert a.shape == (K + E,) and ((a >= 0) & (a < K)).all()
    # Some choice of one cluster per class among those `a` maps to it
    # reaches the brute-force optimum, and every other cluster went to the
    # class it overlaps most.
    groups = [np.flatnonzero(a == k).tolist() for k in range(K)]
    assert all(groups)
    ok = False
    for pick in itertools.product(*groups):
        if int(S[list(pick), range(K)].sum()) != best:
            continue
        rest = set(range(K + E)) - set(pick)
        if all(S[c, a[c]] == S[c].max() for c in rest):
            ok = True
            break
    assert ok
    if S.sum() > 0:
        r = EvaluationReport.from_confusion(S, K)
        M = np.zeros((K, K), np.int64)
        for c in range(K + E):
            M[a[c]] += S[c]
        assert r.accuracy == pytest.approx(100 * np.trace(M) / S.sum())
        if E == 0:  # a permutation: the accuracy is the brute-force optimum
            assert r.accuracy == pytest.approx(100 * best / S.sum())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), K=st.integers(1, 6), E=st.integers(0, 2),
       zero_cols=st.integers(0, 2))
def test_scores_equal_original_definition(seed, K, E, zero_cols):
    rng = np.random.default_rng(seed)
    S = rng.integers(0, 50, (K + E, K))
    S[:, : min(zero_cols, K - 1)] = 0  # classes absent from the ground truth
    if S.sum() == 0:
        S[0, -1] = 3
    r = EvaluationReport.from_confusion(S, K)
    ref = twin.scores_by_definition(S, r.assignment)
    assert r.accuracy == pytest.approx(ref["accuracy"], rel=1e-12)
    np.testing.assert_array_equal(np.isnan(r.iou), np.isnan(ref["iou"]))
    np.testing.assert_allclose(r.iou, ref["iou"], rtol=1e-12)
    assert r.miou == pytest.approx(ref["miou"], rel=1e-12)


def test_brute_force_twin_on_random_label_maps(rng):
    for K in range(1, 7):
        gt = blocky(rng, (2, 20, 20), K)
        pred = rng.permutation(K)[gt]
        noise = rng.random(pred.shape) < 0.3
        pred[noise] = rng.integers(0, K, int(noise.sum()))
        r = primaps.evaluate(pred, gt, K)
        best, _ = twin.brute_force_matching(twin.confusion_bincount(pred, gt, K))
        assert r.accuracy == pytest.approx(100 * best / gt.size)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), K=st.integers(1, 30), E=st.integers(0, 5),
       B=st.integers(0, 3), H=st.integers(1, 40), W=st.integers(1, 40))
def test_confusion_matches_bincount(seed, K, E, B, H, W):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, K + E, (B, H, W))
    gt = rng.integers(-2, K + 3, (B, H, W))
    gt[rng.random(gt.shape) < 0.1] = 255
    conf, skipped = _core.confusion_matrix(pred, gt, K, E)
    np.testing.assert_array_equal(conf, twin.confusion_bincount(pred, gt, K, E))
    assert skipped == int(((gt < 0) | (gt >= K)).sum())


def test_large_class_counts_use_the_plain_histogram(rng):
    # (K + E) * K > 16384 bins: one histogram per thread instead of four
    K, E = 150, 10
    pred = rng.integers(0, K + E, (2, 64, 64))
    gt = rng.integers(0, K, (2, 64, 64))
    conf, _ = _core.confusion_matrix(pred, gt, K, E)
    np.testing.assert_array_equal(conf, twin.confusion_bincount(pred, gt, K, E))


# ------------------------------------------------- merging and threads


def test_merging_partial_evaluators_equals_evaluating_once(rng):
    gt = blocky(rng, (12, 30, 30), 7)
    gt[:, :, :3] = 255
    pred = blocky(rng, (12, 30, 30), 9, block=5)
    once = primaps.Evaluator(7, extra_clusters=2).update(pred, gt).compute()
    parts = [primaps.Evaluator(7, extra_clusters=2).update(pred[i:i + 4], gt[i:i + 4])
             for i in range(0, 12, 4)]
    # as if the parts came back from other processes
    parts = [pickle.loads(pickle.dumps(p)) for p in parts]
    total = primaps.Evaluator(7, extra_clusters=2)
    for p in parts:
        total.merge(p)
    merged = total.compute()
    np.testing.assert_array_equal(merged.confusion, once.confusion)
    assert merged.n_skipped == once.n_skipped
    assert merged.accuracy == once.accuracy and merged.miou == once.miou
    np.testing.assert_array_equal(merged.assignment, once.assignment)


def test_merge_with_itself_doubles_the_counts(rng):
    ev = primaps.Evaluator(3).update(rng.integers(0, 3, (5, 5)), rng.integers(0, 3, (5, 5)))
    before = ev.confusion
    ev.merge(ev)
    np.testing.assert_array_equal(ev.confusion, 2 * before)


def test_counts_identical_for_1_2_4_threads(rng, threads):
    # several chunks of 32768 pixels, an uneven tail
    gt = blocky(rng, (5, 161, 173), 27, block=8).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.05] = 255
    pred = blocky(rng, (5, 161, 173), 30, block=6)
    outs = []
    for n in (1, 2, 4):
        threads(n)
        outs.append(_core.confusion_matrix(pred, gt, 27, 3))
    for conf, skipped in outs[1:]:
        np.testing.assert_array_equal(conf, outs[0][0])
        assert skipped == outs[0][1]
    np.testing.assert_array_equal(outs[0][0], twin.confusion_bincount(pred, gt, 27, 3))


def test_updates_from_python_threads(rng):
    gt = blocky(rng, (16, 40, 40), 5)
    pred = blocky(rng, (16, 40, 40), 5, block=3)
    ev = primaps.Evaluator(5)
    workers = [threading.Thread(target=lambda i=i: [ev.update(pred[j], gt[j]) for j in range(i, 16, 4)])
               for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    np.testing.assert_array_equal(ev.confusion, twin.confusion_bincount(pred, gt, 5))


def test_evaluate_accepts_lists_of_images_of_different_sizes(rng):
    preds = [rng.integers(0, 4, (10, 12)), rng.integers(0, 4, (7, 5))]
    gts = [rng.integers(0, 4, (10, 12)).astype(np.uint8), rng.integers(0, 4, (7, 5)).astype(np.uint8)]
    r = primaps.evaluate(preds, gts, 4)
    ref = twin.confusion_bincount(preds[0], gts[0], 4) + twin.confusion_bincount(preds[1], gts[1], 4)
    np.testing.assert_array_equal(r.confusion, ref)


def test_reset_forgets(rng):
    ev = primaps.Evaluator(2).update(np.array([0, 1]), np.array([0, 1]))
    ev.reset()
    assert ev.n_pixels == 0 and ev.n_skipped == 0
    with pytest.raises(ValueError, match="Evaluator is empty"):
        ev.compute()


# ------------------------------------------------------------ report


def test_report_dict_json_and_text(tmp_path, rng):
    names = [f"c{i}" for i in range(4)]
    gt = blocky(rng, (2, 16, 16), 4)
    pred = blocky(rng, (2, 16, 16), 5, block=2)
    r = primaps.evaluate(pred, gt, 4, extra_clusters=1, class_names=names)
    d = json.loads(r.to_json())
    assert d == json.loads(json.dumps(r.to_dict()))
    assert d["class_names"] == names and d["extra_clusters"] == 1
    assert d["accuracy"] == pytest.approx(r.accuracy)
    back = EvaluationReport.from_dict(d)
    assert back.accuracy == r.accuracy and back.miou == r.miou
    np.testing.assert_array_equal(back.assignment, r.assignment)
    out = tmp_path / "report.json"
    text = r.to_json(out)
    assert out.read_text() == text + "\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "report.json"]  # no temp file left
    s = str(r)
    assert f"Acc   {r.accuracy:5.1f} %" in s and f"mIoU  {r.miou:5.1f} %" in s
    for k, name in enumerate(names):
        line = next(ln for ln in s.splitlines() if ln.split()[:2] == [str(k), name])
        assert f"{r.iou[k]:.1f}" in line
    assert repr(r).startswith("EvaluationReport(accuracy=")


def test_report_arrays_are_read_only(rng):
    r = primaps.evaluate(np.array([0, 1]), np.array([1, 0]), 2)
    with pytest.raises(ValueError):
        r.iou[0] = 5
    with pytest.raises(ValueError):
        r.assignment[0] = 1


def test_map_clusters_keeps_dtype_and_ignore(rng):
    r = primaps.evaluate(np.array([2, 0, 1]), np.array([0, 1, 2]), 3)
    x = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    out = r.map_clusters(x)
    assert out.dtype == np.uint8 and out.tolist() == [[1, 2, 0, 255]]
    assert x.tolist() == [[0, 1, 2, 255]]  # input untouched


def test_compute_with_class_names_override():
    ev = primaps.Evaluator(2, class_names=["a", "b"]).update(np.array([0, 1]), np.array([0, 1]))
    assert ev.compute().class_names == ("a", "b")
    assert ev.compute(class_names=["x", "y"]).class_names == ("x", "y")


# ------------------------------------------------------------ bad input


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"pred and gt must have the same shape, got pred \(2, 3\) and gt \(3, 2\)"):
        primaps.Evaluator(3).update(np.zeros((2, 3), int), np.zeros((3, 2), int))


def test_rejects_negative_prediction():
    pred = np.zeros((2, 3, 4), np.int32)
    pred[1, 2, 0] = -3
    with pytest.raises(ValueError, match=r"pred must not be negative, got -3 at index \(1, 2, 0\)"):
        primaps.Evaluator(3).update(pred, np.zeros((2, 3, 4), np.uint8))


def test_rejects_prediction_beyond_clusters():
    pred = np.zeros((4, 5), np.int64)
    pred[3, 1] = 5
    pred[3, 4] = 9
    with pytest.raises(ValueError, match=r"pred must be below n_classes \+ extra_clusters = 5, got 5 at index \(3, 1\)"):
        primaps.Evaluator(3, extra_clusters=2).update(pred, np.zeros((4, 5), np.int64))


def test_bad_prediction_leaves_the_counts_untouched(rng):
    ev = primaps.Evaluator(3).update(np.array([0, 1, 2]), np.array([0, 1, 2]))
    before = ev.confusion
    big = rng.integers(0, 3, (3, 200, 200))
    big[2, 199, 199] = 3  # the last pixel of the last chunk
    with pytest.raises(ValueError, match=r"got 3 at index \(2, 199, 199\)"):
        ev.update(big, big)
    np.testing.assert_array_equal(ev.confusion, before)


def test_first_bad_prediction_is_reported_for_any_thread_count(rng, threads):
    pred = rng.integers(0, 3, (4, 200, 200))
    pred[3, 10, 10] = 7
    pred[1, 150, 3] = -1
    for n in (1, 2, 4):
        threads(n)
        with pytest.raises(ValueError, match=r"got -1 at index \(1, 150, 3\)"):
            _core.confusion_matrix(pred, np.zeros_like(pred), 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_rejects_float_predictions(dtype):
    with pytest.raises(TypeError, match=f"pred must be an integer array of labels, got dtype {np.dtype(dtype)}"):
        primaps.Evaluator(3).update(np.zeros((2, 2), dtype), np.zeros((2, 2), np.int64))


def test_rejects_float_ground_truth():
    with pytest.raises(TypeError, match="gt must be an integer array of labels, got dtype float64"):
        primaps.Evaluator(3).update(np.zeros((2, 2), np.int64), np.zeros((2, 2)))


def test_rejects_float_lists():
    with pytest.raises(TypeError, match="pred must be an integer array of labels"):
        primaps.Evaluator(3).update([[0.0, 1.5]], [[0, 1]])


@pytest.mark.parametrize("bad", [None, "abc", np.zeros((2, 2), bool), np.zeros((2, 2), complex), object()])
def test_rejects_non_numeric(bad):
    with pytest.raises(TypeError, match="gt must be a"):
        primaps.Evaluator(3).update(np.zeros((2, 2), np.int64), bad)


def test_rejects_scalar_input():
    with pytest.raises(ValueError, match=r"pred must have shape \(H, W\) or \(B, H, W\), got a scalar"):
        primaps.Evaluator(3).update(np.int64(1), np.int64(1))


@pytest.mark.parametrize("k,exc,msg", [
    (0, ValueError, "n_classes must be at least 1, got 0"),
    (-2, ValueError, "n_classes must be at least 1"),
    (2.0, TypeError, "n_classes must be an integer, got float"),
    (True, TypeError, "n_classes must be an integer, got bool"),
    ("27", TypeError, "n_classes must be an integer, got str"),
])
def test_rejects_bad_n_classes(k, exc, msg):
    with pytest.raises(exc, match=msg):
        primaps.Evaluator(k)


def test_rejects_negative_extra_clusters():
    with pytest.raises(ValueError, match="extra_clusters must be at least 0, got -1"):
        primaps.Evaluator(3, extra_clusters=-1)


def test_rejects_ignore_index_inside_the_classes():
    with pytest.raises(ValueError, match=r"ignore_index must lie outside the class ids \[0, 27\), got 0"):
        primaps.Evaluator(27, ignore_index=0)
    with pytest.raises(TypeError, match="ignore_index must be an integer, got float"):
        primaps.Evaluator(27, ignore_index=255.0)


def test_rejects_too_many_bins():
    with pytest.raises(ValueError, match=r"n_classes \* \(n_classes \+ extra_clusters\) must be below 2\^31"):
        primaps.Evaluator(50000, extra_clusters=1, ignore_index=-1)
    with pytest.raises(ValueError, match=r"must be below 2\^31"):
        _core.confusion_matrix(np.zeros(2, np.int64), np.zeros(2, np.int64), 50000)


def test_core_rejects_bad_counts():
    with pytest.raises(ValueError, match="n_classes must be a positive integer, got 0"):
        _core.confusion_matrix(np.zeros(2, np.int64), np.zeros(2, np.int64), 0)
    with pytest.raises(ValueError, match="extra_clusters must be a non-negative integer, got -1"):
        _core.confusion_matrix(np.zeros(2, np.int64), np.zeros(2, np.int64), 2, -1)
    with pytest.raises(TypeError, match="extra_clusters must be a non-negative integer, got float"):
        _core.confusion_matrix(np.zeros(2, np.int64), np.zeros(2, np.int64), 2, 1.0)


def test_rejects_bad_class_names():
    with pytest.raises(ValueError, match="class_names must hold n_classes = 3 names, got 2"):
        primaps.Evaluator(3, class_names=["a", "b"])
    with pytest.raises(TypeError, match="class_names must be a sequence of 3 strings, got str"):
        primaps.Evaluator(3, class_names="abc")
    with pytest.raises(TypeError, match=r"class_names\[1\] must be a string, got int"):
        primaps.Evaluator(3, class_names=["a", 1, "c"])


def test_compute_on_empty_evaluator():
    with pytest.raises(ValueError, match=r"the Evaluator is empty: call update\(pred, gt\) before compute\(\)"):
        primaps.Evaluator(27).compute()


def test_compute_when_every_pixel_is_ignored():
    ev = primaps.Evaluator(3).update(np.zeros((4, 4), np.int64), np.full((4, 4), 255, np.uint8))
    with pytest.raises(ValueError, match=r"no pixel was counted: all 16 ground-truth pixels lie outside \[0, 3\)"):
        ev.compute()


def test_merge_rejects_other_kinds():
    with pytest.raises(ValueError, match="other must count the same classes and clusters"):
        primaps.Evaluator(3).merge(primaps.Evaluator(3, extra_clusters=1))
    with pytest.raises(TypeError, match="other must be an Evaluator, got ndarray"):
        primaps.Evaluator(3).merge(np.zeros((3, 3), np.int64))


def test_evaluate_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="pred and gt must hold as many arrays, got 2 and 1"):
        primaps.evaluate([np.zeros(3, int), np.zeros(3, int)], [np.zeros(3, int)], 2)
    with pytest.raises(TypeError, match="pred and gt must both be arrays or both be lists of arrays"):
        primaps.evaluate([np.zeros(3, int)], np.zeros(3, int), 2)


def test_map_clusters_rejects_bad_input():
    r = primaps.evaluate(np.array([0, 1]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"pred must hold cluster ids in \[0, 2\) or ignore_index = 255, got 7 at index \(0, 1\)"):
        r.map_clusters(np.array([[0, 7]]))
    with pytest.raises(TypeError, match="pred must be an integer array of cluster ids, got dtype float64"):
        r.map_clusters(np.zeros(2))


def test_from_confusion_rejects_bad_input():
    with pytest.raises(ValueError, match="confusion must have shape"):
        EvaluationReport.from_confusion(np.ones((2, 3), np.int64), 3)
    with pytest.raises(ValueError, match="confusion must hold counts >= 0"):
        EvaluationReport.from_confusion(-np.ones((2, 2), np.int64), 2)
    with pytest.raises(ValueError, match="confusion holds no counted pixel"):
        EvaluationReport.from_confusion(np.zeros((2, 2), np.int64), 2)
    with pytest.raises(ValueError, match="assignment must map each of the 2 clusters"):
        EvaluationReport.from_confusion(np.ones((2, 2), np.int64), 2, assignment=[0, 2])
    with pytest.raises(ValueError, match="confusion must have shape"):
        match_clusters(np.ones((2, 3)))


# ------------------------------------------------------------ real labels


def cityscapes_sample(root):
    from PIL import Image

    path = root / "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    ids = np.asarray(Image.open(path)).astype(np.int64)
    return np.where((ids >= 7) & (ids <= 33), ids - 7, 255).astype(np.uint8)


def test_real_cityscapes_labels(shared_data, rng):
    gt = cityscapes_sample(shared_data)
    present = np.unique(gt[gt != 255])
    perm = rng.permutation(27)
    pred = perm[np.where(gt == 255, present[0], gt)]
    r = primaps.evaluate(pred, gt, 27)
    # a relabelling is matched back exactly
    assert r.accuracy == 100.0 and r.miou == 100.0
    assert r.undefined == tuple(sorted(set(range(27)) - set(present.tolist())))
    np.testing.assert_array_equal(r.map_clusters(pred)[gt != 255], gt[gt != 255])
    assert r.n_skipped == int((gt == 255).sum()) and r.n_pixels + r.n_skipped == gt.size
    # one class predicted as another: its IoU drops to 0, the other's to tp / (tp + fp)
    a, b = present[np.argsort([(gt == c).sum() for c in present])[-2:]]
    pred2 = perm[np.where(gt == 255, present[0], np.where(gt == a, b, gt))]
    r2 = primaps.evaluate(pred2, gt, 27)
    ref = twin.scores_by_definition(twin.confusion_bincount(pred2, gt, 27), r2.assignment)
    assert r2.miou == pytest.approx(ref["miou"]) and r2.accuracy == pytest.approx(ref["accuracy"])
    assert r2.accuracy == pytest.approx(100 * (1 - (gt == a).sum() / (gt != 255).sum()))
