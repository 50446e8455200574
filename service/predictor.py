"""The Predictor protocol: how the front end and the audit reach a served model.

Two backends implement it (`service.embedded.EmbeddedPredictor`, in-process, and
`service.tfserving.TFServingPredictor`, over gRPC). Everything model-specific comes from the
SavedModel contract: the three signatures and the model card beside the variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

SIGNATURES = ("serving_default", "gradcam", "vjp")


@dataclass(frozen=True)
class ModelInfo:
    """A served model: its name, the versions the backend holds, and the newest one's card."""

    name: str
    versions: tuple[int, ...]
    latest: int
    card: Mapping[str, Any]
    state: str = "AVAILABLE"  # TF Serving's ModelVersionStatus.State name for `latest`


@dataclass(frozen=True)
class Prediction:
    """`serving_default` outputs for a batch, and the version that answered."""

    model: str
    version: int
    logits: np.ndarray  # float32 [N, K]
    probabilities: np.ndarray  # float32 [N, K]
    class_id: np.ndarray  # int64 [N]


@dataclass(frozen=True)
class GradcamResult:
    """`gradcam` outputs for a batch; `attention_map` only for attentive models."""

    model: str
    version: int
    probabilities: np.ndarray  # float32 [N, K]
    class_id: np.ndarray  # int64 [N]
    heatmap: np.ndarray  # float32 [N, H, W] in [0, 1]
    attention_map: np.ndarray | None = None  # float32 [N, H, W] in [0, 1]


@dataclass(frozen=True)
class VjpResult:
    """`vjp` outputs: logits and cotangent . d logits / d image."""

    model: str
    version: int
    logits: np.ndarray  # float32 [N, K]
    gradient: np.ndarray  # float32 [N, H, W, 3]


class PredictorError(Exception):
    """Base of the errors a backend raises; `code` and `http_status` are what the API answers."""

    code = "backend_error"
    http_status = 502

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})


class ModelNotFound(PredictorError):
    code = "model_not_found"
    http_status = 404


class InvalidInput(PredictorError):
    code = "invalid_input"
    http_status = 400


class BackendUnavailable(PredictorError):
    code = "backend_unavailable"
    http_status = 503


class BackendTimeout(PredictorError):
    code = "backend_timeout"
    http_status = 504


class SignatureMissing(PredictorError):
    """The model does not export a signature the caller needs (for example `vjp` for the audit)."""

    code = "signature_missing"
    http_status = 422


@runtime_checkable
class Predictor(Protocol):
    """What the front end and the audit need from a model server.

    `version` may be an int (a pinned version), a str (a TF Serving version label, or digits),
    or None (the newest available version). Batches are float32 [N, H, W, 3] in [0, 1] at the
    model's input size (`card["input_size"]`).
    """

    backend_name: str

    def list_models(self) -> tuple[ModelInfo, ...]: ...

    def model_info(self, model: str) -> ModelInfo: ...

    def model_card(self, model: str, version: int | str | None = None) -> Mapping[str, Any]: ...

    def predict(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> Prediction: ...

    def gradcam(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> GradcamResult: ...

    def vjp(
        self, model: str, images: np.ndarray, cotangent: np.ndarray, *, version: int | str | None = None
    ) -> VjpResult: ...

    def ready(self) -> bool: ...

    def close(self) -> None: ...


def check_batch(images: np.ndarray, card: Mapping[str, Any]) -> np.ndarray:
    """Return `images` as float32 [N, H, W, 3], or raise InvalidInput saying what was expected."""
    arr = np.asarray(images)
    h, w = (int(s) for s in card["input_size"])
    if arr.ndim != 4 or arr.shape[1:] != (h, w, 3):
        raise InvalidInput(f"expected a batch of shape [N, {h}, {w}, 3], got {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInput("expected at least one image in the batch, got 0")
    return arr.astype(np.float32, copy=False)


def signature_keys(card: Mapping[str, Any], signature: str) -> tuple[list[str], list[str]]:
    """(input keys, output keys) of a signature, as the model card lists them (never literals)."""
    entry = card.get("signatures", {}).get(signature)
    if entry is None:
        raise SignatureMissing(
            f"model {card.get('name', '?')!r}: expected a {signature!r} signature in the model card, "
            f"got {sorted(card.get('signatures', {}))}"
        )
    return list(entry["inputs"]), list(entry["outputs"])
