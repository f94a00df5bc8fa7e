"""primaps.backbones on tiny random ViTs in both weight formats: the original
checkpoint layout (checked against an independent forward pass of the
original architecture) and a local Hugging Face folder."""

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import torch_or_skip
from twins import vit as twin

torch = torch_or_skip()
transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")

from primaps import backbones  # noqa: E402

DIM, HEADS = 128, 2  # heads = DIM / 64, as in every DINO ViT-S / ViT-B


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny original-layout checkpoints for both families."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for family, patch, grid in (("dino", 8, 4), ("dinov2", 14, 5)):
        sd = twin.random_checkpoint(torch, family, dim=DIM, patch=patch, grid=grid, seed=len(family))
        paths[family] = folder / f"{family}.pth"
        torch.save(sd, paths[family])
        paths[family + "_sd"] = sd
    return paths


def images(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("family,backbone,h,w", [
    ("dino", "dino_vits8", 48, 64),
    ("dino", "dino_vits8", 32, 32),   # the training grid: no interpolation
    ("dinov2", "dinov2_vits14", 56, 42),
])  # fmt: skip
def test_pth_matches_original_forward(weights, family, backbone, h, w):
    x = images(3, h, w)
    feats = backbones.extract(x, backbone, weights[family], batch_size=2)
    p = 8 if family == "dino" else 14
    assert feats.shape == (3, DIM, h // p, w // p) and feats.dtype == np.float32
    ref = twin.features(torch, weights[family + "_sd"], x, HEADS)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=2e-4)


def test_features_do_not_depend_on_batch_size(weights):
    x = images(5, 48, 40, seed=1)
    a = backbones.extract(x, "dino_vits8", weights["dino"], batch_size=5)
    b = backbones.extract(x, "dino_vits8", weights["dino"], batch_size=2)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    one = backbones.extract(x[2], "dino_vits8", weights["dino"])
    np.testing.assert_allclose(one[0], a[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,backbone", [("dino", "dino_vits8"), ("dinov2", "dinov2_vits14")])
def test_flip_averaging(weights, family, backbone):
    p = 8 if family == "dino" else 14
    x = images(2, 2 * p, 5 * p, seed=2)
    plain = backbones.extract(x, backbone, weights[family])
    of_flipped = backbones.extract(x[:, :, ::-1], backbone, weights[family])
    averaged = backbones.extract(x, backbone, weights[family], flip=True)
    np.testing.assert_allclose(averaged, (plain + of_flipped[..., ::-1]) / 2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(averaged, plain, atol=1e-3)
    # flip-averaged features are exactly flip-equivariant
    averaged_of_flipped = backbones.extract(x[:, :, ::-1], backbone, weights[family], flip=True)
    np.testing.assert_allclose(averaged_of_flipped, averaged[..., ::-1], rtol=1e-5, atol=1e-5)


def _to_original(state):
    """A transformers state dict (either naming) -> the original layout."""
    out, qkv = {}, {}
    fixed = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
             "embeddings.mask_token": "mask_token",
             "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
             "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
             "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}  # fmt: skip
    parts = [(r"layernorm_before|norm1", "norm1"), (r"layernorm_after|norm2", "norm2"),
             (r"attention\.o_proj|attention\.output\.dense", "attn.proj"),
             (r"intermediate\.dense|mlp\.fc1", "mlp.fc1"), (r"(?<!attention\.)output\.dense|mlp\.fc2", "mlp.fc2"),
             (r"layer_scale1\.lambda1", "ls1.gamma"), (r"layer_scale2\.lambda1", "ls2.gamma")]  # fmt: skip
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value.reshape(1, -1) if key.endswith("mask_token") else value
            continue
        m = re.match(r"^(?:layers|encoder\.layer)\.(\d+)\.(.+)$", key)
        i, rest = m.group(1), m.group(2)
        q = re.match(r"attention\.(?:attention\.)?(q|k|v|query|key|value)(?:_proj)?\.(weight|bias)$", rest)
        if q:
            qkv.setdefault((i, q.group(2)), {})[q.group(1)[0]] = value
            continue
        for pattern, name in parts:
            m2 = re.match(rf"^(?:{pattern})(\.weight|\.bias)?$", rest)
            if m2:
                suffix = "" if name.endswith("gamma") else m2.group(1)
                out[f"blocks.{i}.{name}{suffix}"] = value
                break
        else:
            raise AssertionError(f"unmapped key {key}")
    for (i, param), d in qkv.items():
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([d["q"], d["k"], d["v"]], dim=0)
    return out


@pytest.mark.parametrize("family", ["dino", "dinov2"])
def test_hugging_face_folder_and_pth_give_the_same_features(tmp_path, family):
    common = dict(hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS,
                  layer_norm_eps=1e-6, hidden_act="gelu")  # fmt: skip
    torch.manual_seed(3)
    if family == "dino":
        config = transformers.ViTConfig(intermediate_size=4 * DIM, patch_size=8, image_size=32, **common)
        model = transformers.ViTModel(config, add_pooling_layer=False)
        backbone, x = "dino_vits8", images(2, 40, 24, seed=4)
    else:
        config = transformers.Dinov2Config(mlp_ratio=4, patch_size=14, image_size=70, **common)
        model = transformers.Dinov2Model(config)
        with torch.no_grad():  # layer scales away from their initial 1.0
            for name, prm in model.named_parameters():
                if "lambda1" in name or "layernorm" in name:
                    prm.add_(0.3 * torch.randn_like(prm))
        backbone, x = "dinov2_vits14", images(2, 42, 28, seed=4)
    model.save_pretrained(tmp_path / "hf")
    original = _to_original(model.state_dict())
    torch.save(original, tmp_path / "orig.pth")
    from_hf = backbones.extract(x, backbone, tmp_path / "hf")
    from_pth = backbones.extract(x, backbone, tmp_path / "orig.pth")
    np.testing.assert_allclose(from_hf, from_pth, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_pth, twin.features(torch, original, x, HEADS), rtol=1e-4, atol=2e-4)


def test_training_checkpoint_with_teacher_and_prefixes(tmp_path, weights):
    sd = weights["dino_sd"]
    wrapped = {"teacher": {f"module.backbone.{k}": v for k, v in sd.items()}}
    wrapped["teacher"]["module.head.last_layer.weight"] = torch.zeros(3, 3)
    torch.save(wrapped, tmp_path / "train.pth")
    x = images(1, 16, 24)
    np.testing.assert_array_equal(
        backbones.extract(x, "dino_vits8", tmp_path / "train.pth"),
        backbones.extract(x, "dino_vits8", weights["dino"]),
    )


# ------------------------------------------------------------------ errors


def test_missing_weights_say_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIMAPS_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError, match=re.escape(
            "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth")) as e:
        backbones.extract(images(1, 16, 16), "dino_vits8")
    assert str(tmp_path / "w" / "dino_deitsmall8_pretrain.pth") in str(e.value)
    assert "facebook/dino-vits8" in str(e.value)
    with pytest.raises(FileNotFoundError, match="dinov2_vitb14_pretrain.pth"):
        backbones.extract(images(1, 14, 14), "dinov2_vitb14", tmp_path / "nothing.pth")


def test_unknown_backbone():
    with pytest.raises(ValueError, match="backbone must be one of dino_vits8, .*got 'dino_vitl8'"):
        backbones.extract(images(1, 8, 8), "dino_vitl8", "x.pth")


def test_wrong_family_and_patch(weights):
    with pytest.raises(ValueError, match="holds a dino model, but backbone 'dinov2_vits14' is dinov2"):
        backbones.load("dinov2_vits14", weights["dino"])
    with pytest.raises(ValueError, match="patch size 8, but backbone 'dino_vits16' has 16"):
        backbones.load("dino_vits16", weights["dino"])


def test_not_a_checkpoint(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a DINO / DINOv2 ViT checkpoint: no cls_token"):
        backbones.load("dino_vits8", tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: cannot read the checkpoint"):
        backbones.load("dino_vits8", tmp_path / "junk.pth")


def test_bad_images(weights):
    b = backbones.load("dino_vits8", weights["dino"])
    with pytest.raises(ValueError, match="multiples of the patch size 8, got 20x16"):
        b.extract(images(1, 20, 16))
    with pytest.raises(TypeError, match="images must be uint8 .* got dtype int64"):
        b.extract(np.zeros((1, 16, 16, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"shape \(B, H, W, 3\) or \(H, W, 3\).*got \(1, 16, 16\)"):
        b.extract(np.zeros((1, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        b.extract(images(1, 16, 16), batch_size=0)


def test_floats_in_0_1_equal_uint8(weights):
    x = images(2, 16, 24, seed=5)
    np.testing.assert_allclose(
        backbones.extract(x / 255.0, "dino_vits8", weights["dino"]),
        backbones.extract(x, "dino_vits8", weights["dino"]), rtol=1e-5, atol=1e-5)  # fmt: skip


def test_without_torch_the_error_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import primaps.backbones as b\n"
            "try:\n    b.extract(None, 'dino_vits8', 'w.pth')\n"
            "except ImportError as e:\n    print(e)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)  # outside the source tree
    assert "pip install 'primaps[torch]'" in out.stdout
