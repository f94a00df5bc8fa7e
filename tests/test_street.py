"""The generated street scenes of the demo (docs/method.md §1.6)."""

import numpy as np
import pytest

from primaps.datasets.street import CLASS_NAMES, street_scenes


def test_seeded_shapes_and_layout():
    a = street_scenes(6, seed=3)
    b = street_scenes(6, seed=3)
    c = street_scenes(6, seed=4)
    assert a.features.shape == (6, 64, 40, 40) and a.features.dtype == np.float32
    assert a.labels.shape == (6, 160, 160) and a.labels.dtype == np.uint8
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)
    assert a.labels.max() < len(CLASS_NAMES)
    sky = CLASS_NAMES.index("sky")
    road = CLASS_NAMES.index("road")
    assert (a.labels[:, 0] == sky).mean() > 0.5  # sky on top
    assert (a.labels[:, -1] == road).mean() > 0.3  # road at the bottom
    np.testing.assert_allclose(np.linalg.norm(a.prototypes, axis=1), 1.0, rtol=1e-6)


def test_class_shares_follow_the_recipe():
    s = dict(zip(CLASS_NAMES, street_scenes(60, seed=0).class_shares()))
    assert 20 < s["road"] < 33 and 15 < s["sky"] < 30 and 9 < s["building"] < 22
    assert s["car"] > s["person"] > s["sign"] and s["pole"] > s["sign"] > 0
    assert s["sign"] < 0.5


def test_features_follow_the_instances():
    """A patch inside one instance is that instance's prototype plus offset,
    nuisance and noise: without nuisance and noise it is constant."""
    d = street_scenes(2, seed=1, nuisance_norm=0.0, noise_norm=0.0, size=32, patch=4)
    f, ids = d.features[0], d.instances[0]
    block = ids.reshape(8, 4, 8, 4).transpose(0, 2, 1, 3).reshape(8, 8, 16)
    pure = (block == block[..., :1]).all(-1)
    first = block[..., 0]
    for i in np.unique(first[pure]):
        sel = pure & (first == i)
        vecs = f[:, sel]
        np.testing.assert_allclose(vecs, np.repeat(vecs[:, :1], vecs.shape[1], 1), atol=1e-5)


@pytest.mark.parametrize("kw, msg", [({"n_images": 0}, "n_images"),
                                     ({"size": 30, "patch": 4}, "multiple of patch"),
                                     ({"channels": 8}, "channels"),
                                     ({"noise_norm": -1.0}, "noise_norm"),
                                     ({"pair_cosine": 0.9}, "pair_cosine")])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        street_scenes(**kw)
