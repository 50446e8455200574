"""The embedded backend: SavedModels loaded in-process with `tf.saved_model.load`.

Serves the newest version of each model, or one pinned by number or by a version label from the
repository's `models.config` (the labels TF Serving reads); notices new versions by polling the
repository and swaps them in without dropping requests (a request holds a reference to the version
it started with); loads lazily and keeps at most `max_loaded` models in memory (least recently used go).

Polling is lazy by default (the index is re-read on the first call after `poll_seconds`);
`start_polling()` adds a background thread that also loads a new version of a model in use
*before* requests switch to it, so no request waits for the load, then drops the old one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.predictor import GradcamResult, ModelInfo, Prediction, VjpResult
from training.contract import repository
from training.contract.card import read_card
from training.contract.errors import ModelNotFound, SignatureMissing
from training.contract.signatures import check_batch, check_cotangent, signature_keys


@dataclass(frozen=True)
class _Loaded:
    version: int
    card: Mapping[str, Any]
    signatures: Mapping[str, Any]
    # The loaded module owns the variables the signatures read: without a reference to it they
    # are freed, and a call under a live GradientTape fails ("variables which have been deleted").
    module: Any = None


# An unknown model name rescans the repository at most this often: a client naming models that do
# not exist must not turn every request into a directory walk.
RESCAN_SECONDS = 5.0


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
        self._labels: dict[str, dict[str, int]] = {}
        self._scanned_at = -float("inf")
        self._discovered_at = -float("inf")
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- the repository --------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the repository now (new versions become the default for new requests)."""
        models = {m.name: m for m in repository.list_models(self.repo)}
        labels = self._read_labels()
        with self._lock:
            self._index = models
            self._labels = labels
            self._scanned_at = time.monotonic()

    def _read_labels(self) -> dict[str, dict[str, int]]:
        try:
            return repository.version_labels(self.repo)
        except (OSError, ValueError):  # a hand-edited models.config may be broken; numbers still work
            logging.getLogger(__name__).exception("reading version labels in %s failed; serving without labels", self.repo)
            return {}

    def _models(self) -> dict[str, repository.RepoModel]:
        # With the background poller running, only it replaces the index (after loading the new version).
        if self._poller is None and time.monotonic() - self._scanned_at >= self.poll_seconds:
            self.refresh()
        return self._index

    def swap_in_new_versions(self) -> list[tuple[str, int]]:
        """Load the newest version of every model whose previous newest is loaded, then switch to it.

        The index is only replaced after the new versions are loaded, so requests never wait for a
        load; the superseded versions leave the cache (requests still using them keep a reference).
        Returns the (model, version) pairs swapped in.
        """
        fresh = {m.name: m for m in repository.list_models(self.repo)}
        labels = self._read_labels()
        with self._lock:
            current = dict(self._index)
            loaded = set(self._loaded)
        swapped = []
        for name, entry in fresh.items():
            old = current.get(name)
            if old is None or old.latest == entry.latest or (name, old.latest) not in loaded:
                continue
            self._load_version(entry, entry.latest)
            swapped.append((name, entry.latest))
        with self._lock:
            self._index = fresh
            self._labels = labels
            self._scanned_at = time.monotonic()
            for name, _ in swapped:
                self._loaded.pop((name, current[name].latest), None)
        return swapped

    def start_polling(self) -> None:
        """Poll the repository every `poll_seconds` in a daemon thread until `close()`."""
        if self._poller is not None:
            return
        self.refresh()

        def run() -> None:
            while not self._stop.wait(self.poll_seconds):
                try:
                    self.swap_in_new_versions()
                except Exception:  # a half-written or broken version must not kill the poller
                    logging.getLogger(__name__).exception("polling %s failed; serving the versions loaded", self.repo)

        self._poller = threading.Thread(target=run, name="medrobust-repo-poller", daemon=True)
        self._poller.start()

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
            entry = self._discover(model)
        if entry is None:
            known = ", ".join(sorted(self._index)) or "none"
            raise ModelNotFound(f"no model named {model!r}; served models: {known}")
        return entry

    def _discover(self, model: str) -> repository.RepoModel | None:
        """Look for a model added to the repository since the last scan, at most once per
        RESCAN_SECONDS however many requests name unknown models. Only new models are added: a
        known model keeps the version it serves until the poller has loaded its newer one."""
        with self._lock:
            now = time.monotonic()
            if now - self._discovered_at < RESCAN_SECONDS:
                return None
            self._discovered_at = now
        fresh = {m.name: m for m in repository.list_models(self.repo)}
        with self._lock:
            added = {name: entry for name, entry in fresh.items() if name not in self._index}
            if added:
                self._index = {**self._index, **added}
            return self._index.get(model)

    def _version(self, entry: repository.RepoModel, version: int | str | None) -> int:
        if version is None or version in ("", "latest"):
            return entry.latest
        if isinstance(version, str):
            if not version.isdigit():
                labels = self._labels.get(entry.name, {})
                if labels.get(version) not in entry.versions:
                    raise ModelNotFound(
                        f"model {entry.name!r} has no version labelled {version!r}; labels: {labels or 'none'} "
                        f"(set in {repository.MODELS_CONFIG}), versions: {list(entry.versions)}"
                    )
                return labels[version]
            version = int(version)
        if version not in entry.versions:
            raise ModelNotFound(f"model {entry.name!r} has no version {version}; versions: {list(entry.versions)}")
        return int(version)

    def model_card(self, model: str, version: int | str | None = None) -> Mapping[str, Any]:
        entry = self._entry(model)
        v = self._version(entry, version)
        return entry.card if v == entry.latest else read_card(entry.path / str(v))

    # -- loading ---------------------------------------------------------------------------
    def _load(self, model: str, version: int | str | None) -> tuple[str, _Loaded]:
        entry = self._entry(model)
        return entry.name, self._load_version(entry, self._version(entry, version))

    def _load_version(self, entry: repository.RepoModel, v: int) -> _Loaded:
        key = (entry.name, v)
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None:
                self._loaded.move_to_end(key)
                return hit
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one thread loads a version; the others wait for it, not for every model
            with self._lock:
                hit = self._loaded.get(key)
            if hit is None:
                import tensorflow as tf

                path = entry.path / str(v)
                module = tf.saved_model.load(str(path))
                hit = _Loaded(v, read_card(path), dict(module.signatures), module)
                with self._lock:
                    self._loaded[key] = hit
                    while len(self._loaded) > self.max_loaded:
                        self._loaded.popitem(last=False)  # in-flight calls keep their own reference
        return hit

    def loaded_count(self) -> int:
        with self._lock:
            return len(self._loaded)

    def _call(self, loaded: _Loaded, signature: str, *inputs: np.ndarray) -> dict[str, np.ndarray]:
        fn = loaded.signatures.get(signature)
        if fn is None:
            raise SignatureMissing(
                f"model version {loaded.version} has no {signature!r} signature; it exports {sorted(loaded.signatures)}"
            )
        import tensorflow as tf

        keys, _ = signature_keys(loaded.card, signature)
        if len(keys) != len(inputs):
            raise SignatureMissing(f"expected {signature} inputs {keys}, got {len(inputs)} arrays")
        out = fn(**{k: tf.convert_to_tensor(v) for k, v in zip(keys, inputs)})
        return {k: v.numpy() for k, v in out.items()}

    # -- the signatures ----------------------------------------------------------------------
    def predict(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> Prediction:
        name, loaded = self._load(model, version)
        out = self._call(loaded, "serving_default", check_batch(images, loaded.card))
        return Prediction(name, loaded.version, out["logits"], out["probabilities"], out["class_id"])

    def gradcam(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> GradcamResult:
        name, loaded = self._load(model, version)
        out = self._call(loaded, "gradcam", check_batch(images, loaded.card))
        return GradcamResult(
            name, loaded.version, out["probabilities"], out["class_id"], out["heatmap"], out.get("attention_map"),
            out.get("heatmap_grid"),
        )

    def vjp(
        self, model: str, images: np.ndarray, cotangent: np.ndarray, *, version: int | str | None = None
    ) -> VjpResult:
        name, loaded = self._load(model, version)
        batch = check_batch(images, loaded.card)
        cot = check_cotangent(cotangent, batch, loaded.card)
        out = self._call(loaded, "vjp", batch, cot)
        return VjpResult(name, loaded.version, out["logits"], out["gradient"])

    def model_states(self) -> dict[str, str]:
        """Each model in the repository: "AVAILABLE" when a version of it is loaded, else "START" (in
        TF Serving's terms: known, not loaded yet; it loads on first use). When none is loaded, the
        first is loaded here, so an AVAILABLE model means one that answers without waiting."""
        models = self._models()
        if models and self.loaded_count() == 0:
            self._load(next(iter(models)), None)
        with self._lock:
            loaded = {name for name, _ in self._loaded}
        return {name: "AVAILABLE" if name in loaded else "START" for name in models}

    def ready(self) -> bool:
        """The repository holds a model and at least one is loaded (the first is loaded if none is)."""
        return "AVAILABLE" in self.model_states().values()

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        with self._lock:
            self._loaded.clear()
