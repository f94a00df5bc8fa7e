"""Configuration: TOML onto dataclasses, overrides, errors that name the key."""

import sys

import pytest

from primaps.config import (Config, ConfigError, config_from_dict, dumps, load_config,
                            packaged_configs)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_are_the_papers():
    c = Config()
    assert (c.masks.threshold, c.masks.stop_fraction, c.masks.gain, c.masks.median_size) == \
        (0.4, 0.95, 10.0, 3)
    assert (c.em.lr, c.em.focal_gamma, c.em.ema_decay, c.em.ema_every) == (5e-3, 2.0, 0.98, 10)
    assert (c.em.warmup_epochs, c.em.epochs, c.em.batch_size) == (2, 50, 32)
    assert (c.data.dataset, c.data.resize, c.data.crop, c.backbone.name) == \
        ("cityscapes", 320, 320, "dino_vits8")


def test_file_then_overrides_in_order(tmp_path):
    path = write(tmp_path, "[em]\nepochs = 5\nlr = 1\n[run]\nseed = 3\n")
    c = load_config(path)
    assert (c.em.epochs, c.em.lr, c.run.seed) == (5, 1.0, 3)
    assert isinstance(c.em.lr, float)  # an int is a valid float
    c = load_config(path, ["em.epochs=7", "run.seed=4", "em.epochs=9"])
    assert (c.em.epochs, c.run.seed) == (9, 4)  # the last override wins
    c = load_config(path, ["data.root=/data/city scapes", 'backbone.name="dino_vitb8"',
                           "data.root2=x"][:2])
    assert c.data.root == "/data/city scapes" and c.backbone.name == "dino_vitb8"


@pytest.mark.parametrize("text, msg", [
    ("[em]\nepoch = 5\n", "unknown key em.epoch"),
    ("[emm]\nepochs = 5\n", r"unknown section \[emm\]"),
    ('[em]\nepochs = "5"\n', "em.epochs .* must be an int"),
    ("[em]\nepochs = 5.0\n", "em.epochs .* must be an int"),
    ("[em]\nepochs = true\n", "em.epochs .* must be an int"),
    ("[em]\nhflip = 1\n", "em.hflip .* must be a bool"),
    ("[masks]\nthreshold = \"high\"\n", "masks.threshold .* must be a float"),
    ("[data]\nroot = 3\n", "data.root .* must be a str"),
    ("em = 3\n", "em .* must be a table"),
    ("[em\n", "not valid TOML"),
    ("[masks]\nthreshold = 1.5\n", r"masks.threshold must lie in \[0, 1\]"),
    ("[em]\nepochs = -1\n", "em.epochs must be >= 0"),
    ("[data]\ndataset = \"kitti\"\n", "data.dataset must be one of"),
    ("[backbone]\ncallable = \"nocolon\"\n", "module:function"),
])
def test_file_errors_name_the_key(tmp_path, text, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("item, msg", [
    ("em.epoch=3", "unknown key em.epoch"),
    ("emm.epochs=3", "unknown key emm.epochs"),
    ("epochs=3", "section.key"),
    ("em.epochs", "section.key=value"),
    ("em.epochs=three", "em.epochs: cannot read 'three' as an int"),
    ("em.epochs=2.5", "em.epochs .* must be an int"),
    ("em.hflip=yes", "em.hflip: cannot read 'yes' as a bool"),
])
def test_override_errors_name_the_key(item, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, [item])


def test_packaged_configs_load_and_roundtrip():
    names = packaged_configs()
    for expected in ("demo", "cityscapes_dino_vits8", "cocostuff_dino_vits8",
                     "potsdam_dino_vits8", "cityscapes_dinov2_vits14"):
        assert expected in names
    for name in names:
        c = load_config(name)
        again = config_from_dict(tomllib.loads(dumps(c)))
        assert again == c
    assert load_config("potsdam_dino_vits8").em.n_classes == 3
    assert load_config("cityscapes_dinov2_vitb14.toml").data.crop == 322
    with pytest.raises(ConfigError, match="no packaged config"):
        load_config("cityscapes_dino_vits9")
