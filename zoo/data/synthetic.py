"""Embedded synthetic datasets: deterministic from a seed, small enough for a CPU, learnable.

They exist so that `zoo run benchmarks/quickstart.yaml` and the tests need nothing
downloaded. They are *synthetic*: numbers on them say the code works, not which backbone
is best on real satellite images.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

# Bump when a generator changes what it makes: caches of generated arrays are keyed by it.
GENERATOR_VERSION = 1

TERRAIN_CLASSES = ["water", "forest", "cropland", "urban", "sand", "grassland"]
# Imbalanced on purpose, like the terrain study's tiles (55 % down to 0.01 %).
TERRAIN_PROPORTIONS = [0.30, 0.25, 0.18, 0.12, 0.09, 0.06]

LANDCOVER_CLASSES = ["no_data", "clouds", "artificial", "cultivated", "broadleaf", "coniferous",
                     "herbaceous", "natural", "snow", "water"]
# Mean (R, G, B, NIR) in the challenge's 16-bit units; vegetation is bright in NIR.
LANDCOVER_SIGNATURES = np.array([
    [0, 0, 0, 0], [7000, 7000, 7200, 7000], [1800, 1700, 1600, 2200], [1200, 1300, 900, 3500],
    [600, 800, 500, 4200], [400, 600, 400, 2800], [900, 1100, 700, 3000], [1500, 1400, 1200, 2000],
    [9000, 9000, 9500, 8000], [500, 700, 900, 300]], dtype=np.float32)
LANDCOVER_REGION_WEIGHTS = np.array([0, 0, 0.10, 0.25, 0.18, 0.08, 0.22, 0.05, 0.02, 0.10])


def _smooth_noise(rng, size, sigma):
    noise = gaussian_filter(rng.normal(size=(size, size)), sigma)
    return noise / (noise.std() + 1e-8)


def _stripes(rng, size, period):
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    return np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))


def _terrain_tile(rng, label, size):
    jitter = rng.normal(0, 12, 3)
    name = TERRAIN_CLASSES[label]
    if name == "water":
        base = np.array([35, 65, 110]) + jitter
        texture = 8 * _smooth_noise(rng, size, 6) + 5 * _stripes(rng, size, rng.uniform(6, 12))
        tile = base + texture[..., None] * np.array([0.5, 0.8, 1.0])
    elif name == "forest":
        base = np.array([40, 80, 40]) + jitter
        canopy = _smooth_noise(rng, size, 1.5)
        tile = base + 22 * canopy[..., None]
    elif name == "cropland":
        fields = _stripes(rng, size, rng.uniform(8, 18)) > 0
        green, brown = np.array([95, 135, 55]) + jitter, np.array([150, 115, 75]) + jitter
        tile = np.where(fields[..., None], green, brown) + 6 * _smooth_noise(rng, size, 1)[..., None]
    elif name == "urban":
        tile = np.tile(np.array([125, 125, 130]) + jitter, (size, size, 1))
        block = int(rng.integers(6, 12))
        for y in range(0, size, block):
            for x in range(0, size, block):
                roof = rng.uniform(90, 220)
                tile[y + 1:y + block - 1, x + 1:x + block - 1] = roof + rng.normal(0, 8, 3)
    elif name == "sand":
        base = np.array([205, 180, 130]) + jitter
        tile = base + (18 * _stripes(rng, size, rng.uniform(20, 40)) + 6 * _smooth_noise(rng, size, 1))[..., None]
    else:  # grassland
        base = np.array([110, 150, 75]) + jitter
        tile = base + 12 * _smooth_noise(rng, size, 3)[..., None]
    tile = tile * rng.uniform(0.85, 1.15) + rng.normal(0, 5, (size, size, 3))
    return np.clip(tile, 0, 255).astype(np.uint8)


def make_synthetic_terrain(num_examples=900, image_size=64, seed=0):
    """Satellite-like texture tiles in 6 imbalanced classes: (images uint8 NHWC, labels int)."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(1, np.round(np.array(TERRAIN_PROPORTIONS) * num_examples).astype(int))
    labels = rng.permutation(np.repeat(np.arange(len(TERRAIN_CLASSES)), counts))
    images = np.stack([_terrain_tile(rng, int(label), image_size) for label in labels])
    return images, labels.astype(np.int64)


def _landcover_tile(rng, size):
    regions = int(rng.integers(3, 8))
    centres = rng.uniform(0, size, (regions, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    # Jittered Voronoi cells give irregular parcels.
    distance = ((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2)
    distance = distance + 40 * np.stack([_smooth_noise(rng, size, 4) for _ in range(regions)])
    cell = distance.argmin(axis=0)
    classes = rng.choice(len(LANDCOVER_CLASSES), size=regions, p=LANDCOVER_REGION_WEIGHTS)
    mask = classes[cell]
    if rng.random() < 0.15:  # a cloud
        cy, cx, radius = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 8, size / 4)
        cloud = (yy - cy) ** 2 + (xx - cx) ** 2 + 30 * _smooth_noise(rng, size, 3) < radius ** 2
        mask = np.where(cloud, 1, mask)
    if rng.random() < 0.1:  # the image edge: no data
        mask[:, : int(rng.integers(2, size // 4))] = 0
    signature = LANDCOVER_SIGNATURES[mask]
    texture = 1 + 0.08 * np.stack([_smooth_noise(rng, size, 1.5) for _ in range(4)], axis=-1)
    tile = signature * texture * rng.uniform(0.9, 1.1) + rng.normal(0, 60, (size, size, 4))
    tile[mask == 0] = 0
    return np.clip(tile, 0, 24356).astype(np.uint16), mask.astype(np.uint8)


def make_synthetic_landcover(num_examples=300, image_size=64, seed=0):
    """4-band (R, G, B, NIR) 16-bit tiles with region masks in the land-cover challenge's classes."""
    rng = np.random.default_rng(seed)
    tiles = [_landcover_tile(rng, image_size) for _ in range(num_examples)]
    return np.stack([t[0] for t in tiles]), np.stack([t[1] for t in tiles])
