"""Twin of primaps.backbones: the forward pass of the original DINO / DINOv2
ViT written directly on an original-layout state dict (``blocks.<i>.attn.qkv``
...), in torch, without transformers.  It follows the original
``get_intermediate_layers(x, n=1)``: the last block's tokens after the final
``norm``, class token dropped, positional embeddings resized by bicubic
interpolation with ``scale_factor = (n + 0.1) / sqrt(N)``."""

from __future__ import annotations

import math

import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def random_checkpoint(torch, family: str, dim: int = 128, depth: int = 2, patch: int = 8,
                      grid: int = 4, seed: int = 0) -> dict:
    """A random state dict in the original layout (DINO or DINOv2)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "cls_token": r(1, 1, dim), "pos_embed": r(1, grid * grid + 1, dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch, scale=0.05),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": 1 + r(dim), "norm.bias": r(dim),
    }  # fmt: skip
    if family == "dinov2":
        sd["mask_token"] = torch.zeros(1, dim)
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + r(dim), p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim), p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
            p + "norm2.weight": 1 + r(dim), p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(4 * dim, dim), p + "mlp.fc1.bias": r(4 * dim),
            p + "mlp.fc2.weight": r(dim, 4 * dim), p + "mlp.fc2.bias": r(dim),
        })  # fmt: skip
        if family == "dinov2":
            sd[p + "ls1.gamma"] = 1 + r(dim)
            sd[p + "ls2.gamma"] = 1 + r(dim)
    return sd


def _pos_embed(torch, sd, rows, cols):
    pos = sd["pos_embed"]
    n = pos.shape[1] - 1
    if rows * cols == n and rows == cols:
        return pos
    m = math.sqrt(n)
    dim = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, int(m), int(m), dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(
        grid, scale_factor=((rows + 0.1) / m, (cols + 0.1) / m), mode="bicubic"
    )
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def features(torch, sd: dict, images_uint8: np.ndarray, heads: int) -> np.ndarray:
    """(B, C, h, w) float64 features of uint8 (B, H, W, 3) images."""
    F = torch.nn.functional
    sd = {k: v.double() for k, v in sd.items()}
    x = torch.from_numpy(images_uint8.astype(np.float64) / 255.0).permute(0, 3, 1, 2)
    x = (x - torch.tensor(MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(
        STD, dtype=torch.float64)[:, None, None]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    b, c, rows, cols = t.shape
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t.flatten(2).transpose(1, 2)], dim=1)
    t = t + _pos_embed(torch, sd, rows, cols)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(t, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"])
        qkv = qkv.reshape(b, -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, c)
        y = y @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        if p + "ls1.gamma" in sd:
            y = y * sd[p + "ls1.gamma"]
        t = t + y
        y = F.layer_norm(t, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        y = y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
        if p + "ls2.gamma" in sd:
            y = y * sd[p + "ls2.gamma"]
        t = t + y
    t = F.layer_norm(t, (c,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return t[:, 1:].reshape(b, rows, cols, c).permute(0, 3, 1, 2).numpy()
