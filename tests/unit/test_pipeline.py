"""The tf.data pipeline: shapes, dtypes, ranges, seeded order, per-epoch fractions, file decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from training.datasets import load_dataset, load_images
from training.pipeline import evaluation_dataset, training_dataset


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic:90", seed=0)


@pytest.fixture
def file_split(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        for i in range(5):
            pixels = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
            path = tmp_path / "classes" / name / f"{i}.{'png' if i % 2 else 'jpg'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return load_dataset(f"folder:{tmp_path / 'classes'}", seed=0)


def epochs(dataset: tf.data.Dataset, count: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    return [[(x.numpy(), y.numpy()) for x, y in dataset] for _ in range(count)]


def test_training_batches_have_the_contract_shapes(synthetic):
    dataset = training_dataset(synthetic.train, image_size=32, num_classes=3, batch_size=8, seed=0)
    batches = epochs(dataset, 1)[0]
    assert sum(len(x) for x, _ in batches) == len(synthetic.train)
    x, y = batches[0]
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (8, 3) and y.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert (y.sum(axis=1) == 1).all()


def test_same_seed_same_batches_new_order_each_epoch(synthetic):
    def build(seed):
        return training_dataset(synthetic.train, image_size=16, num_classes=3, batch_size=16, seed=seed)

    first, again, other = epochs(build(4), 2), epochs(build(4), 2), epochs(build(5), 1)
    for run_a, run_b in zip(first, again):
        for (xa, ya), (xb, yb) in zip(run_a, run_b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(first[0][0][0], first[1][0][0])  # epoch 2 is reshuffled
    assert not np.array_equal(first[0][0][0], other[0][0][0])


def test_fraction_gives_a_different_subset_each_epoch(synthetic):
    dataset = training_dataset(synthetic.train, image_size=16, num_classes=3, batch_size=4, seed=0, fraction=0.1)
    seen = []
    for epoch in epochs(dataset, 3):
        images = np.concatenate([x for x, _ in epoch])
        assert len(images) == int(np.ceil(0.1 * len(synthetic.train)))
        seen.append({x.tobytes() for x in images})
    assert seen[0] != seen[1] != seen[2]


def test_unshuffled_training_and_evaluation_follow_split_order(synthetic):
    expected = load_images(synthetic.val, 24)
    for dataset in (
        evaluation_dataset(synthetic.val, image_size=24, num_classes=3, batch_size=7),
        training_dataset(synthetic.val, image_size=24, num_classes=3, batch_size=7, seed=0, shuffle=False),
    ):
        x = np.concatenate([b.numpy() for b, _ in dataset])
        y = np.concatenate([labels.numpy() for _, labels in dataset])
        np.testing.assert_array_equal(x, expected)  # bit-identical to the shared imaging path
        np.testing.assert_array_equal(y.argmax(axis=1), synthetic.val.labels)


def test_file_splits_decode_in_parallel_in_order_and_match_serving(file_split):
    split = file_split.train
    dataset = evaluation_dataset(split, image_size=12, num_classes=3, batch_size=4)
    x = np.concatenate([b.numpy() for b, _ in dataset])
    np.testing.assert_array_equal(x, load_images(split, 12))
    train = training_dataset(split, image_size=12, num_classes=3, batch_size=4, seed=1)
    a, b = epochs(train, 2)
    assert sorted(x.tobytes() for batch, _ in a for x in batch) == sorted(x.tobytes() for x in load_images(split, 12))
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, b))


def test_a_corrupt_file_fails_naming_it(file_split):
    split = file_split.test
    Path(split.paths[0]).write_bytes(b"garbage")
    dataset = evaluation_dataset(split, image_size=8, num_classes=3, batch_size=2)
    with pytest.raises(tf.errors.OpError, match=Path(split.paths[0]).name):
        list(dataset)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fraction": 0.0}, "expected 0 < fraction <= 1, got 0.0"),
        ({"num_classes": 2}, r"expected labels in 0..1, got 0..2"),
        ({"batch_size": 0}, "expected batch_size >= 1, got 0"),
        ({"image_size": 0}, "expected image_size >= 1, got 0"),
    ],
)
def test_bad_arguments(synthetic, kwargs, message):
    arguments = {"image_size": 8, "num_classes": 3, "batch_size": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        training_dataset(synthetic.train, **arguments)


def test_file_splits_too_big_to_cache_give_the_same_batches(file_split):
    from training.pipeline import fits_in_cache

    assert fits_in_cache(100, 64, cache_bytes=100 * 64 * 64 * 3)
    assert not fits_in_cache(101, 64, cache_bytes=100 * 64 * 64 * 3)

    def build(cache_bytes):
        return training_dataset(
            file_split.train, image_size=16, num_classes=3, batch_size=4, seed=5, cache_bytes=cache_bytes
        )

    cached, uncached = epochs(build(1 << 20), 2), epochs(build(0), 2)
    for a, b in zip(cached, uncached):
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
