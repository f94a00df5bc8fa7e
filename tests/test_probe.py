"""The linear probe: accuracy on a separable synthetic set, one step by
hand, inputs and bad input."""

import numpy as np
import pytest

import primaps
from primaps import _core
from primaps._training import Adam


def separable(rng, n=24, C=12, K=5, h=8, w=8, scale=4, block=4):
    """Blocks of block x block feature pixels of one class, each feature a
    class direction plus noise; labels at label resolution are the class map
    upsampled by nearest neighbour, with an ignored strip."""
    protos = rng.standard_normal((K, C)) * 1.5
    lab = rng.integers(0, K, (n, h // block, w // block)).repeat(block, 1).repeat(block, 2)
    F = protos[lab].transpose(0, 3, 1, 2) + 0.3 * rng.standard_normal((n, C, h, w))
    gt = lab.repeat(scale, 1).repeat(scale, 2)
    gt[:, :, :2] = 255
    return F.astype(np.float32), gt


def test_probe_separates_a_separable_set(rng):
    F, gt = separable(rng)
    probe = primaps.LinearProbe(5, epochs=30, batch_size=8)
    probe.fit((F, gt), verbose=False)
    pred = probe.predict(F, gt.shape[1:])
    valid = gt != 255
    acc = (pred[valid] == gt[valid]).mean()
    assert acc > 0.95, acc
    assert probe.loss_history_[-1] < 0.5 * probe.loss_history_[0]
    assert probe.weight_.shape == (5, 12) and probe.bias_.shape == (5,)
    assert probe.predict(F[0], 16).shape == (16, 16)


def test_probe_step_by_hand(rng):
    F, gt = separable(rng, n=4)
    probe = primaps.LinearProbe(5, seed=3)
    probe.partial_fit((F, gt))
    fresh = primaps.LinearProbe(5, seed=3)
    fresh._init(12)
    W, b = fresh.weight_.copy(), fresh.bias_.copy()
    loss, dW, db = _core.probe_bwd(_core.em_workspace(), F, gt, W, b)
    Adam({"w": W, "b": b}, 5e-3).update({"w": W, "b": b}, {"w": dW, "b": db})
    assert probe.loss_history_ == [loss]
    assert np.array_equal(probe.weight_, W) and np.array_equal(probe.bias_, b)


def test_probe_from_an_iterable(rng):
    F, gt = separable(rng, n=8)
    batches = [(F[:4], gt[:4]), (F[4:], gt[4:])]
    probe = primaps.LinearProbe(5, epochs=2).fit(batches, verbose=False)
    assert len(probe.loss_history_) == 4
    with pytest.raises(TypeError, match="one-shot iterator"):
        primaps.LinearProbe(5, epochs=2).fit(iter(batches), verbose=False)


def test_probe_is_deterministic(rng, threads):
    F, gt = separable(rng, n=8)
    runs = []
    for n in (1, 2, 1):
        threads(n)
        runs.append(primaps.LinearProbe(5, epochs=2, batch_size=4).fit((F, gt), verbose=False))
    for r in runs[1:]:
        assert np.array_equal(r.weight_, runs[0].weight_)
        assert np.array_equal(r.bias_, runs[0].bias_)


def test_probe_labels_out_of_range(rng):
    F, gt = separable(rng, n=4)
    gt[1, 3, 3] = 7
    with pytest.raises(ValueError, match=r"labels must hold values in \[0, 4\] or 255 \(ignore\), got 7"):
        primaps.LinearProbe(5).fit((F, gt), verbose=False)


def test_probe_mismatched_labels(rng):
    F, gt = separable(rng, n=4)
    with pytest.raises(ValueError, match=r"labels must have shape \(n, H, W\) with n = 4"):
        primaps.LinearProbe(5).fit((F, gt[:3]), verbose=False)


def test_probe_nan_features(rng):
    F, gt = separable(rng, n=4)
    F[2, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        primaps.LinearProbe(5).fit((F, gt), verbose=False)


def test_probe_predict_before_fit():
    with pytest.raises(RuntimeError, match="predict needs a fitted probe"):
        primaps.LinearProbe(3).predict(np.zeros((2, 4, 4), np.float32), 8)


def test_probe_predict_with_wrong_channels(rng):
    F, gt = separable(rng, n=4)
    probe = primaps.LinearProbe(5, epochs=1).fit((F, gt), verbose=False)
    with pytest.raises(ValueError, match="features have 6 channels but the probe has 12"):
        probe.predict(F[:, :6], 16)


def test_probe_pickles(rng):
    import pickle

    F, gt = separable(rng, n=4)
    probe = primaps.LinearProbe(5, epochs=1).fit((F, gt), verbose=False)
    back = pickle.loads(pickle.dumps(probe))
    assert np.array_equal(back.predict(F, 16), probe.predict(F, 16))
