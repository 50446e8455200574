"""``synthetic[:N]``: a generated, clearly labelled stand-in dataset for offline demos and tests.

Three "lesion" shapes (ring, spot, streak) drawn in brown on a noisy skin-coloured 64x64
background, with random position, size, angle and colour: learnable, but not by one pixel.
It is not medical data; class names and ``Dataset.synthetic`` say so.
"""

from __future__ import annotations

import numpy as np

from training.dataset_types import Dataset, DatasetError, Split, make_dataset, split_grouped

DEFAULT_COUNT = 600
IMAGE_SIDE = 64
CLASSES = ("synthetic lesion: ring", "synthetic lesion: spot", "synthetic lesion: streak")


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, 64, 64, 3]: one shape per image, its class given by ``labels``."""
    return synthetic_lesions(labels, rng)[0]


def synthetic_lesions(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 64, 64, 3], bool masks [N, 64, 64]): one shape per image, its class given
    by ``labels``. A mask is where the lesion is: the pixels drawn in the lesion's colour with any
    hole filled (a ring's inside is part of its lesion, as a pigmented border's is)."""
    n = len(labels)
    y, x = np.mgrid[0:IMAGE_SIDE, 0:IMAGE_SIDE].astype(np.float32)
    cy, cx = (rng.uniform(20, 44, size=(2, n, 1, 1))).astype(np.float32)
    radius = rng.uniform(8, 16, size=(n, 1, 1)).astype(np.float32)
    angle = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
    dist = np.hypot(y - cy, x - cx)
    # Distance from the line through the centre at ``angle``, limited to a segment of 2*radius+8.
    along = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    across = np.abs(-(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle))
    ring = np.abs(dist - radius) < 2.5
    spot = dist < radius * 0.8
    streak = (across < 2.5) & (np.abs(along) < radius + 4)
    mask = np.where(labels[:, None, None] == 0, ring, np.where(labels[:, None, None] == 1, spot, streak))

    skin = rng.uniform([190, 140, 120], [240, 190, 170], size=(n, 1, 1, 3)).astype(np.float32)
    lesion = rng.uniform([70, 40, 20], [130, 80, 60], size=(n, 1, 1, 3)).astype(np.float32)
    image = np.where(mask[..., None], lesion, skin)
    image += rng.normal(0, 12, size=image.shape).astype(np.float32)
    disc = dist < radius + 2.5  # a ring with its inside
    extent = np.where(labels[:, None, None] == 0, disc, mask)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), extent


def load_synthetic(spec: str, argument: str, *, seed: int) -> Dataset:
    """``argument`` is the image count (default 600); the same seed gives the same dataset."""
    if argument and not argument.isdigit():
        raise DatasetError(f"expected synthetic or synthetic:N with N an image count, got {spec!r}")
    count = int(argument) if argument else DEFAULT_COUNT
    if count < 3 * len(CLASSES):
        raise DatasetError(f"expected synthetic:N with N >= {3 * len(CLASSES)}, got {count}")
    rng = np.random.default_rng([seed, count])
    labels = rng.permutation(np.arange(count) % len(CLASSES)).astype(np.int64)
    ids = tuple(f"synthetic/{i:05d}" for i in range(count))
    images, masks = synthetic_lesions(labels, rng)
    everything = Split(ids=ids, labels=labels, groups=ids, images=images, masks=masks)
    train, val, test = split_grouped(everything, seed=seed, described_as=spec)
    return make_dataset(
        kind="synthetic", source=spec, default_task="synthetic", class_names=CLASSES,
        train=train, val=val, test=test, synthetic=True,
    )
