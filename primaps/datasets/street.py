"""Generated street scenes: dense features with ground truth (docs/method.md §1.6).

The embedded data of ``primaps demo``: no backbone and no download.  Every
image is a street-scene layout at label resolution (sky on top, a skyline of
building and vegetation blocks, a road in perspective with sidewalks and
terrain beside it, and cars, persons, poles and signs that grow towards the
bottom), and every ``patch x patch`` block of it gets a feature vector that
imitates what self-supervised features look like:

    feature = sum over the instances covering the patch of
                  (area share) * (unit class prototype + instance offset)
              + smooth nuisance field (in a subspace orthogonal to the classes)
              + per-patch noise

Close prototype pairs (road-sidewalk, vegetation-terrain, car-person,
pole-sign, building-sky) make neighbouring classes hard to separate; the
nuisance field makes K-means split large classes; the small classes are rare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import numpy as np

__all__ = ["StreetScenes", "street_scenes", "CLASS_NAMES", "PALETTE", "CLOSE_PAIRS"]

CLASS_NAMES = ("road", "sidewalk", "building", "vegetation", "terrain", "sky",
               "car", "person", "pole", "sign")
ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, CAR, PERSON, POLE, SIGN = range(10)

# Cityscapes colours of the same classes.
PALETTE = np.array([(128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35),
                    (152, 251, 152), (70, 130, 180), (0, 0, 142), (220, 20, 60),
                    (153, 153, 153), (220, 220, 0)], dtype=np.uint8)

# Pairs of classes whose prototypes are close (cosine `pair_cosine`).
CLOSE_PAIRS = ((ROAD, SIDEWALK), (VEGETATION, TERRAIN), (CAR, PERSON), (POLE, SIGN),
               (BUILDING, SKY))


@dataclass
class StreetScenes:
    """A generated data set.

    Attributes
    ----------
    features : ndarray (n, C, h, w), float32
        Dense features, ``h = w = size // patch``.
    labels : ndarray (n, size, size), uint8
        Ground-truth classes (no ignored pixel).
    instances : ndarray (n, size, size), int32
        Instance ids per image (0, 1, ...), the regions the features follow.
    prototypes : ndarray (K, C), float32
        The unit class prototypes.
    class_names : tuple of str
    palette : ndarray (K, 3), uint8
    """

    features: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    prototypes: np.ndarray
    class_names: Tuple[str, ...] = CLASS_NAMES
    palette: np.ndarray = field(default_factory=PALETTE.copy)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.features.shape[0]

    def class_shares(self) -> np.ndarray:
        """Share of every class among all label pixels, in percent."""
        counts = np.bincount(self.labels.ravel(), minlength=self.n_classes)
        return 100.0 * counts[:self.n_classes] / self.labels.size


def _prototypes(rng: np.random.Generator, C: int, K: int, cosine: float) -> np.ndarray:
    """K unit vectors in R^C, orthogonal except for CLOSE_PAIRS (given cosine)."""
    G = np.eye(K)
    for a, b in CLOSE_PAIRS:
        G[a, b] = G[b, a] = cosine
    L = np.linalg.cholesky(G)  # rows: vectors with Gram matrix G
    Q, _ = np.linalg.qr(rng.standard_normal((C, C)))
    return (L @ Q[:K]).astype(np.float64)


class _Canvas:
    """An instance map drawn in painter's order, with the class of each id."""

    def __init__(self, size: int):
        self.size = size
        self.ids = np.zeros((size, size), np.int32)
        self.classes = [SKY]  # instance 0 is the sky
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    def paint(self, where: np.ndarray, cls: int) -> None:
        if where.any():
            self.ids[where] = len(self.classes)
            self.classes.append(cls)

    def box(self, x0: float, x1: float, y0: float, y1: float, cls: int) -> None:
        self.paint((self.xx >= x0) & (self.xx < x1) & (self.yy >= y0) & (self.yy < y1), cls)


def _layout(rng: np.random.Generator, S: int) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: (instance map (S, S) int32, class of every instance)."""
    cv = _Canvas(S)
    yy, xx = cv.yy, cv.xx
    yh = S * rng.uniform(0.40, 0.48)  # horizon
    # skyline: blocks of buildings and trees standing on the horizon
    x = -rng.uniform(0, 20) * S / 160
    while x < S:
        wdt = S * rng.uniform(0.08, 0.26)
        if rng.random() < 0.5:
            cv.box(x, x + wdt, yh - S * rng.uniform(0.16, 0.40), yh + 1, BUILDING)
        else:
            cv.box(x, x + wdt, yh - S * rng.uniform(0.06, 0.22), yh + S * rng.uniform(0.06, 0.18),
                   VEGETATION)
        x += wdt
    # ground: road in perspective, sidewalks, terrain (left and right)
    t = np.clip((yy - yh) / (S - yh), 0.0, None)
    below = yy >= yh
    xv = S * (0.5 + rng.uniform(-0.12, 0.12))
    xb = S * (0.5 + rng.uniform(-0.10, 0.10))
    xc = xv + t * (xb - xv)
    R = S * rng.uniform(0.50, 0.64)
    Sw = S * rng.uniform(0.18, 0.26)
    d = xx - xc
    road = below & (np.abs(d) < t * R)
    walk_l = below & (d <= -t * R) & (d > -t * (R + Sw))
    walk_r = below & (d >= t * R) & (d < t * (R + Sw))
    far = S * rng.uniform(0.0, 0.05)  # terrain starts a little below the skyline
    cv.paint(below & (d <= -t * (R + Sw)) & (yy >= yh + far), TERRAIN)
    cv.paint(below & (d >= t * (R + Sw)) & (yy >= yh + far), TERRAIN)
    cv.paint(road, ROAD)
    cv.paint(walk_l, SIDEWALK)
    cv.paint(walk_r, SIDEWALK)
    # objects: drawn far to near so that near ones cover far ones
    objs = []
    for _ in range(1 + rng.poisson(1.6)):  # cars on the road
        objs.append((rng.uniform(0.15, 1.0), CAR, rng.uniform(-0.8, 0.8)))
    for _ in range(rng.poisson(1.6)):  # persons on the sidewalks
        objs.append((rng.uniform(0.2, 1.0), PERSON, rng.choice([-1, 1])))
    for _ in range(rng.poisson(1.0)):  # poles (some with a sign) at the kerb
        objs.append((rng.uniform(0.15, 0.9), POLE, rng.choice([-1, 1])))
    for tt, cls, side in sorted(objs, key=lambda o: o[0]):
        yb = yh + tt * (S - yh)  # bottom of the object
        xcb = xv + tt * (xb - xv)
        if cls == CAR:
            w = tt * S * rng.uniform(0.22, 0.34)
            h = w * rng.uniform(0.55, 0.75)
            xm = xcb + side * (tt * R - w / 2)
            cv.box(xm - w / 2, xm + w / 2, yb - h, yb, CAR)
        elif cls == PERSON:
            h = tt * S * rng.uniform(0.21, 0.29)
            w = h * rng.uniform(0.25, 0.35)
            xm = xcb + side * tt * (R + Sw * rng.uniform(0.2, 0.8))
            cv.box(xm - w / 2, xm + w / 2, yb - h, yb, PERSON)
        else:
            h = tt * S * rng.uniform(0.45, 0.65)
            w = max(4.0, tt * S * 0.035) * S / 160
            xm = xcb + side * tt * (R + Sw * 0.9)
            cv.box(xm - w / 2, xm + w / 2, yb - h, yb, POLE)
            if rng.random() < 0.8:
                s = max(6.0, tt * S * 0.09) * S / 160
                cv.box(xm - s / 2, xm + s / 2, yb - h - 0.2 * s, yb - h + 0.8 * s, SIGN)
    return cv.ids, np.array(cv.classes, np.int64)


def _nuisance(rng: np.random.Generator, grid: int, h: int, w: int, dims: int) -> np.ndarray:
    """A smooth field (h, w, dims): Gaussian values on a grid x grid lattice,
    bilinearly interpolated; unit root-mean-square norm."""
    g = rng.standard_normal((grid, grid, dims))
    ys = np.linspace(0, grid - 1, h)
    xs = np.linspace(0, grid - 1, w)
    y0 = np.minimum(ys.astype(int), grid - 2)
    x0 = np.minimum(xs.astype(int), grid - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    f = ((1 - fy) * (1 - fx) * g[y0][:, x0] + (1 - fy) * fx * g[y0][:, x0 + 1]
         + fy * (1 - fx) * g[y0 + 1][:, x0] + fy * fx * g[y0 + 1][:, x0 + 1])
    return f / np.sqrt(np.mean(np.sum(f * f, axis=-1)))


def street_scenes(n_images: int = 250, seed: int = 0, *, size: int = 160, patch: int = 4,
                  channels: int = 64, pair_cosine: float = 0.2, offset_norm: float = 1.0,
                  nuisance_norm: float = 1.0, nuisance_dims: int = 4, nuisance_grid: int = 3,
                  noise_norm: float = 0.8) -> StreetScenes:
    """Generate `n_images` seeded street scenes with dense features.

    Parameters
    ----------
    n_images : int
        Number of images.
    seed : int
        Seed of everything (the same seed gives the same arrays).
    size : int
        Label resolution (size x size).
    patch : int
        Label pixels per feature patch side; features are
        ``(size // patch, size // patch)``.
    channels : int
        Feature channels C (at least 10 + `nuisance_dims`).
    pair_cosine : float
        Cosine between the prototypes of each pair in `CLOSE_PAIRS`.
    offset_norm : float
        Expected norm of the per-instance offset.
    nuisance_norm : float
        Root-mean-square norm of the smooth nuisance field.
    nuisance_dims, nuisance_grid : int
        Its dimension (orthogonal to the prototypes) and lattice size.
    noise_norm : float
        Expected norm of the per-patch noise.

    Returns
    -------
    StreetScenes
    """
    for name, v, lo in (("n_images", n_images, 1), ("size", size, 8), ("patch", patch, 1),
                        ("nuisance_grid", nuisance_grid, 2), ("nuisance_dims", nuisance_dims, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if size % patch:
        raise ValueError(f"size must be a multiple of patch, got size={size}, patch={patch}")
    K = len(CLASS_NAMES)
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) \
            or channels < K + nuisance_dims:
        raise ValueError(f"channels must be an integer >= {K + nuisance_dims}, got {channels!r}")
    if not -0.5 < pair_cosine < 0.7:
        raise ValueError(f"pair_cosine must lie in (-0.5, 0.7), got {pair_cosine}")
    for name, v in (("offset_norm", offset_norm), ("nuisance_norm", nuisance_norm),
                    ("noise_norm", noise_norm)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    rng = np.random.default_rng(seed)
    C, h = int(channels), size // patch
    protos = _prototypes(rng, C, K, pair_cosine)
    # nuisance directions: orthonormal and orthogonal to the prototypes
    Q, _ = np.linalg.qr(np.concatenate([protos.T, rng.standard_normal((C, nuisance_dims))], 1))
    nuis_dirs = Q[:, K:K + nuisance_dims].T  # (dims, C)
    feats = np.empty((n_images, C, h, h), np.float32)
    labels = np.empty((n_images, size, size), np.uint8)
    inst = np.empty((n_images, size, size), np.int32)
    sd_off = offset_norm / np.sqrt(C)
    sd_noise = noise_norm / np.sqrt(C)
    for i in range(n_images):
        ids, cls = _layout(rng, size)
        emb = protos[cls] + sd_off * rng.standard_normal((len(cls), C))  # (n_inst, C)
        # area-weighted sum over the instances of each patch
        onehot = np.zeros((len(cls), h, h))
        np.add.at(onehot, (ids, np.arange(size)[:, None] // patch,
                           np.arange(size)[None, :] // patch), 1.0 / patch**2)
        f = np.einsum("nc,nyx->cyx", emb, onehot)
        if nuisance_dims:
            nf = _nuisance(rng, nuisance_grid, h, h, nuisance_dims)
            f += nuisance_norm * np.einsum("yxd,dc->cyx", nf, nuis_dirs)
        f += sd_noise * rng.standard_normal((C, h, h))
        feats[i] = f
        labels[i] = cls[ids]
        inst[i] = ids
    return StreetScenes(feats, labels, inst, protos.astype(np.float32))
