"""tf.data pipelines that keep the model busy: decode once, cache uint8 at model size, prefetch.

Images travel as uint8 at the model's size and become float32 in [0, 1] only per batch, which
keeps caches and shuffle buffers four times smaller. Pixels are produced by the shared
:mod:`training.contract.imaging` path, so training sees exactly what serving and the audit see.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from training.contract import imaging
from training.dataset_types import Split
from training.datasets import load_uint8

# Decoded training images are cached in memory up to this size; a larger file-backed split
# (full HAM10000 at 299 px is ~2.7 GB) is decoded again each epoch instead.
DEFAULT_CACHE_BYTES = 1 << 30


def fits_in_cache(count: int, image_size: int, cache_bytes: int = DEFAULT_CACHE_BYTES) -> bool:
    """Whether `count` uint8 images at the model's size fit in the in-memory cache budget."""
    return count * image_size * image_size * 3 <= cache_bytes


def _one_hot(split: Split, num_classes: int) -> np.ndarray:
    if num_classes < 1:
        raise ValueError(f"expected num_classes >= 1, got {num_classes}")
    if len(split) and (split.labels.min() < 0 or split.labels.max() >= num_classes):
        raise ValueError(
            f"expected labels in 0..{num_classes - 1}, got {split.labels.min()}..{split.labels.max()}"
        )
    return np.eye(num_classes, dtype=np.float32)[split.labels]


def _check(image_size: int, batch_size: int) -> None:
    if image_size < 1:
        raise ValueError(f"expected image_size >= 1, got {image_size}")
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")


def _to_unit_range(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32) / 255.0, labels


def _decoded_files(
    split: Split, image_size: int, one_hot: np.ndarray, max_side: int | None, cache_bytes: int = DEFAULT_CACHE_BYTES
) -> tf.data.Dataset:
    """(uint8 [S, S, 3], one-hot) per file, decoded in parallel in split order, cached when it fits."""

    def decode(path: bytes) -> np.ndarray:
        rgb = imaging.decode_image_file(path.decode(), max_side=max_side)
        return imaging.resize_uint8(rgb, image_size)

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(image, (image_size, image_size, 3)), label

    assert split.paths is not None  # called for splits read from files
    paths = tf.constant(list(split.paths), dtype=tf.string)
    decoded = tf.data.Dataset.from_tensor_slices((paths, one_hot)).map(
        load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return decoded.cache() if fits_in_cache(len(split), image_size, cache_bytes) else decoded


def training_dataset(
    split: Split,
    *,
    image_size: int,
    num_classes: int,
    batch_size: int,
    seed: int,
    fraction: float = 1.0,
    shuffle: bool = True,
    max_side: int | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> tf.data.Dataset:
    """Batches of (float32 [B, S, S, 3] in [0, 1], float32 one-hot [B, K]) for one epoch per pass.

    With ``shuffle``, each pass is a fresh seeded permutation (the same sequence of epochs for the
    same seed). ``fraction`` < 1 makes each epoch a different seeded random subset of that size,
    as the paper did (10% per epoch for skin lesions); without ``shuffle`` it is the first part.
    ``max_side`` bounds decoding of huge photos (default: full decode, exactly as served).
    """
    _check(image_size, batch_size)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"expected 0 < fraction <= 1, got {fraction}")
    if len(split) == 0:
        raise ValueError("expected a non-empty split to train on, got 0 samples")
    one_hot = _one_hot(split, num_classes)
    count = len(split)
    per_epoch = count if fraction == 1.0 else max(1, math.ceil(fraction * count))

    if split.images is not None:
        # Resize once up front; then shuffle indices, not images, and gather per batch.
        images = tf.constant(load_uint8(split, image_size))
        labels = tf.constant(one_hot)
        order = tf.data.Dataset.range(count)
        if shuffle:
            order = order.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        batches = order.take(per_epoch).batch(batch_size).map(
            lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )
    else:
        samples = _decoded_files(split, image_size, one_hot, max_side, cache_bytes)
        if shuffle:
            samples = samples.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        batches = samples.take(per_epoch).batch(batch_size)
    return batches.map(_to_unit_range, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE
    )


def evaluation_dataset(
    split: Split,
    *,
    image_size: int,
    num_classes: int,
    batch_size: int,
    max_side: int | None = None,
) -> tf.data.Dataset:
    """Batches in split order, no shuffling; decoded files are cached for repeated evaluation."""
    _check(image_size, batch_size)
    one_hot = _one_hot(split, num_classes)
    if split.images is not None:
        samples = tf.data.Dataset.from_tensor_slices((load_uint8(split, image_size), one_hot))
    else:
        samples = _decoded_files(split, image_size, one_hot, max_side)
    return (
        samples.batch(batch_size)
        .map(_to_unit_range, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
