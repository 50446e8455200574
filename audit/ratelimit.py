"""A ceiling on one worker's calls to the model server: a token bucket around the Predictor.

An audit sends requests back to back; a shared TF Serving then answers the front end's patients
late. `--max-rps` caps what one worker sends, so operators size the audit's share of the servers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.predictor import Predictor


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take()` blocks until one is there."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"expected a rate > 0 calls per second, got {rate}")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock, self._sleep = clock, sleep
        self._tokens, self._at = self.burst, clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Wait for a token; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return waited
                wait = (1 - self._tokens) / self.rate
            self._sleep(wait)
            waited += wait


class RateLimitedPredictor:
    """A Predictor whose calls that reach the model server (predict, gradcam, vjp) take a token first."""

    _LIMITED = frozenset({"predict", "gradcam", "vjp"})

    def __init__(self, predictor: Predictor, bucket: TokenBucket) -> None:
        self._predictor = predictor
        self.bucket = bucket

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._predictor, name)
        if name not in self._LIMITED:
            return attribute

        def limited(*args: Any, **kwargs: Any) -> Any:
            self.bucket.take()
            return attribute(*args, **kwargs)

        return limited
