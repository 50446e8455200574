"""A Predictor that records backend latency and errors in the service's metrics, then delegates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from service.metrics import ServiceMetrics
from service.predictor import GradcamResult, ModelInfo, Prediction, Predictor, VjpResult


class InstrumentedPredictor:
    """Wraps any Predictor; every call is timed (label `signature`: the signature, or the lookup
    `list_models` / `model_info` / `model_card`) and its errors counted by gRPC status name."""

    def __init__(self, inner: Predictor, metrics: ServiceMetrics):
        self.inner = inner
        self.metrics = metrics
        self.backend_name = inner.backend_name

    def list_models(self) -> tuple[ModelInfo, ...]:
        with self.metrics.backend_call(self.backend_name, "list_models"):
            return self.inner.list_models()

    def model_info(self, model: str) -> ModelInfo:
        with self.metrics.backend_call(self.backend_name, "model_info"):
            return self.inner.model_info(model)

    def model_card(self, model: str, version: int | str | None = None) -> Mapping[str, Any]:
        with self.metrics.backend_call(self.backend_name, "model_card"):
            return self.inner.model_card(model, version)

    def predict(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> Prediction:
        with self.metrics.backend_call(self.backend_name, "serving_default"):
            result = self.inner.predict(model, images, version=version)
        self._note_loaded()
        return result

    def gradcam(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> GradcamResult:
        with self.metrics.backend_call(self.backend_name, "gradcam"):
            result = self.inner.gradcam(model, images, version=version)
        self._note_loaded()
        return result

    def vjp(
        self, model: str, images: np.ndarray, cotangent: np.ndarray, *, version: int | str | None = None
    ) -> VjpResult:
        with self.metrics.backend_call(self.backend_name, "vjp"):
            result = self.inner.vjp(model, images, cotangent, version=version)
        self._note_loaded()
        return result

    def model_states(self) -> Mapping[str, str]:
        with self.metrics.backend_call(self.backend_name, "model_states"):
            return self.inner.model_states()

    def _note_loaded(self) -> None:
        # A model call may have loaded or evicted a version. /metrics is served apart from the
        # workers (by gunicorn's master), so the gauge is kept current here, where it changes;
        # only a backend's own cheap count is used, never a listing per request.
        own = getattr(self.inner, "loaded_count", None)
        if callable(own):
            self.metrics.models_loaded.set(own())

    def ready(self) -> bool:
        return self.inner.ready()

    def loaded_count(self) -> int:
        return loaded_count(self.inner)

    def close(self) -> None:
        self.inner.close()


def loaded_count(predictor: Predictor) -> int:
    """Model versions the backend holds ready (backends may answer this more cheaply themselves)."""
    own = getattr(predictor, "loaded_count", None)
    if callable(own):
        return int(own())
    return sum(1 for m in predictor.list_models() if m.state == "AVAILABLE")
