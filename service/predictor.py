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
    """`gradcam` outputs for a batch; `attention_map` only for attentive models, `heatmap_grid` only
    from versions exported with it (before it, the signature had the resized heatmap alone)."""

    model: str
    version: int
    probabilities: np.ndarray  # float32 [N, K]
    class_id: np.ndarray  # int64 [N]
    heatmap: np.ndarray  # float32 [N, H, W] in [0, 1]
    attention_map: np.ndarray | None = None  # float32 [N, H, W] in [0, 1]
    heatmap_grid: np.ndarray | None = None  # float32 [N, h, w] in [0, 1], at the Grad-CAM layer's resolution


@dataclass(frozen=True)
class VjpResult:
    """`vjp` outputs: logits and cotangent . d logits / d image."""

    model: str
    version: int
    logits: np.ndarray  # float32 [N, K]
    gradient: np.ndarray  # float32 [N, H, W, 3]


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

    def model_states(self) -> Mapping[str, str]:
        """Served model name -> TF Serving's ModelVersionStatus.State name ("AVAILABLE" when it can answer)."""
        ...

    def ready(self) -> bool: ...

    def close(self) -> None: ...
