"""The one place that picks a backend: embedded unless a TF Serving address is configured."""

from __future__ import annotations

from service.config import ServiceConfig
from service.predictor import Predictor


def make_predictor(config: ServiceConfig, *, start_polling: bool = True) -> Predictor:
    """The backend `config` asks for; the embedded one polls its repository in the background."""
    if config.tf_serving:
        from service.tfserving import TFServingPredictor

        return TFServingPredictor(
            config.tf_serving,
            deadline_seconds=config.grpc_deadline_seconds,
            model_repo=config.model_repo,
            models=config.models,
        )
    from service.embedded import EmbeddedPredictor

    assert config.model_repo is not None  # ServiceConfig refuses a config without either
    predictor = EmbeddedPredictor(config.model_repo, max_loaded=config.max_loaded, poll_seconds=config.poll_seconds)
    if start_polling:
        predictor.start_polling()
    return predictor
