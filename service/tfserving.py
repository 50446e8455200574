"""The TF Serving backend: `PredictionService.Predict` and `ModelService.GetModelStatus` over gRPC.

TF Serving has no "list models" RPC, so model names come from the repository's `models.config`
(the file TF Serving itself reads; the front end gets the repository mounted read-only) or from an
explicit `models` list. Model cards are read from the repository for the version TF Serving
reports; without a repository they are derived from `GetModelMetadata` (input size, class count,
tensor keys; classes are then named by index). Versions and their state come from GetModelStatus.

One channel per predictor, and the app builds one predictor per process (after gunicorn forks).
Every call carries a deadline; UNAVAILABLE is retried with exponential backoff. Batches larger than
TF Serving's `max_batch_size` (batching.config) are sent in chunks, all answered by one version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from service.predictor import GradcamResult, ModelInfo, Prediction, VjpResult
from training.contract.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidInput,
    ModelNotFound,
    PredictorError,
    SignatureMissing,
)
from training.contract.config import TF_SERVING_MAX_BATCH
from training.contract.signatures import check_batch, check_cotangent, signature_keys
from training.contract import repository
from training.contract.card import CARD_PATH

_MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a batch of 299x299 gradients is tens of MB
# Readiness asks every model's status at once with this deadline and no retry: a probe must answer
# within its own timeout, and the next probe is the retry.
PROBE_DEADLINE_SECONDS = 2.0


def map_rpc_error(exc: grpc.RpcError, what: str) -> PredictorError:
    """A gRPC failure as the predictor error the front end answers (NOT_FOUND -> 404, ...)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    detail = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    message = f"{what}: TF Serving answered {code.name}: {detail}"
    cls: type[PredictorError] = {
        grpc.StatusCode.NOT_FOUND: ModelNotFound,
        grpc.StatusCode.UNAVAILABLE: BackendUnavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: BackendTimeout,
        grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    }.get(code, PredictorError)
    error = cls(message, details={"grpc_code": code.name})
    error.grpc_code = code.name  # read by service.metrics for the backend error counter
    return error


@dataclass(frozen=True)
class _ServedConfig:
    """What the front end needs from models.config: the served names and each model's labels."""

    names: tuple[str, ...]
    labels: Mapping[str, Mapping[str, int]]


class TFServingPredictor:
    """A Predictor over TF Serving's gRPC API."""

    backend_name = "tfserving"

    def __init__(
        self,
        address: str,
        *,
        deadline_seconds: float = 10.0,
        model_repo: str | Path | None = None,
        models: Sequence[str] = (),
        retries: int = 3,
        backoff_seconds: float = 0.1,
        status_ttl_seconds: float = 2.0,
        max_batch_size: int | None = TF_SERVING_MAX_BATCH,
        probe_deadline_seconds: float = PROBE_DEADLINE_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """`max_batch_size`: TF Serving's batching.config `max_batch_size` (None: batching is off, no limit)."""
        if deadline_seconds <= 0:
            raise ValueError(f"expected deadline_seconds > 0, got {deadline_seconds}")
        if probe_deadline_seconds <= 0:
            raise ValueError(f"expected probe_deadline_seconds > 0, got {probe_deadline_seconds}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"expected max_batch_size >= 1 or None, got {max_batch_size}")
        if retries < 0:
            raise ValueError(f"expected retries >= 0, got {retries}")
        if model_repo is None and not models:
            raise ValueError("expected a model repository or a list of model names: TF Serving cannot list its models")
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.address = address
        self.deadline_seconds = deadline_seconds
        self.repo = Path(model_repo) if model_repo is not None else None
        self._names = tuple(models)
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.status_ttl_seconds = status_ttl_seconds
        self.max_batch_size = max_batch_size
        self.probe_deadline_seconds = probe_deadline_seconds
        self._sleep = sleep
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ],
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._lock = threading.Lock()
        self._status: dict[str, tuple[float, ModelInfo]] = {}
        self._cards: dict[tuple[str, int], Mapping[str, Any]] = {}
        self._served: tuple[tuple[int, int, int], _ServedConfig] | None = None

    # -- gRPC plumbing -------------------------------------------------------------------------
    def _rpc(self, method, request, what: str):
        """One call with a deadline; UNAVAILABLE (server restarting, connection refused) is retried."""
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.deadline_seconds)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    self._sleep(self.backoff_seconds * (2**attempt))
                    continue
                raise map_rpc_error(exc, what) from None
        raise AssertionError("unreachable")

    # -- models, versions, cards ------------------------------------------------------------------
    def model_names(self) -> tuple[str, ...]:
        """The served model names: the explicit list, else the repository's models.config."""
        if self._names:
            return self._names
        assert self.repo is not None
        served = self._served_config()
        if served is not None:
            return served.names
        return tuple(m.name for m in repository.list_models(self.repo))

    def _served_config(self) -> _ServedConfig | None:
        """models.config's names and labels; None without the file.

        Every call reads them, so the file is parsed again only when it changes (its modification
        time, size or inode: exports replace it atomically). Parsing it took 0.2 ms per read for
        two models, twice per prediction.
        """
        assert self.repo is not None
        try:
            stat = (self.repo / repository.MODELS_CONFIG).stat()
        except FileNotFoundError:
            return None
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if self._served is not None and self._served[0] == key:
                return self._served[1]
        config = repository.read_models_config(self.repo)
        if config is None:  # removed since the stat
            return None
        served = _ServedConfig(tuple(c.name for c in config.model_config_list.config), repository.config_labels(config))
        with self._lock:
            self._served = (key, served)
        return served

    def _check_name(self, model: str) -> str:
        names = self.model_names()
        if model not in names:
            raise ModelNotFound(f"no model named {model!r}; served models: {', '.join(names) or 'none'}")
        return model

    def _fetch_info(self, model: str) -> ModelInfo:
        from tensorflow_serving.apis import get_model_status_pb2, model_pb2

        request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=model))
        response = self._rpc(self._models.GetModelStatus, request, f"GetModelStatus({model})")
        states = _version_states(response)
        available = tuple(sorted(v for v, state in states.items() if state == "AVAILABLE"))
        if not states:
            raise ModelNotFound(f"TF Serving holds no version of model {model!r}")
        latest = _newest(states)
        return ModelInfo(model, available, latest, self._card(model, latest), states[latest])

    def _info(self, model: str, *, fresh: bool = False) -> ModelInfo:
        now = time.monotonic()
        with self._lock:
            cached = self._status.get(model)
        if cached is not None and not fresh and now - cached[0] < self.status_ttl_seconds:
            return cached[1]
        info = self._fetch_info(model)
        with self._lock:
            self._status[model] = (now, info)
        return info

    def list_models(self) -> tuple[ModelInfo, ...]:
        return tuple(self._info(name, fresh=True) for name in self.model_names())

    def model_info(self, model: str) -> ModelInfo:
        return self._info(self._check_name(model), fresh=True)

    def _card(self, model: str, version: int) -> Mapping[str, Any]:
        key = (model, version)
        with self._lock:
            card = self._cards.get(key)
        if card is None:
            card = self._read_card(model, version)
            with self._lock:
                self._cards[key] = card  # a version's card never changes
        return card

    def _read_card(self, model: str, version: int) -> Mapping[str, Any]:
        if self.repo is not None:
            path = self.repo / model / str(version)
            if (path / CARD_PATH).is_file():
                return repository.read_card(path)
        return self._card_from_metadata(model, version)

    def _card_from_metadata(self, model: str, version: int) -> Mapping[str, Any]:
        """A minimal card from the served signatures, for a front end that cannot see the repository."""
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        spec = model_pb2.ModelSpec(name=model)
        spec.version.value = version
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
        response = self._rpc(self._predictions.GetModelMetadata, request, f"GetModelMetadata({model})")
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        # Metadata maps are unordered; the contract's input order is the image first, then the rest.
        signatures = {
            name: {"inputs": sorted(d.inputs, key=lambda k: (k != "image", k)), "outputs": sorted(d.outputs)}
            for name, d in defs.signature_def.items()
            if not name.startswith("__")
        }
        serving = defs.signature_def["serving_default"]
        image_dims = [d.size for d in serving.inputs["image"].tensor_shape.dim]
        num_classes = int(serving.outputs["probabilities"].tensor_shape.dim[-1].size)
        gradcam = signatures.get("gradcam", {}).get("outputs", [])
        return {
            "name": model,
            "task": model.split("-")[0],
            "attention": "attention_map" in gradcam,
            "class_names": [str(i) for i in range(num_classes)],
            "num_classes": num_classes,
            "input_size": [int(image_dims[1]), int(image_dims[2])],
            "pixel_range": [0.0, 1.0],
            "signatures": signatures,
            "version": version,
            "source": "GetModelMetadata",
        }

    def _resolve(self, model: str, version: int | str | None) -> tuple[ModelInfo, int | str | None]:
        info = self._info(self._check_name(model))
        if version is None or version == "" or version == "latest":
            return info, None
        if isinstance(version, str) and version.isdigit():
            version = int(version)
        if isinstance(version, int) and version not in info.versions:
            info = self._info(model, fresh=True)  # a version may have loaded since the cached status
            if version not in info.versions:
                raise ModelNotFound(f"model {model!r} has no version {version}; versions: {list(info.versions)}")
        return info, version

    def model_card(self, model: str, version: int | str | None = None) -> Mapping[str, Any]:
        return self._prepare(model, version)[2]

    # -- the signatures ----------------------------------------------------------------------------
    def _prepare(self, model: str, version: int | str | None) -> tuple[ModelInfo, int | str | None, Mapping[str, Any]]:
        info, pinned = self._resolve(model, version)
        if isinstance(pinned, str):  # TF Serving resolves the label; the card is the labelled version's if known
            labelled = self._labelled_version(model, pinned)
            return info, pinned, (self._card(model, labelled) if labelled is not None else info.card)
        return info, pinned, (self._card(model, pinned) if isinstance(pinned, int) else info.card)

    def _labelled_version(self, model: str, label: str) -> int | None:
        """The version `label` names in the repository's models.config (the file TF Serving reads), if visible."""
        if self.repo is None:
            return None
        try:
            served = self._served_config()
        except (OSError, ValueError):  # TF Serving, not this file, is the authority on labels
            return None
        return served.labels.get(model, {}).get(label) if served is not None else None

    def _call(
        self, model: str, signature: str, prepared: tuple[ModelInfo, int | str | None, Mapping[str, Any]],
        inputs: Sequence[np.ndarray],
    ) -> tuple[int, dict[str, np.ndarray]]:
        import tensorflow as tf
        from tensorflow_serving.apis import model_pb2, predict_pb2

        info, pinned, card = prepared
        in_keys, _ = signature_keys(card, signature)
        if len(in_keys) != len(inputs):
            raise SignatureMissing(f"model {model!r}: expected {signature} inputs {in_keys}, got {len(inputs)} arrays")
        spec = model_pb2.ModelSpec(name=model, signature_name=signature)
        if isinstance(pinned, int):
            spec.version.value = pinned
        elif isinstance(pinned, str):
            spec.version_label = pinned
        request = predict_pb2.PredictRequest(model_spec=spec)
        for key, array in zip(in_keys, inputs):
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
        try:
            response = self._rpc(self._predictions.Predict, request, f"Predict({model}, {signature})")
        except InvalidInput as exc:
            if isinstance(pinned, str):  # TF Serving rejects an unknown version label as INVALID_ARGUMENT
                raise ModelNotFound(f"model {model!r} has no version labelled {pinned!r} ({exc.message})") from None
            raise
        outputs = {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
        answered = int(response.model_spec.version.value) if response.model_spec.HasField("version") else info.latest
        return answered, outputs

    def _call_in_chunks(
        self, model: str, signature: str, prepared: tuple[ModelInfo, int | str | None, Mapping[str, Any]],
        inputs: Sequence[np.ndarray],
    ) -> tuple[int, dict[str, np.ndarray]]:
        """`_call` in chunks of at most `max_batch_size` images, outputs concatenated in order.

        The version that answers the first chunk is pinned for the rest: a version TF Serving picks
        up (or a label moved) meanwhile must not answer part of one batch.
        """
        size, total = self.max_batch_size, len(inputs[0])
        if size is None or total <= size:
            return self._call(model, signature, prepared, inputs)
        version, first = self._call(model, signature, prepared, [x[:size] for x in inputs])
        pinned = (prepared[0], version, prepared[2])
        parts = [first] + [
            self._call(model, signature, pinned, [x[start : start + size] for x in inputs])[1]
            for start in range(size, total, size)
        ]
        return version, {key: np.concatenate([part[key] for part in parts]) for key in first}

    def predict(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> Prediction:
        prepared = self._prepare(model, version)
        v, out = self._call_in_chunks(model, "serving_default", prepared, [check_batch(images, prepared[2])])
        return Prediction(model, v, out["logits"], out["probabilities"], out["class_id"])

    def gradcam(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> GradcamResult:
        prepared = self._prepare(model, version)
        v, out = self._call_in_chunks(model, "gradcam", prepared, [check_batch(images, prepared[2])])
        return GradcamResult(model, v, out["probabilities"], out["class_id"], out["heatmap"], out.get("attention_map"))

    def vjp(
        self, model: str, images: np.ndarray, cotangent: np.ndarray, *, version: int | str | None = None
    ) -> VjpResult:
        prepared = self._prepare(model, version)
        card = prepared[2]
        batch = check_batch(images, card)
        cot = check_cotangent(cotangent, batch, card)
        v, out = self._call_in_chunks(model, "vjp", prepared, [batch, cot])
        return VjpResult(model, v, out["logits"], out["gradient"])

    def model_states(self) -> dict[str, str]:
        """Each served model's state: "AVAILABLE" when a version can answer, else its newest version's
        (`LOADING` while TF Serving picks it up), or the gRPC status its GetModelStatus got.

        All models are asked at once with `probe_deadline_seconds` and no retry, so the answer
        takes at most one short deadline however many models are served.
        """
        from tensorflow_serving.apis import get_model_status_pb2, model_pb2

        calls = {
            name: self._models.GetModelStatus.future(
                get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=name)),
                timeout=self.probe_deadline_seconds,
            )
            for name in self.model_names()
        }
        states = {}
        for name, call in calls.items():
            try:
                versions = _version_states(call.result())
            except grpc.RpcError as exc:
                states[name] = exc.code().name
                continue
            states[name] = versions[_newest(versions)] if versions else grpc.StatusCode.NOT_FOUND.name
        return states

    def ready(self) -> bool:
        """TF Serving answers and holds at least one AVAILABLE model version."""
        try:
            return "AVAILABLE" in self.model_states().values()
        except PredictorError:
            return False

    def loaded_count(self) -> int:
        with self._lock:
            cached = [info for _, info in self._status.values()]
        return sum(len(info.versions) for info in cached)

    def close(self) -> None:
        self._channel.close()


def _version_states(response) -> dict[int, str]:
    """A GetModelStatusResponse as version -> ModelVersionStatus.State name."""
    from tensorflow_serving.apis import get_model_status_pb2

    return {int(s.version): get_model_status_pb2.ModelVersionStatus.State.Name(s.state) for s in response.model_version_status}


def _newest(states: Mapping[int, str]) -> int:
    """The version that answers unpinned requests: the newest AVAILABLE one, else the newest at all."""
    available = [v for v, state in states.items() if state == "AVAILABLE"]
    return max(available or states)
