"""Determinism (the determinism rule):

- mask maps (and their soft logits), pseudo labels, predictions, CRF
  marginals and metrics are bitwise identical for 1, 2 and 4 threads;
- EM prototypes and predictions are bitwise identical run to run with one
  seed, and agree within float32 rounding (1e-6 relative) across thread
  counts;
- concurrent calls from several Python threads on different data give what
  serial calls give.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import primaps
from primaps import _core

THREADS = (1, 2, 4)


def _data(seed=0, n=6, C=16, h=10, w=10, H=40, W=40, K=5):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, C, h, w)).astype(np.float32)
    masks = rng.integers(0, 7, (n, H, W)).astype(np.int32)
    labels = rng.integers(0, K, (n, H, W)).astype(np.uint8)
    theta = rng.standard_normal((K, C)).astype(np.float32)
    return feats, masks, labels, theta


def _per_thread_count(threads, fn):
    out = {}
    for t in THREADS:
        threads(t)
        out[t] = fn()
    return out


def _bitwise(results: dict) -> None:
    first = results[THREADS[0]]
    for t, r in results.items():
        for a, b in zip(np.atleast_1d(first) if not isinstance(first, tuple) else first,
                        np.atleast_1d(r) if not isinstance(r, tuple) else r):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes(), f"{t} threads differ from {THREADS[0]}"


# ------------------------------------------------ bitwise across threads

KERNELS = {
    "masks": lambda ws, f, m, y, th: _core.masks(f, out_size=(40, 40))[0],
    "masks/soft": lambda ws, f, m, y, th: tuple(_core.masks(f, return_soft=True)[1]),
    "teacher_pseudo": lambda ws, f, m, y, th: _core.teacher_pseudo(ws, f, m, th),
    "em_step": lambda ws, f, m, y, th: _core.em_step(ws, f, m, th, np.ones(len(th), np.float32),
                                                    th, np.ones(len(th), np.float32), 2.0,
                                                    return_pseudo=True)[4],
    "label_argmax": lambda ws, f, m, y, th: _core.label_argmax(
        ws, np.einsum("kc,bchw->bkhw", th, f), (37, 43)),
    "em_predict": lambda ws, f, m, y, th: _core.em_predict(ws, f, th, (40, 40)),
    "confusion_matrix": lambda ws, f, m, y, th: _core.confusion_matrix(m % 5, y, 5)[0],
    "l2_normalize": lambda ws, f, m, y, th: _core.l2_normalize(f),
    "upsample_bilinear": lambda ws, f, m, y, th: _core.upsample_bilinear(f, (33, 47)),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_labels_and_metrics_are_bitwise_identical_for_1_2_4_threads(threads, name):
    f, m, y, th = _data()
    ws = _core.em_workspace()
    _bitwise(_per_thread_count(threads, lambda: KERNELS[name](ws, f, m, y, th)))


def test_pseudo_labels_of_the_estimator_and_the_report_are_thread_invariant(threads):
    f, m, y, th = _data(1)
    em = primaps.PriMaPsEM(5).init_from(th)

    def run():
        pseudo = em.pseudo_labels(f, m)
        report = primaps.evaluate(em.predict(f, (40, 40)), y, 5)
        return pseudo, report.confusion, np.array([report.accuracy, report.miou])

    _bitwise(_per_thread_count(threads, run))


@pytest.mark.parametrize("batched", [False, True])
def test_crf_marginals_are_bitwise_identical_for_1_2_4_threads(threads, batched):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (3, 24, 20, 3)).astype(np.uint8)
    logits = rng.standard_normal((3, 4, 24, 20)).astype(np.float32)
    if not batched:
        image, logits = image[0], logits[0]
    _bitwise(_per_thread_count(threads, lambda: primaps.dense_crf(image, logits, 3)))


# ------------------------------------------------------------ training


def _fit(seed=4):
    f, m, _, _ = _data(3, n=12)
    em = primaps.PriMaPsEM(4, epochs=3, warmup_epochs=1, batch_size=4, seed=seed)
    em.fit((f, m), verbose=False)
    return em, f


def test_em_is_bitwise_identical_run_to_run_with_one_seed(threads):
    threads(2)
    a, f = _fit()
    b, _ = _fit()
    for which in ("teacher", "student"):
        assert a.prototypes(which).tobytes() == b.prototypes(which).tobytes()
        assert a.predict(f, 40, which).tobytes() == b.predict(f, 40, which).tobytes()
    assert a.loss_history_ == b.loss_history_
    c, _ = _fit(seed=5)  # and the seed matters
    assert c.prototypes().tobytes() != a.prototypes().tobytes()


def test_em_agrees_within_float32_rounding_across_thread_counts(threads):
    fits = _per_thread_count(threads, lambda: _fit()[0])
    ref = fits[1]
    for t, em in fits.items():
        for which in ("teacher", "student"):
            a, b = ref.prototypes(which), em.prototypes(which)
            err = np.abs(a - b).max() / np.abs(a).max()
            assert err <= 1e-6, f"{t} threads: prototypes differ by {err:.2g} (relative)"
        np.testing.assert_allclose(em.loss_history_, ref.loss_history_, rtol=1e-6)


# ---------------------------------------------------- concurrent callers


CONCURRENT = {
    "masks": lambda ws, d: primaps.masks(d[0], out_size=40),
    "l2_normalize": lambda ws, d: primaps.l2_normalize(d[0]),
    "upsample_bilinear": lambda ws, d: primaps.upsample_bilinear(d[0], (25, 31)),
    "teacher_pseudo": lambda ws, d: _core.teacher_pseudo(ws, d[0], d[1], d[3]),
    "em_predict": lambda ws, d: _core.em_predict(ws, d[0], d[3], 40),
    "em_step": lambda ws, d: _core.em_step(ws, d[0], d[1], d[3], np.ones(5, np.float32), d[3],
                                          np.ones(5, np.float32), 2.0)[2],
    "confusion_matrix": lambda ws, d: _core.confusion_matrix(d[1] % 5, d[2], 5)[0],
}


@pytest.mark.parametrize("shared_workspace", [True, False])
@pytest.mark.parametrize("name", sorted(CONCURRENT))
def test_concurrent_calls_from_python_threads_equal_serial_calls(name, shared_workspace):
    data = [_data(seed) for seed in range(8)]
    fn = CONCURRENT[name]
    shared = _core.em_workspace()
    serial = [fn(_core.em_workspace(), d) for d in data]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda d: fn(shared if shared_workspace else _core.em_workspace(), d),
                                data))
            for a, b in zip(serial, got):
                assert a.tobytes() == b.tobytes()


def test_concurrent_estimator_and_evaluator_calls_equal_serial_calls():
    f, m, y, th = _data(5, n=8)
    em = primaps.PriMaPsEM(5).init_from(th)
    crf = primaps.DenseCRF(iterations=2)
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    logits = rng.standard_normal((8, 5, 16, 16)).astype(np.float32)
    serial_pred = [em.predict(f[i], 40) for i in range(8)]
    serial_crf = [crf(images[i], logits[i]) for i in range(8)]
    ev_serial = primaps.Evaluator(5)
    for i in range(8):
        ev_serial.update(serial_pred[i], y[i])
    ev = primaps.Evaluator(5)

    def work(i):
        p = em.predict(f[i], 40)
        ev.update(p, y[i])
        return p, crf(images[i], logits[i])

    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(work, range(8)))
    for i, (p, q) in enumerate(out):
        assert p.tobytes() == serial_pred[i].tobytes()
        assert q.tobytes() == serial_crf[i].tobytes()
    assert np.array_equal(ev.confusion, ev_serial.confusion)


def test_mask_maps_of_a_batch_equal_those_of_single_images(threads):
    f = _data(7)[0]
    threads(2)
    batch = primaps.masks(f, out_size=40)
    for i in range(len(f)):
        assert batch[i].tobytes() == primaps.masks(f[i], out_size=40).tobytes()
