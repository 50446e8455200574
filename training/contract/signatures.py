"""The exported signatures and the checks every backend applies before calling one.

Both backends (in-process and TF Serving) check batches and cotangents here, so a caller gets the
same error for the same mistake whichever server answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from training.contract.errors import InvalidInput, SignatureMissing

SIGNATURES = ("serving_default", "gradcam", "vjp")


def check_batch(images: np.ndarray, card: Mapping[str, Any]) -> np.ndarray:
    """Return `images` as float32 [N, H, W, 3], or raise InvalidInput saying what was expected."""
    arr = np.asarray(images)
    h, w = (int(s) for s in card["input_size"])
    if arr.ndim != 4 or arr.shape[1:] != (h, w, 3):
        raise InvalidInput(f"expected a batch of shape [N, {h}, {w}, 3], got {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInput("expected at least one image in the batch, got 0")
    return arr.astype(np.float32, copy=False)


def check_cotangent(cotangent: np.ndarray, batch: np.ndarray, card: Mapping[str, Any]) -> np.ndarray:
    """Return `cotangent` as float32 [N, K] for a checked `batch`, or raise InvalidInput."""
    cot = np.asarray(cotangent, dtype=np.float32)
    k = int(card["num_classes"])
    if cot.shape != (batch.shape[0], k):
        raise InvalidInput(f"expected a cotangent of shape [{batch.shape[0]}, {k}], got {list(cot.shape)}")
    return cot


def signature_keys(card: Mapping[str, Any], signature: str) -> tuple[list[str], list[str]]:
    """(input keys, output keys) of a signature, as the model card lists them (never literals)."""
    entry = card.get("signatures", {}).get(signature)
    if entry is None:
        raise SignatureMissing(
            f"model {card.get('name', '?')!r}: expected a {signature!r} signature in the model card, "
            f"got {sorted(card.get('signatures', {}))}"
        )
    return list(entry["inputs"]), list(entry["outputs"])
