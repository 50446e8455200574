"""Readiness as `/readyz` answers it: the backend answers and at least one model is AVAILABLE.

Kubernetes probes every pod every few seconds; the answer is kept for `READY_CACHE_SECONDS` so
probes (and gunicorn threads probing at once) cost TF Serving one status round per window. A
model TF Serving is still loading (a rollout's pick-up) is listed, not waited for: one AVAILABLE
model is enough to answer uploads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from service.predictor import Predictor
from training.contract.errors import PredictorError

READY_CACHE_SECONDS = 5.0  # shorter than the front end's readinessProbe period (10 s), so each probe sees fresh news


@dataclass(frozen=True)
class Readiness:
    """One check's outcome: per-model states, and why the backend is not ready (None when it is)."""

    models: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.error is None and "AVAILABLE" in self.models.values()


class ReadinessProbe:
    """`check()` asks the predictor for its models' states at most once per `ttl_seconds`."""

    def __init__(
        self, predictor: Predictor, *, ttl_seconds: float = READY_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        if ttl_seconds < 0:
            raise ValueError(f"expected ttl_seconds >= 0, got {ttl_seconds}")
        self.predictor = predictor
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, Readiness] | None = None

    def check(self) -> Readiness:
        """The cached outcome while fresh, else a new one (concurrent callers wait for one check)."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last[0] < self.ttl_seconds:
                return self._last[1]
            try:
                outcome = Readiness(dict(self.predictor.model_states()))
            except PredictorError as exc:
                outcome = Readiness(error=exc.message)
            self._last = (now, outcome)
            return outcome
