"""A Foolbox model over a served model: forward is `serving_default`, the gradient is `vjp`.

The attack therefore targets exactly what is served (embedded or TF Serving), pinned to one
version for the whole run: every call names the version, and an answer from another version is
an error rather than a silently mixed audit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from service.predictor import Predictor, PredictorError, SignatureMissing


class AuditError(Exception):
    """An audit cannot run or be trusted; the message says what was expected and what was found."""


@dataclass
class CallCounts:
    """How many images went through each signature (the cost of an audit)."""

    forward: int = 0
    vjp: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, forward: int = 0, vjp: int = 0) -> None:
        with self._lock:
            self.forward += forward
            self.vjp += vjp


class ServedModel:
    """One pinned version of a served model, called with numpy batches."""

    def __init__(self, predictor: Predictor, model: str, version: int, *, batch_size: int = 64):
        self.predictor = predictor
        self.model = model
        self.version = int(version)
        self.batch_size = batch_size
        self.card = predictor.model_card(model, self.version)
        self.num_classes = int(self.card["num_classes"])
        self.counts = CallCounts()
        signatures = self.card.get("signatures") or {}
        if signatures and "vjp" not in signatures:
            raise AuditError(
                f"{model} version {version}: expected a 'vjp' signature to attack the served model, "
                f"its card lists {sorted(signatures)}"
            )

    def _check(self, version: int) -> None:
        if int(version) != self.version:
            raise AuditError(f"{self.model}: expected answers from pinned version {self.version}, got version {version}")

    def _predictions(self, images: np.ndarray):
        """`serving_default` over any number of images, in batches, each checked for the pinned version."""
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pred = self.predictor.predict(self.model, chunk, version=self.version)
            self._check(pred.version)
            self.counts.add(forward=len(chunk))
            yield pred

    def logits(self, images: np.ndarray) -> np.ndarray:
        """`serving_default` logits for any number of images."""
        out = [np.asarray(p.logits, np.float32) for p in self._predictions(images)]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def classes(self, images: np.ndarray) -> np.ndarray:
        """`serving_default` class ids (argmax of the served logits, as the server reports them)."""
        out = [np.asarray(p.class_id, np.int64) for p in self._predictions(images)]
        return np.concatenate(out) if out else np.zeros((0,), np.int64)

    def gradient(self, images: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        """cotangent . d logits / d image through the served `vjp` signature."""
        out = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            try:
                res = self.predictor.vjp(self.model, images[start:stop], cotangent[start:stop], version=self.version)
            except SignatureMissing as exc:
                raise AuditError(f"{self.model} version {self.version} cannot be attacked: {exc.message}") from exc
            self._check(res.version)
            self.counts.add(vjp=len(images[start:stop]))
            out.append(np.asarray(res.gradient, np.float32))
        return np.concatenate(out)

    def check_vjp(self, images: np.ndarray) -> None:
        """Fail early, with a clear error, when the served model has no usable `vjp` signature."""
        try:
            self.gradient(images[:1], np.ones((1, self.num_classes), np.float32))
        except PredictorError as exc:
            raise AuditError(f"{self.model} version {self.version}: the 'vjp' signature failed: {exc.message}") from exc


def foolbox_model(served: ServedModel):
    """A `foolbox.TensorFlowModel` whose forward and gradient both go to the served model."""
    import foolbox as fb
    import tensorflow as tf

    # The served model is a black box to Foolbox's tape (its gradient comes from `vjp`), so its calls
    # run with recording stopped; that also spares a backend's SavedModel functions the tape's
    # variable bookkeeping (a loaded signature whose module was dropped fails under a live tape).
    from tensorflow.python.eager import record

    @tf.custom_gradient
    def forward(images):
        x = images.numpy()
        with record.stop_recording():
            logits = tf.constant(served.logits(x))

        def backward(upstream):
            with record.stop_recording():
                return tf.constant(served.gradient(x, upstream.numpy().astype(np.float32)))

        return logits, backward

    return fb.TensorFlowModel(forward, bounds=(0.0, 1.0), device="/CPU:0")
