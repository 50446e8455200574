"""The embedded backend: SavedModels loaded in-process with `tf.saved_model.load`.

Serves the newest version of each model, notices new versions by polling the repository and
swaps them in without dropping requests (a request holds a reference to the version it started
with), loads lazily and keeps at most `max_loaded` models in memory (least recently used go).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.predictor import (
    GradcamResult,
    InvalidInput,
    ModelInfo,
    ModelNotFound,
    Prediction,
    SignatureMissing,
    VjpResult,
    check_batch,
)
from training import repository


@dataclass(frozen=True)
class _Loaded:
    version: int
    card: Mapping[str, Any]
    signatures: Mapping[str, Any]


class EmbeddedPredictor:
    """A Predictor over a model repository on local disk."""

    backend_name = "embedded"

    def __init__(self, model_repo: str | Path, *, max_loaded: int = 8, poll_seconds: float = 30.0):
        if max_loaded < 1:
            raise ValueError(f"expected max_loaded >= 1, got {max_loaded}")
        self.repo = Path(model_repo)
        self.max_loaded = max_loaded
        self.poll_seconds = poll_seconds
        self._lock = threading.RLock()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self._loaded: OrderedDict[tuple[str, int], _Loaded] = OrderedDict()
        self._index: dict[str, repository.RepoModel] = {}
        self._scanned_at = -float("inf")

    # -- the repository --------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the repository now (new versions become the default for new requests)."""
        models = {m.name: m for m in repository.list_models(self.repo)}
        with self._lock:
            self._index = models
            self._scanned_at = time.monotonic()

    def _models(self) -> dict[str, repository.RepoModel]:
        if time.monotonic() - self._scanned_at >= self.poll_seconds:
            self.refresh()
        return self._index

    def list_models(self) -> tuple[ModelInfo, ...]:
        return tuple(self._info(m) for m in self._models().values())

    def model_info(self, model: str) -> ModelInfo:
        return self._info(self._entry(model))

    def _info(self, entry: repository.RepoModel) -> ModelInfo:
        return ModelInfo(name=entry.name, versions=entry.versions, latest=entry.latest, card=entry.card)

    def _entry(self, model: str) -> repository.RepoModel:
        # Names are looked up in the index read from the repository, never joined into a path.
        entry = self._models().get(model)
        if entry is None:
            self.refresh()
            entry = self._index.get(model)
        if entry is None:
            known = ", ".join(sorted(self._index)) or "none"
            raise ModelNotFound(f"no model named {model!r}; served models: {known}")
        return entry

    def _version(self, entry: repository.RepoModel, version: int | str | None) -> int:
        if version is None or version == "" or version == "latest":
            return entry.latest
        if isinstance(version, str):
            if not version.isdigit():
                raise ModelNotFound(f"model {entry.name!r} has no version labelled {version!r}; versions: {list(entry.versions)}")
            version = int(version)
        if version not in entry.versions:
            raise ModelNotFound(f"model {entry.name!r} has no version {version}; versions: {list(entry.versions)}")
        return int(version)

    def model_card(self, model: str, version: int | str | None = None) -> Mapping[str, Any]:
        entry = self._entry(model)
        v = self._version(entry, version)
        return entry.card if v == entry.latest else repository.read_card(entry.path / str(v))

    # -- loading ---------------------------------------------------------------------------
    def _load(self, model: str, version: int | str | None) -> tuple[str, _Loaded]:
        entry = self._entry(model)
        v = self._version(entry, version)
        key = (entry.name, v)
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None:
                self._loaded.move_to_end(key)
                return entry.name, hit
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one thread loads a version; the others wait for it, not for every model
            with self._lock:
                hit = self._loaded.get(key)
            if hit is None:
                import tensorflow as tf

                path = entry.path / str(v)
                module = tf.saved_model.load(str(path))
                hit = _Loaded(v, repository.read_card(path), dict(module.signatures))
                with self._lock:
                    self._loaded[key] = hit
                    while len(self._loaded) > self.max_loaded:
                        self._loaded.popitem(last=False)  # in-flight calls keep their own reference
        return entry.name, hit

    def loaded_count(self) -> int:
        with self._lock:
            return len(self._loaded)

    def _call(self, loaded: _Loaded, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        fn = loaded.signatures.get(signature)
        if fn is None:
            raise SignatureMissing(
                f"model version {loaded.version} has no {signature!r} signature; it exports {sorted(loaded.signatures)}"
            )
        import tensorflow as tf

        out = fn(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    # -- the signatures ----------------------------------------------------------------------
    def predict(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> Prediction:
        name, loaded = self._load(model, version)
        out = self._call(loaded, "serving_default", image=check_batch(images, loaded.card))
        return Prediction(name, loaded.version, out["logits"], out["probabilities"], out["class_id"])

    def gradcam(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> GradcamResult:
        name, loaded = self._load(model, version)
        out = self._call(loaded, "gradcam", image=check_batch(images, loaded.card))
        return GradcamResult(
            name, loaded.version, out["probabilities"], out["class_id"], out["heatmap"], out.get("attention_map")
        )

    def vjp(
        self, model: str, images: np.ndarray, cotangent: np.ndarray, *, version: int | str | None = None
    ) -> VjpResult:
        name, loaded = self._load(model, version)
        batch = check_batch(images, loaded.card)
        cot = np.asarray(cotangent, dtype=np.float32)
        k = int(loaded.card["num_classes"])
        if cot.shape != (batch.shape[0], k):
            raise InvalidInput(f"expected a cotangent of shape [{batch.shape[0]}, {k}], got {list(cot.shape)}")
        out = self._call(loaded, "vjp", image=batch, cotangent=cot)
        return VjpResult(name, loaded.version, out["logits"], out["gradient"])

    def ready(self) -> bool:
        return bool(self._models())

    def close(self) -> None:
        with self._lock:
            self._loaded.clear()
