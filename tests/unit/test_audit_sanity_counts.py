"""The ensemble's black-box check counts images, not image-epsilon pairs; the degenerate check weighs classes equally."""

from __future__ import annotations

import numpy as np

from audit.sanity import _ensemble_witness, square_attacked
from audit.sweep import NEVER, StageProgress, Sweep

ORDER = ("apgd_ce", "apgd_t", "square")


def _sweep(fooled_at, fooled_by, square_at: dict[int, int], correct=None) -> Sweep:
    """Five images over (0, 0.01, 0.02); `square_at` maps an epsilon index to how many images Square attacked there."""
    n = len(fooled_at)
    labels = np.zeros(n, np.int64)
    clean_class = labels.copy() if correct is None else np.where(correct, 0, 1)
    progress = tuple(
        StageProgress(i, "square", np.ones(m, np.float32), np.ones(m, np.float32), np.ones(m, bool))
        for i, m in square_at.items()
    )
    return Sweep(
        epsilons=("0", "0.01", "0.02"), labels=labels, clean_class=clean_class, fooled_at=np.array(fooled_at, np.int64),
        adversarial=np.zeros((n, 2, 2, 3), np.float32), adversarial_class=clean_class.copy(), attacked=(n, n, n),
        fooled=(0, 0, 0), rejected=0, noise_fooled_at=None, fooled_by=np.array(fooled_by), progress=progress,
    )


def test_an_image_square_attacks_at_two_epsilons_counts_once():
    # At 0.01 APGD-CE fools image 0; Square attacks images 1-4 and fools image 1.
    # At 0.02 APGD-T fools image 2; Square attacks images 3 and 4 again, and fools neither.
    # Six image-epsilon pairs, four images.
    sweep = _sweep(
        fooled_at=[1, 1, 2, NEVER, NEVER], fooled_by=["apgd_ce", "square", "apgd_t", "", ""], square_at={1: 4, 2: 2},
    )
    assert square_attacked(sweep, ORDER).tolist() == [False, True, True, True, True]
    check = _ensemble_witness(sweep, ORDER)
    assert not check.passed
    assert check.detail == (
        "the ensemble: Square fooled 1 of 4 images the gradient attacks left standing at 0.01 (gradient masking suspected)"
    )


def test_clean_misses_and_epsilon_zero_are_not_witnessed():
    # Image 4 is misclassified clean; Square's pass at epsilon 0 cannot fool anything and is not counted.
    sweep = _sweep(
        fooled_at=[NEVER, NEVER, NEVER, 2, 0], fooled_by=["", "", "", "apgd_ce", ""], square_at={0: 4, 1: 4, 2: 3},
        correct=[True, True, True, True, False],
    )
    assert square_attacked(sweep, ORDER).tolist() == [True, True, True, True, False]
    check = _ensemble_witness(sweep, ORDER)
    assert check.passed and "Square fooled 0 of 4 images" in check.detail


def test_when_square_never_ran_there_is_nothing_to_witness():
    sweep = _sweep(fooled_at=[1, 1, 1, 1, 1], fooled_by=["apgd_ce"] * 5, square_at={})
    assert _ensemble_witness(sweep, ORDER).detail.startswith("no image survived the gradient attack")


def test_the_degenerate_check_reads_the_class_balanced_share():
    from audit.sanity import degenerate_check

    # Pneumonia's proportional audit set: 18 normal, 30 pneumonia; "pneumonia" for 45 of the 48.
    labels = np.array([0] * 18 + [1] * 30)
    leaning = np.array([0] * 3 + [1] * 15 + [1] * 30)
    check = degenerate_check(labels, leaning, ("normal", "pneumonia"))
    assert not check.passed
    assert check.detail.startswith("91.7% of the clean predictions are class pneumonia, each true class weighted equally")
    honest = np.array([0] * 14 + [1] * 4 + [1] * 27 + [0] * 3)
    assert degenerate_check(labels, honest, ("normal", "pneumonia")).passed
