"""The TF Serving backend: `PredictionService.Predict` and `ModelService.GetModelStatus` over gRPC.

TF Serving has no "list models" RPC, so model names come from the repository's `models.config`
(the file TF Serving itself reads; the front end gets the repository mounted read-only) or from an
explicit `models` list. Model cards are read from the repository for the version TF Serving
reports; without a repository they are derived from `GetModelMetadata` (input size, class count,
tensor keys; classes are then named by index). Versions and their state come from GetModelStatus.

One channel per predictor, and the app builds one predictor per process (after gunicorn forks).
The channel balances calls round robin over every address its target resolves to, so
`dns:///tf-serving:8500` (a headless Service) spreads calls over all TF Serving replicas, the ones
an autoscaler adds included. Every call carries a deadline. gRPC itself retries UNAVAILABLE, with
backoff, under the service config's retry budget (`retryThrottling`): when most calls fail, as on an
overloaded server, retries stop, so the server gets its callers' calls and not a multiple of them.

Every Predict is pinned to the version whose card labels its answer (the newest AVAILABLE one,
the one asked for, or the one a label names), and the version TF Serving says answered is checked
against it: during a rollout replicas serve different versions, and an answer must never be
labelled with another version's class names. Batches larger than TF Serving's `max_batch_size`
(batching.config) are sent in chunks, all pinned to that one version.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from service.predictor import GradcamResult, ModelInfo, Prediction, VjpResult
from training.contract import repository
from training.contract.card import CARD_PATH, read_card
from training.contract.config import TF_SERVING_MAX_BATCH
from training.contract.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidInput,
    ModelNotFound,
    PredictorError,
    SignatureMissing,
)
from training.contract.signatures import check_batch, check_cotangent, signature_keys

_MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a batch of 299x299 gradients is tens of MB
# Readiness asks every model's status at once with this deadline: a probe must answer within its
# own timeout, and the next probe is the retry.
PROBE_DEADLINE_SECONDS = 2.0
# gRPC's retry budget (gRFC A6 retryThrottling), one per channel, so one per process: each failed
# attempt costs a token, each success earns RETRY_TOKEN_RATIO, and nothing is retried while half the
# tokens or fewer are left. An overloaded server therefore sees fewer than RETRY_MAX_TOKENS / 2
# retries in a row of failures, then about one retry per ten successful calls.
RETRY_MAX_TOKENS = 10
RETRY_TOKEN_RATIO = 0.1
# Attempts at a pinned version that replicas answer NOT_FOUND: during a rollout each replica loads
# (and unloads) versions on its own schedule, so one may lack a version another reported AVAILABLE,
# and round robin sends the next attempt to the next replica. Not a retry of work: TF Serving
# refuses before running anything, so these do not spend the budget above.
VERSION_MISS_ATTEMPTS = 3
_SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


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


def service_config(*, retries: int, backoff_seconds: float, max_tokens: float, token_ratio: float) -> str:
    """The channel's gRPC service config: round robin, UNAVAILABLE retried `retries` times with
    exponential backoff (jittered by gRPC), under a retry budget of `max_tokens` and `token_ratio`."""
    config: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "retryThrottling": {"maxTokens": max_tokens, "tokenRatio": token_ratio},
    }
    if retries:  # gRPC refuses a retryPolicy of fewer than 2 attempts
        config["methodConfig"] = [{
            "name": [{"service": service} for service in _SERVICES],
            "retryPolicy": {
                "maxAttempts": retries + 1,
                "initialBackoff": f"{backoff_seconds:.9f}s",
                "maxBackoff": f"{backoff_seconds * 2 ** (retries - 1):.9f}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    return json.dumps(config)


@dataclass(frozen=True)
class _Target:
    """The version a call is pinned to, and that version's card (which labels the answer)."""

    version: int
    card: Mapping[str, Any]


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
        retry_max_tokens: float = RETRY_MAX_TOKENS,
        retry_token_ratio: float = RETRY_TOKEN_RATIO,
        status_ttl_seconds: float = 2.0,
        max_batch_size: int | None = TF_SERVING_MAX_BATCH,
        probe_deadline_seconds: float = PROBE_DEADLINE_SECONDS,
    ):
        """`address`: a gRPC target (`HOST:PORT`, `dns:///HOST:PORT`, `ipv4:A:P,B:P`), balanced round robin.

        `retries`: UNAVAILABLE attempts after the first (gRPC allows at most 4), starting
        `backoff_seconds` apart, within the budget `retry_max_tokens` / `retry_token_ratio`.
        `max_batch_size`: TF Serving's batching.config `max_batch_size` (None: batching is off, no limit).
        """
        if deadline_seconds <= 0:
            raise ValueError(f"expected deadline_seconds > 0, got {deadline_seconds}")
        if probe_deadline_seconds <= 0:
            raise ValueError(f"expected probe_deadline_seconds > 0, got {probe_deadline_seconds}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"expected max_batch_size >= 1 or None, got {max_batch_size}")
        if not 0 <= retries <= 4:  # gRPC caps maxAttempts at 5
            raise ValueError(f"expected retries in 0..4, got {retries}")
        if backoff_seconds <= 0:
            raise ValueError(f"expected backoff_seconds > 0, got {backoff_seconds}")
        if not 0 < retry_max_tokens <= 1000:  # the range gRPC's retryThrottling accepts
            raise ValueError(f"expected retry_max_tokens in (0, 1000], got {retry_max_tokens}")
        if not 0 < retry_token_ratio <= 1:
            raise ValueError(f"expected retry_token_ratio in (0, 1], got {retry_token_ratio}")
        if model_repo is None and not models:
            raise ValueError("expected a model repository or a list of model names: TF Serving cannot list its models")
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.address = address
        self.deadline_seconds = deadline_seconds
        self.repo = Path(model_repo) if model_repo is not None else None
        self._names = tuple(models)
        self.status_ttl_seconds = status_ttl_seconds
        self.max_batch_size = max_batch_size
        self.probe_deadline_seconds = probe_deadline_seconds
        self.service_config = service_config(
            retries=retries, backoff_seconds=backoff_seconds, max_tokens=retry_max_tokens, token_ratio=retry_token_ratio
        )
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.service_config", self.service_config),
                # A service config published in DNS (TXT records) must not replace this one.
                ("grpc.service_config_disable_resolution", 1),
                ("grpc.enable_retries", 1),
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
        """One call with a deadline (the channel retries UNAVAILABLE within it, under the budget)."""
        try:
            return method(request, timeout=self.deadline_seconds)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, what) from None

    def _pinned_rpc(self, method, request, model: str, version: int, what: str):
        """`_rpc` of a request pinned to `version`, tried on up to VERSION_MISS_ATTEMPTS replicas while
        they answer NOT_FOUND; then the cached status is dropped, so the next call resolves afresh."""
        for _ in range(VERSION_MISS_ATTEMPTS):
            try:
                return self._rpc(method, request, what)
            except ModelNotFound as exc:
                missed = exc
        with self._lock:
            self._status.pop(model, None)
        raise self._missing_version_error(model, version, what, missed)

    def _missing_version_error(self, model: str, version: int, what: str, missed: ModelNotFound) -> PredictorError:
        """503 while TF Serving still reports `version` AVAILABLE (its replicas disagree mid-rollout),
        else TF Serving's own NOT_FOUND."""
        from tensorflow_serving.apis import get_model_status_pb2, model_pb2

        request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=model))
        try:
            states = _version_states(self._rpc(self._models.GetModelStatus, request, f"GetModelStatus({model})"))
        except PredictorError:
            return missed
        if states.get(version) != "AVAILABLE":
            return missed
        error = BackendUnavailable(
            f"{what}: TF Serving reports version {version} of {model!r} AVAILABLE, but {VERSION_MISS_ATTEMPTS} "
            f"attempts met replicas without it (replicas load and unload versions at their own pace during a "
            f"rollout); retry. Last answer: {missed.message}",
            details={"grpc_code": "NOT_FOUND"},
        )
        error.grpc_code = "NOT_FOUND"
        return error

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

    def _label_version(self, model: str, label: str) -> int:
        """The version TF Serving's label names, asked of TF Serving (GetModelMetadata resolves labels)."""
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        spec = model_pb2.ModelSpec(name=model, version_label=label)
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
        try:
            response = self._rpc(self._predictions.GetModelMetadata, request, f"GetModelMetadata({model}, {label!r})")
        except InvalidInput as exc:  # TF Serving rejects an unknown version label as INVALID_ARGUMENT
            raise ModelNotFound(f"model {model!r} has no version labelled {label!r} ({exc.message})") from None
        if not response.model_spec.HasField("version"):
            raise PredictorError(
                f"GetModelMetadata({model}, {label!r}): expected TF Serving to name the version label {label!r} "
                "resolves to, got an answer without a version",
                code="version_mismatch",
            )
        return int(response.model_spec.version.value)

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
                return read_card(path)
        return self._card_from_metadata(model, version)

    def _card_from_metadata(self, model: str, version: int) -> Mapping[str, Any]:
        """A minimal card from the served signatures, for a front end that cannot see the repository."""
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        spec = model_pb2.ModelSpec(name=model)
        spec.version.value = version
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
        what = f"GetModelMetadata({model}, version {version})"
        response = self._pinned_rpc(self._predictions.GetModelMetadata, request, model, version, what)
        _check_answered(response, version, what)
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
            "task": model.split("-", maxsplit=1)[0],
            "attention": "attention_map" in gradcam,
            "class_names": [str(i) for i in range(num_classes)],
            "num_classes": num_classes,
            "input_size": [int(image_dims[1]), int(image_dims[2])],
            "pixel_range": [0.0, 1.0],
            "signatures": signatures,
            "version": version,
            "source": "GetModelMetadata",
        }

    def _resolve(self, model: str, version: int | str | None) -> _Target:
        """The version a call on `model` pins and its card: the newest AVAILABLE one for None or
        "latest", the number asked for, or the one a label names (in models.config, else TF Serving's)."""
        info = self._info(self._check_name(model))
        if version is None or version in ("", "latest"):
            return _Target(info.latest, info.card)
        if isinstance(version, str) and not (version.isascii() and version.isdigit()):
            label = version
            labelled = self._labelled_version(model, label)
            if labelled is None or labelled not in info.versions:
                # Not in the file, or it names a version TF Serving does not hold (it keeps its old
                # label then): TF Serving is the authority on what its label names.
                labelled = self._label_version(model, label)
            version = labelled
        version = int(version)
        if version not in info.versions:
            info = self._info(model, fresh=True)  # a version may have loaded since the cached status
            if version not in info.versions:
                raise ModelNotFound(f"model {model!r} has no version {version}; versions: {list(info.versions)}")
        return _Target(version, self._card(model, version))

    def model_card(self, model: str, version: int | str | None = None) -> Mapping[str, Any]:
        return self._resolve(model, version).card

    def _labelled_version(self, model: str, label: str) -> int | None:
        """The version `label` names in the repository's models.config (the file TF Serving reads), if visible."""
        if self.repo is None:
            return None
        try:
            served = self._served_config()
        except (OSError, ValueError):  # TF Serving, not this file, is the authority on labels
            return None
        return served.labels.get(model, {}).get(label) if served is not None else None

    def _call(self, model: str, signature: str, target: _Target, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """One Predict of `signature`, pinned to `target.version`; refused unless that version answered."""
        import tensorflow as tf
        from tensorflow_serving.apis import model_pb2, predict_pb2

        in_keys, _ = signature_keys(target.card, signature)
        if len(in_keys) != len(inputs):
            raise SignatureMissing(f"model {model!r}: expected {signature} inputs {in_keys}, got {len(inputs)} arrays")
        spec = model_pb2.ModelSpec(name=model, signature_name=signature)
        spec.version.value = target.version
        request = predict_pb2.PredictRequest(model_spec=spec)
        for key, array in zip(in_keys, inputs):
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
        what = f"Predict({model}, {signature}, version {target.version})"
        response = self._pinned_rpc(self._predictions.Predict, request, model, target.version, what)
        _check_answered(response, target.version, what)
        return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}

    def _call_in_chunks(
        self, model: str, signature: str, target: _Target, inputs: Sequence[np.ndarray]
    ) -> dict[str, np.ndarray]:
        """`_call` in chunks of at most `max_batch_size` images, outputs concatenated in order.

        Every chunk is pinned to the same version, so a version TF Serving picks up meanwhile (or a
        replica on another version) cannot answer part of one batch.
        """
        size, total = self.max_batch_size, len(inputs[0])
        if size is None or total <= size:
            return self._call(model, signature, target, inputs)
        parts = [
            self._call(model, signature, target, [x[start : start + size] for x in inputs])
            for start in range(0, total, size)
        ]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def predict(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> Prediction:
        target = self._resolve(model, version)
        out = self._call_in_chunks(model, "serving_default", target, [check_batch(images, target.card)])
        return Prediction(model, target.version, out["logits"], out["probabilities"], out["class_id"])

    def gradcam(self, model: str, images: np.ndarray, *, version: int | str | None = None) -> GradcamResult:
        target = self._resolve(model, version)
        out = self._call_in_chunks(model, "gradcam", target, [check_batch(images, target.card)])
        return GradcamResult(
            model, target.version, out["probabilities"], out["class_id"], out["heatmap"], out.get("attention_map"),
            out.get("heatmap_grid"),
        )

    def vjp(
        self, model: str, images: np.ndarray, cotangent: np.ndarray, *, version: int | str | None = None
    ) -> VjpResult:
        target = self._resolve(model, version)
        batch = check_batch(images, target.card)
        cot = check_cotangent(cotangent, batch, target.card)
        out = self._call_in_chunks(model, "vjp", target, [batch, cot])
        return VjpResult(model, target.version, out["logits"], out["gradient"])

    def model_states(self) -> dict[str, str]:
        """Each served model's state: "AVAILABLE" when a version can answer, else its newest version's
        (`LOADING` while TF Serving picks it up), or the gRPC status its GetModelStatus got.

        All models are asked at once with `probe_deadline_seconds` (the channel's retries of
        UNAVAILABLE happen within it), so the answer takes at most one short deadline however many
        models are served.
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


def _check_answered(response, version: int, what: str) -> None:
    """Refuse an answer from another version than `version`, the one whose card labels it."""
    answered = int(response.model_spec.version.value) if response.model_spec.HasField("version") else None
    if answered != version:
        got = f"version {answered}" if answered is not None else "an answer that names no version"
        raise PredictorError(
            f"{what}: expected the answer of version {version}, whose model card labels it, got {got}; "
            "the answer is refused rather than labelled with another version's classes",
            code="version_mismatch",
            details={"expected_version": version, "answered_version": answered},
        )


def _version_states(response) -> dict[int, str]:
    """A GetModelStatusResponse as version -> ModelVersionStatus.State name."""
    from tensorflow_serving.apis import get_model_status_pb2

    return {int(s.version): get_model_status_pb2.ModelVersionStatus.State.Name(s.state) for s in response.model_version_status}


def _newest(states: Mapping[int, str]) -> int:
    """The version that answers unpinned requests: the newest AVAILABLE one, else the newest at all."""
    available = [v for v, state in states.items() if state == "AVAILABLE"]
    return max(available or states)
