"""Grouped, stratified, seeded splits: no group ever appears on two sides."""

from __future__ import annotations

import numpy as np
import pytest

from training.splits import grouped_stratified_split


def make_groups(num_samples: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, num_samples // 3, size=num_samples)
    labels = (patient % 5 == 0).astype(np.int64) + (patient % 7 == 0)  # labels follow the patient
    return labels, [f"p{p}" for p in patient]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_group_on_two_sides_and_every_sample_once(seed):
    labels, groups = make_groups(900, seed)
    parts = grouped_stratified_split(labels, groups, seed=seed)
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == list(range(900))
    sides = [{groups[i] for i in part} for part in parts]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    for part in parts:
        assert (np.diff(part) > 0).all()  # sorted: splits keep the dataset's order


def test_fractions_and_stratification_are_close():
    labels = np.array([0] * 700 + [1] * 200 + [2] * 100)
    groups = [str(i) for i in range(1000)]
    train, val, test = grouped_stratified_split(labels, groups, seed=0)
    assert (len(train), len(val), len(test)) == (700, 150, 150)
    for part, fraction in ((train, 0.7), (val, 0.15), (test, 0.15)):
        counts = np.bincount(labels[part], minlength=3)
        np.testing.assert_allclose(counts, np.array([700, 200, 100]) * fraction, atol=1)


def test_rare_label_reaches_every_split():
    labels = np.array([0] * 200 + [1] * 6)
    groups = [str(i) for i in range(206)]
    parts = grouped_stratified_split(labels, groups, seed=5)
    assert all((labels[part] == 1).any() for part in parts)


def test_deterministic_for_a_seed_and_varies_with_it():
    labels, groups = make_groups(300)
    first = grouped_stratified_split(labels, groups, seed=11)
    again = grouped_stratified_split(labels, groups, seed=11)
    other = grouped_stratified_split(labels, groups, seed=12)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_tiny_dataset_still_fills_every_split():
    # Kaggle DR's sample: 10 eyes of 5 patients.
    labels = np.array([0, 0, 1, 0, 2, 4, 0, 0, 1, 4])
    groups = [f"{i // 2}" for i in range(10)]
    parts = grouped_stratified_split(labels, groups, seed=0)
    assert all(len(part) > 0 for part in parts)
    sides = [{groups[i] for i in part} for part in parts]
    assert sum(len(side) for side in sides) == 5


def test_zero_fraction_leaves_a_split_empty():
    labels = np.zeros(20, dtype=np.int64)
    train, val, test = grouped_stratified_split(labels, [str(i) for i in range(20)], fractions=(0.8, 0.2, 0.0), seed=0)
    assert len(test) == 0 and len(train) == 16 and len(val) == 4


@pytest.mark.parametrize(
    "labels, groups, fractions, message",
    [
        ([0, 1], ["a", "a"], (0.7, 0.15, 0.15), "expected at least 3 distinct groups"),
        ([0, 1], ["a"], (0.7, 0.15, 0.15), "expected one group per label"),
        ([0, 1, 0], ["a", "b", "c"], (0.5, 0.5, 0.5), "summing to 1"),
        ([], [], (0.7, 0.15, 0.15), "got 0"),
        ([0, -1, 0], ["a", "b", "c"], (0.7, 0.15, 0.15), "non-negative labels"),
    ],
)
def test_bad_arguments(labels, groups, fractions, message):
    with pytest.raises(ValueError, match=message):
        grouped_stratified_split(labels, groups, fractions=fractions, seed=0)
