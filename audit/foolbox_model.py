"""A Foolbox model over a served model: forward is `serving_default`, the gradient is `vjp`.

The attack therefore targets exactly what is served (embedded or TF Serving), pinned to one
version for the whole run: every call names the version, and an answer from another version is
an error rather than a silently mixed audit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from service.predictor import Prediction, Predictor
from training.contract.errors import PredictorError, SignatureMissing

if TYPE_CHECKING:
    from foolbox.models.base import Model as FoolboxModel


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

    def _predictions(self, images: np.ndarray) -> Iterator[Prediction]:
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
        return self.logits_and_gradient(images, cotangent)[1]

    def logits_and_gradient(self, images: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits at `images` and cotangent . d logits / d image from one `vjp` call per batch.

        APGD takes one step per call where the previous point's cotangent is exact (K = 2, the targeted
        margin); elsewhere it calls `logits` first for the cotangent at the same point, and each of those
        calls is counted (`counts.forward`) and, behind `--max-rps`, rate-limited like this one.
        """
        logits, gradients = [], []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            try:
                res = self.predictor.vjp(self.model, images[start:stop], cotangent[start:stop], version=self.version)
            except SignatureMissing as exc:
                raise AuditError(f"{self.model} version {self.version} cannot be attacked: {exc.message}") from exc
            self._check(res.version)
            self.counts.add(vjp=len(images[start:stop]))
            logits.append(np.asarray(res.logits, np.float32))
            gradients.append(np.asarray(res.gradient, np.float32))
        if not logits:
            return np.zeros((0, self.num_classes), np.float32), np.zeros_like(images, np.float32)
        return np.concatenate(logits), np.concatenate(gradients)

    def check_vjp(self, images: np.ndarray) -> None:
        """Fail early, with a clear error, when the served model has no usable `vjp` signature."""
        try:
            self.gradient(images[:1], np.ones((1, self.num_classes), np.float32))
        except PredictorError as exc:
            raise AuditError(f"{self.model} version {self.version}: the 'vjp' signature failed: {exc.message}") from exc


class IterateRecorder:
    """Sees every iterate a Foolbox attack evaluates through the served model, for one batch at a time.

    Foolbox's PGD returns its last iterate; an image fooled at an earlier iterate and pushed back
    later would count as robust. The recorder keeps each image's first fooling iterate (inside the
    ball and [0, 1]) and the lowest true-class margin seen after each call, from the same served
    logits the attack computed anyway: no extra call.
    """

    def __init__(self) -> None:
        self._clean: np.ndarray | None = None

    def reset(self, clean: np.ndarray, labels: np.ndarray, epsilon: float) -> None:
        self._clean, self._labels, self._epsilon = clean, np.asarray(labels, np.int64), float(epsilon)
        self._first = np.array(clean, copy=True)
        self._found = np.zeros(len(clean), bool)
        self._margins: list[np.ndarray] = []

    def see(self, images: np.ndarray, logits: np.ndarray) -> None:
        if self._clean is None or images.shape != self._clean.shape:
            return  # not the batch being attacked (e.g. a probe): nothing to record
        rows = np.arange(len(images))
        others = np.where(np.eye(logits.shape[1], dtype=bool)[self._labels], -np.inf, logits)
        margin = logits[rows, self._labels] - others.max(axis=1)
        best = margin if not self._margins else np.minimum(self._margins[-1], margin)
        self._margins.append(best.astype(np.float32))
        inside = np.abs(images - self._clean).reshape(len(images), -1).max(axis=1) <= self._epsilon + 1e-6
        in_range = (images.reshape(len(images), -1).min(axis=1) >= 0) & (images.reshape(len(images), -1).max(axis=1) <= 1)
        new = (margin < 0) & inside & in_range & ~self._found
        self._first[new] = images[new]
        self._found |= new

    def finish(self, final: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(each image's first fooling iterate, else the attack's final one; margin rows or None)."""
        out = np.where(self._found[:, None, None, None], self._first, final)
        margins = np.stack(self._margins) if self._margins else None
        self._clean = None
        return out.astype(np.float32), margins


def foolbox_model(served: ServedModel, recorder: IterateRecorder | None = None) -> FoolboxModel:
    """A `foolbox.TensorFlowModel` whose forward and gradient both go to the served model."""
    import foolbox as fb
    import tensorflow as tf

    # The served model is a black box to Foolbox's tape (its gradient comes from `vjp`), so its calls
    # run with recording stopped; that also spares a backend's SavedModel functions the tape's
    # variable bookkeeping (a loaded signature whose module was dropped fails under a live tape).
    from tensorflow.python.eager import record

    @tf.custom_gradient  # type: ignore[untyped-decorator]  # TensorFlow has no type information
    def forward(images: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        x = images.numpy()
        with record.stop_recording():
            served_logits = served.logits(x)
            if recorder is not None:
                recorder.see(x, served_logits)
            logits = tf.constant(served_logits)

        def backward(upstream: tf.Tensor) -> tf.Tensor:
            with record.stop_recording():
                return tf.constant(served.gradient(x, upstream.numpy().astype(np.float32)))

        return logits, backward

    return fb.TensorFlowModel(forward, bounds=(0.0, 1.0), device="/CPU:0")
