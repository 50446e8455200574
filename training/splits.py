"""Seeded train/val/test splits that keep every patient (or lesion) on one side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def grouped_stratified_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split sample indices into (train, val, test), never putting one group on two sides.

    Groups are placed greedily, largest first (ties in seeded random order), each into the split
    whose per-label quota is furthest from met, which stratifies by label as well as grouping
    allows. Every split with a positive fraction gets at least one group. Returned index arrays
    are sorted, so each split keeps the dataset's order. Deterministic for a seed.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(groups) != len(labels):
        raise ValueError(f"expected one group per label, got {len(groups)} groups for {len(labels)} labels")
    fractions_arr = np.asarray(fractions, dtype=np.float64)
    if fractions_arr.shape != (3,) or (fractions_arr < 0).any() or not np.isclose(fractions_arr.sum(), 1.0):
        raise ValueError(f"expected three non-negative fractions summing to 1, got {fractions}")
    if len(labels) == 0:
        raise ValueError("expected at least one sample to split, got 0")
    if labels.min() < 0:
        raise ValueError(f"expected non-negative labels, got {labels.min()}")

    group_names, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    needed = int((fractions_arr > 0).sum())
    if len(group_names) < needed:
        raise ValueError(
            f"expected at least {needed} distinct groups (patients/lesions) to fill train, val and "
            f"test, got {len(group_names)}"
        )

    num_labels = int(labels.max()) + 1
    counts = np.zeros((len(group_names), num_labels), dtype=np.float64)
    np.add.at(counts, (group_of, labels), 1.0)
    sizes = counts.sum(axis=1)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(group_names))
    order = order[np.argsort(-sizes[order], kind="stable")]

    # Quotas per split and label; deficits are normalised by label totals so rare labels weigh
    # as much as common ones.
    label_totals = counts.sum(axis=0)
    quota = fractions_arr[:, None] * label_totals[None, :]
    filled = np.zeros_like(quota)
    weight = 1.0 / np.maximum(label_totals, 1.0)
    assignment = np.empty(len(group_names), dtype=np.int64)
    for group in order:
        deficit = ((quota - filled) * weight) @ counts[group]
        deficit[fractions_arr == 0] = -np.inf
        chosen = int(np.argmax(deficit))
        assignment[group] = chosen
        filled[chosen] += counts[group]

    # Tiny datasets: greedy quotas can leave val or test empty; lend them the smallest group of
    # the split holding the most groups.
    for split in np.flatnonzero(fractions_arr > 0):
        if (assignment == split).any():
            continue
        donor = int(np.argmax(np.bincount(assignment, minlength=3)))
        candidates = np.flatnonzero(assignment == donor)
        smallest = candidates[sizes[candidates] == sizes[candidates].min()]
        assignment[rng.choice(smallest)] = split

    sample_split = assignment[group_of]
    return tuple(np.flatnonzero(sample_split == s).astype(np.int64) for s in range(3))  # type: ignore[return-value]
