"""DINO / DINOv2 feature extraction (optional extra: ``pip install primaps[torch]``).

``extract(images, backbone, weights)`` turns uint8 images into dense features
``(B, C, h, w)`` float32: ImageNet mean/std normalisation, a ViT from
``transformers`` (``ViTModel`` for DINO, ``Dinov2Model`` for DINOv2), the patch
tokens of the last block reshaped to the patch grid, optionally averaged with
the features of the horizontally flipped image (flipped back), as the
original does at test time.

What "the last block" means here.  PriMaPs (and STEGO) take the features from
the original repositories' ``get_intermediate_layers(img, n=1)``: in DINO that
returns ``self.norm(x)`` after the last block, in DINOv2 ``norm=True`` by
default, so the features are the last block's output **after the final
LayerNorm**, class token (and registers) dropped.  That is transformers'
``last_hidden_state[:, 1:]``, which is what is used.

Positional embeddings are resized as the original code does it, not as
transformers does: bicubic with ``scale_factor = (n + 0.1) / sqrt(N)``
(``interpolate_offset = 0.1``, no antialiasing) rather than an exact target
size; the two differ slightly for crops other than the training size.

Weights come only from a local path: an original checkpoint (``.pth`` from
facebookresearch/dino or dinov2; its keys are converted to transformers'
layout) or a local Hugging Face model folder (``config.json`` plus weights).
Nothing is ever downloaded.
"""

from __future__ import annotations

import math
import os
import re
import types
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["BACKBONES", "Backbone", "extract", "load", "convert_checkpoint"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
INTERPOLATE_OFFSET = 0.1
HEAD_DIM = 64  # every DINO / DINOv2 ViT-S and ViT-B uses 64 channels per head


@dataclass(frozen=True)
class BackboneSpec:
    family: str  # "dino" or "dinov2"
    patch_size: int
    dim: int
    checkpoint: str  # file name of the original checkpoint
    url: str
    hf_id: str


_DINO = "https://dl.fbaipublicfiles.com/dino/"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/"
BACKBONES: Dict[str, BackboneSpec] = {
    "dino_vits8": BackboneSpec("dino", 8, 384, "dino_deitsmall8_pretrain.pth",
                               _DINO + "dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
                               "facebook/dino-vits8"),
    "dino_vits16": BackboneSpec("dino", 16, 384, "dino_deitsmall16_pretrain.pth",
                                _DINO + "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
                                "facebook/dino-vits16"),
    "dino_vitb8": BackboneSpec("dino", 8, 768, "dino_vitbase8_pretrain.pth",
                               _DINO + "dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
                               "facebook/dino-vitb8"),
    "dino_vitb16": BackboneSpec("dino", 16, 768, "dino_vitbase16_pretrain.pth",
                                _DINO + "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
                                "facebook/dino-vitb16"),
    "dinov2_vits14": BackboneSpec("dinov2", 14, 384, "dinov2_vits14_pretrain.pth",
                                  _DINOV2 + "dinov2_vits14/dinov2_vits14_pretrain.pth",
                                  "facebook/dinov2-small"),
    "dinov2_vitb14": BackboneSpec("dinov2", 14, 768, "dinov2_vitb14_pretrain.pth",
                                  _DINOV2 + "dinov2_vitb14/dinov2_vitb14_pretrain.pth",
                                  "facebook/dinov2-base"),
}  # fmt: skip


def _spec(backbone: str) -> BackboneSpec:
    try:
        return BACKBONES[backbone]
    except (KeyError, TypeError):
        raise ValueError(
            f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}"
        ) from None


def _import_torch():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            "primaps.backbones needs PyTorch and transformers: pip install 'primaps[torch]'"
        ) from exc
    return torch, transformers


def default_weights_path(backbone: str) -> Path:
    """Where ``weights=None`` looks: ``$PRIMAPS_WEIGHTS/<checkpoint>``, else
    ``~/.cache/primaps/weights/<checkpoint>``."""
    folder = os.environ.get("PRIMAPS_WEIGHTS") or "~/.cache/primaps/weights"
    return Path(folder).expanduser() / _spec(backbone).checkpoint


def _missing_weights(backbone: str, path: Path) -> FileNotFoundError:
    spec = _spec(backbone)
    return FileNotFoundError(
        f"weights for {backbone} not found at {path}. primaps never downloads: "
        f"download the original checkpoint {spec.url} and put it at "
        f"{default_weights_path(backbone)} (or pass its path as weights=), or save the "
        f"Hugging Face model {spec.hf_id} to a local folder "
        f"(huggingface-cli download {spec.hf_id} --local-dir DIR) and pass weights=DIR."
    )


# ---------------------------------------------------------- checkpoint layout

_BLOCK = re.compile(r"^blocks\.(?:\d+\.)?(\d+)\.(.+)$")  # also chunked blocks.<chunk>.<i>


def _unwrap(state: Any, path: Path) -> Dict[str, Any]:
    """The backbone's state dict inside a checkpoint (teacher of a training
    checkpoint; ``module.`` / ``backbone.`` prefixes removed; heads dropped)."""
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict (got {type(state).__name__})")
    for key in ("teacher", "model", "state_dict"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    out = {}
    for k, v in state.items():
        k = k.replace("module.", "", 1) if k.startswith("module.") else k
        k = k.replace("backbone.", "", 1) if k.startswith("backbone.") else k
        if k.startswith(("head.", "dino_head.", "ibot_head.")):
            continue
        out[k] = v
    return out


def convert_checkpoint(state: Dict[str, Any]) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """Original DINO / DINOv2 keys -> transformers keys (the Hub layout).

    Returns ``(family, config_kwargs, state_dict)``.  The original names
    (facebookresearch/dino ``vision_transformer.py``, dinov2
    ``models/vision_transformer.py``) are ``cls_token``, ``pos_embed``,
    ``patch_embed.proj``, ``blocks.<i>.{norm1, attn.qkv, attn.proj, norm2,
    mlp.fc1, mlp.fc2}`` plus ``ls1.gamma`` / ``ls2.gamma`` and ``mask_token``
    in DINOv2, and ``norm``; ``qkv`` is split into query, key and value.
    """
    if any(k.startswith("register_tokens") for k in state):
        raise ValueError("DINOv2 checkpoints with registers are not supported")
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(
            f"not a DINO / DINOv2 ViT checkpoint: no {', '.join(missing)} "
            f"(it has {', '.join(sorted(state)[:5])}, ...)"
        )
    family = "dinov2" if any(k.endswith("ls1.gamma") for k in state) else "dino"
    block = "encoder.layer.{}."
    out: Dict[str, Any] = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    if family == "dinov2":
        out["embeddings.mask_token"] = state["mask_token"].reshape(1, -1)
        names = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.output.dense",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}  # fmt: skip
    else:
        names = {"norm1": "layernorm_before", "norm2": "layernorm_after",
                 "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
                 "mlp.fc2": "output.dense"}  # fmt: skip
    depth = 0
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m is None:
            continue
        i, rest = int(m.group(1)), m.group(2)
        depth = max(depth, i + 1)
        prefix = block.format(i)
        module, _, param = rest.rpartition(".")
        if module == "attn.qkv":
            for part, name in zip(value.chunk(3, dim=0), ("query", "key", "value")):
                out[f"{prefix}attention.attention.{name}.{param}"] = part.clone()
        elif module in ("ls1", "ls2") and param == "gamma":
            out[f"{prefix}layer_scale{module[-1]}.lambda1"] = value
        elif module in names:
            out[f"{prefix}{names[module]}.{param}"] = value
        else:
            raise ValueError(f"unexpected key in the checkpoint: {key}")
    hidden = int(state["cls_token"].shape[-1])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    grid = int(round(math.sqrt(state["pos_embed"].shape[1] - 1)))
    mlp = int(state["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in state else 4 * hidden
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "num_attention_heads": max(1, hidden // HEAD_DIM),
        "patch_size": patch,
        "image_size": grid * patch,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "hidden_act": "gelu",
    }
    if family == "dinov2":
        config["mlp_ratio"] = mlp // hidden if mlp % hidden == 0 else mlp / hidden
        config["layerscale_value"] = 1.0
    else:
        config["intermediate_size"] = mlp
    return family, config, out


# transformers >= 5 renamed the attention and MLP parameters (and ViT's
# encoder.layer -> layers); the Hub layout above is converted when needed.
_V5_RENAMES = {
    "dino": [(r"^encoder\.layer\.", "layers."),
             (r"attention\.attention\.(query|key|value)", lambda m: f"attention.{m.group(1)[0]}_proj"),
             (r"attention\.output\.dense", "attention.o_proj"),
             (r"intermediate\.dense", "mlp.fc1"),
             (r"(?<!attention\.)output\.dense", "mlp.fc2")],
    "dinov2": [(r"attention\.attention\.(query|key|value)", lambda m: f"attention.{m.group(1)[0]}_proj"),
               (r"attention\.output\.dense", "attention.o_proj")],
}  # fmt: skip


def _match_layout(model: Any, family: str, state: Dict[str, Any], path: Path) -> Dict[str, Any]:
    wanted = set(model.state_dict())
    if set(state) == wanted:
        return state
    renamed = {}
    for key, value in state.items():
        for pattern, repl in _V5_RENAMES[family]:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    if set(renamed) == wanted:
        return renamed
    extra, lacking = sorted(set(renamed) - wanted), sorted(wanted - set(renamed))
    raise ValueError(
        f"{path}: the converted checkpoint does not fit transformers' model "
        f"(unexpected: {extra[:3]}, missing: {lacking[:3]})"
    )


# -------------------------------------------------------------------- models


def _interpolate_like_original(self: Any, embeddings: Any, height: int, width: int) -> Any:
    """Positional embeddings for a `height` x `width` input, resized as DINO /
    DINOv2 do (bicubic, scale factor (n + 0.1) / sqrt(N), float32)."""
    import torch
    from torch.nn import functional as F

    pos = self.position_embeddings
    n_patches, n_pos = embeddings.shape[1] - 1, pos.shape[1] - 1
    if n_patches == n_pos and height == width:
        return pos
    patch = self.patch_embeddings.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    rows, cols = height // patch, width // patch
    grid = int(math.sqrt(n_pos))
    dim = pos.shape[-1]
    grid_pos = pos[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(
        grid_pos.float(),
        scale_factor=((rows + INTERPOLATE_OFFSET) / grid, (cols + INTERPOLATE_OFFSET) / grid),
        mode="bicubic",
        align_corners=False,
    ).to(pos.dtype)
    if tuple(grid_pos.shape[-2:]) != (rows, cols):  # pragma: no cover - guards the arithmetic
        raise RuntimeError(f"positional embeddings resized to {tuple(grid_pos.shape[-2:])}, not {(rows, cols)}")
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat((pos[:, :1], grid_pos), dim=1)


class Backbone:
    """A loaded DINO / DINOv2 ViT; call it (or :meth:`extract`) on images.

    Use :func:`load` to make one.  Attributes: ``name``, ``family``,
    ``patch_size``, ``dim`` (channels C), ``model`` (the transformers
    module), ``device``.
    """

    def __init__(self, name: str, family: str, model: Any, device: Any) -> None:
        self.name = name
        self.family = family
        self.model = model
        self.device = device
        patch = model.config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.dim = int(model.config.hidden_size)
        model.embeddings.interpolate_pos_encoding = types.MethodType(
            _interpolate_like_original, model.embeddings
        )

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, patch_size={self.patch_size}, dim={self.dim}, device={self.device})"

    def _tokens(self, pixels: Any) -> Any:
        kwargs = {"interpolate_pos_encoding": True} if self.family == "dino" else {}
        out = self.model(pixel_values=pixels, **kwargs).last_hidden_state
        b, _, c = out.shape
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        return out[:, 1:, :].reshape(b, h, w, c).permute(0, 3, 1, 2)

    def extract(self, images: Any, batch_size: int = 8, flip: bool = False) -> np.ndarray:
        """Features ``(B, C, H/p, W/p)`` float32 of uint8 images.

        Parameters
        ----------
        images : array_like, ``(B, H, W, 3)`` or ``(H, W, 3)``
            RGB, uint8 (0..255) or floating point (0..1); H and W multiples
            of the patch size.
        batch_size : int
            Images per forward pass.
        flip : bool
            Average with the features of the horizontally flipped image,
            flipped back (the original's test-time augmentation).
        """
        import torch

        pixels = _normalize(images, self.patch_size)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n, _, height, width = pixels.shape
        out = np.empty((n, self.dim, height // self.patch_size, width // self.patch_size), np.float32)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                x = torch.from_numpy(pixels[start : start + batch_size]).to(self.device)
                feats = self._tokens(x)
                if flip:
                    feats = (feats + self._tokens(x.flip(-1)).flip(-1)) / 2
                out[start : start + x.shape[0]] = feats.float().cpu().numpy()
        return out

    __call__ = extract


def _normalize(images: Any, patch: int) -> np.ndarray:
    """uint8 / float HWC images -> ImageNet-normalised float32 NCHW."""
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im) for im in images]) if len(images) else np.empty((0,))
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / np.float32(255)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    else:
        raise TypeError(f"images must be uint8 (0..255) or floating point (0..1), got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"images must have shape (B, H, W, 3) or (H, W, 3) with B >= 1, got {np.shape(images)}")
    h, w = arr.shape[1:3]
    if h % patch or w % patch or h == 0 or w == 0:
        raise ValueError(
            f"images must have a height and width that are multiples of the patch size {patch}, "
            f"got {h}x{w} (use the protocol's crop, e.g. 320 for patch 8/16, 322 for patch 14)"
        )
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def _eager(config: Any) -> Any:
    # The original computes attention as matmul + softmax; so does "eager".
    config._attn_implementation = "eager"
    return config


def _load_pth(backbone: str, path: Path) -> Tuple[str, Any]:
    torch, transformers = _import_torch()
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: cannot read the checkpoint ({exc}); it must be a state dict of tensors "
            "(the released DINO / DINOv2 .pth files are)"
        ) from exc
    family, kwargs, state = convert_checkpoint(_unwrap(raw, path))
    if family == "dino":
        model = transformers.ViTModel(_eager(transformers.ViTConfig(**kwargs)), add_pooling_layer=False)
    else:
        model = transformers.Dinov2Model(_eager(transformers.Dinov2Config(**kwargs)))
    model.load_state_dict(_match_layout(model, family, state, path), strict=True)
    return family, model


def _load_hf(path: Path) -> Tuple[str, Any]:
    _, transformers = _import_torch()
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a Hugging Face model folder ({exc})") from exc
    if config.model_type == "vit":
        family, cls, extra = "dino", transformers.ViTModel, {"add_pooling_layer": False}
    elif config.model_type == "dinov2":
        family, cls, extra = "dinov2", transformers.Dinov2Model, {}
    else:
        raise ValueError(f"{path}: a {config.model_type!r} model, expected 'vit' (DINO) or 'dinov2'")
    # a local folder loads at once: no "Loading weights" bar of transformers
    # (the command line's --quiet would not silence it)
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        model = cls.from_pretrained(
            path, local_files_only=True, attn_implementation="eager", **extra
        )
    except Exception as exc:
        raise ValueError(f"{path}: cannot load the model ({exc})") from exc
    finally:
        if shown:
            bars.enable_progress_bar()
    return family, model


@lru_cache(maxsize=2)
def _load_cached(backbone: str, path: str, stamp: int, device: str) -> Backbone:
    p = Path(path)
    family, model = _load_hf(p) if p.is_dir() else _load_pth(backbone, p)
    spec = _spec(backbone)
    if family != spec.family:
        raise ValueError(f"{path} holds a {family} model, but backbone {backbone!r} is {spec.family}")
    b = Backbone(backbone, family, model.eval().to(device), device)
    if b.patch_size != spec.patch_size:
        raise ValueError(
            f"{path} has patch size {b.patch_size}, but backbone {backbone!r} has {spec.patch_size}"
        )
    return b


def load(
    backbone: str, weights: Union[str, "os.PathLike[str]", None] = None, device: str = "cpu"
) -> Backbone:
    """Load a backbone from a local checkpoint or Hugging Face folder.

    Parameters
    ----------
    backbone : str
        One of ``dino_vits8``, ``dino_vits16``, ``dino_vitb8``, ``dino_vitb16``,
        ``dinov2_vits14``, ``dinov2_vitb14``.
    weights : path, optional
        The original ``.pth`` checkpoint or a local Hugging Face model folder;
        default :func:`default_weights_path`.  A missing file is an error
        that says what to download and where to put it.
    device : str
        A torch device (``"cpu"``, ``"cuda"``, ...).
    """
    _spec(backbone)
    _import_torch()
    path = Path(weights).expanduser() if weights is not None else default_weights_path(backbone)
    if not path.exists():
        raise _missing_weights(backbone, path)
    path = path.resolve()
    stamp = (path / "config.json" if path.is_dir() else path).stat().st_mtime_ns
    return _load_cached(backbone, str(path), stamp, str(device))


def extract(
    images: Any,
    backbone: str,
    weights: Union[str, "os.PathLike[str]", None] = None,
    batch_size: int = 8,
    device: str = "cpu",
    flip: bool = False,
) -> np.ndarray:
    """Dense features ``(B, C, H/p, W/p)`` float32 of RGB images.

    Parameters
    ----------
    images : array_like, ``(B, H, W, 3)`` or ``(H, W, 3)``
        uint8 (0..255) or floating point (0..1), e.g. a batch from
        ``primaps.datasets`` (320 x 320 crops; 322 for patch-14 backbones).
    backbone : str
        ``dino_vits8``, ``dino_vits16``, ``dino_vitb8``, ``dino_vitb16``,
        ``dinov2_vits14`` or ``dinov2_vitb14``.
    weights : path, optional
        Local ``.pth`` checkpoint or Hugging Face folder (see :func:`load`).
    batch_size : int
        Images per forward pass.
    device : str
        Torch device.
    flip : bool
        Average with the flipped image's features, flipped back.

    Returns
    -------
    ndarray of shape (B, C, H/p, W/p), float32
        Patch tokens of the last block after the final LayerNorm.
    """
    return load(backbone, weights, device).extract(images, batch_size=batch_size, flip=flip)
