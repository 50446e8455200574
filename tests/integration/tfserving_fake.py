"""A stand-in for TF Serving: the real gRPC protos over real SavedModels, in-process on 127.0.0.1.

No TF Serving binary runs here, so this implements what the front end and the audit call:
`PredictionService.Predict` (and `GetModelMetadata`) and `ModelService.GetModelStatus`, with
TF Serving's behaviour where it matters: models from a ModelServerConfig text proto (the
repository's `models.config`), the newest `num_versions` versions loaded, version labels, and
the status codes it answers (NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for an
unknown label or bad inputs). `faults()` injects delays and failures for the error-mapping tests.

Batching as `--enable_batching --batching_parameters_file` sets it up: by default the deployed
deploy/tf-serving/batching.config, so a test meets the limit a deployment has. TF Serving's batch
scheduler refuses a request larger than `max_batch_size` (its `input_batch_size_limit`; 1000 when
unset) with INVALID_ARGUMENT "Task size N is larger than maximum input batch size M", and it does so
with `enable_large_batch_splitting` too: splitting only cuts what is accepted into smaller
execution batches (bundle_factory_util.h sets the input limit to max_batch_size either way).
`batching_config=None` is TF Serving without --enable_batching: no limit.

`loading()` reports models as GetModelStatus does while TF Serving loads them; `rollout()` makes a
new version the newest mid-way, as a pick-up does; `ignoring_pins()` answers every Predict from the
newest version whatever the request pinned, naming the version that did answer (as a proxy or a
server that drops the pin would); `calls` counts the RPCs per method, every attempt included;
`predicted` the Predicts answered per model (which of several clients called, when each uses its own).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.tf_serving_protos import DEPLOYED_BATCHING, batching_parameters

# SharedBatchScheduler::QueueOptions' input_batch_size_limit when batching.config sets no max_batch_size.
SCHEDULER_DEFAULT_LIMIT = 1000


@dataclass
class _Servable:
    name: str
    version: int
    signatures: dict[str, Any]


@dataclass
class _Rollout:
    model: str
    after_predicts: int
    answered: list[tuple[int, int]] = field(default_factory=list)
    version: int | None = None  # the version rolled out, once it is


@dataclass
class Faults:
    """What the next calls suffer: a delay, or an immediate error status (optionally only `count` times,
    optionally only calls of `methods`)."""

    delay_seconds: float = 0.0
    status: grpc.StatusCode | None = None
    count: int | None = None  # None: every call
    methods: frozenset[str] | None = None  # None: every method
    calls: int = field(default=0)


class FakeTFServing:
    """Loads the models a ModelServerConfig lists and serves them over gRPC."""

    def __init__(self, models_config: Path, *, batching_config: Path | None = DEPLOYED_BATCHING):
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        config = text_format.Parse(models_config.read_text(), model_server_config_pb2.ModelServerConfig())
        self.servables: dict[str, dict[int, _Servable]] = {}
        self.labels: dict[str, dict[str, int]] = {}
        for entry in config.model_config_list.config:
            self.servables[entry.name] = self._load(entry)
            self.labels[entry.name] = dict(entry.version_labels)
        self.max_batch_size: int | None = None
        if batching_config is not None:
            batching = batching_parameters(batching_config.read_text())
            self.max_batch_size = batching.max_batch_size.value if batching.HasField("max_batch_size") else SCHEDULER_DEFAULT_LIMIT
        self.calls: Counter[str] = Counter()
        self.predicted: Counter[str] = Counter()
        self._loading: set[str] = set()
        self._ignore_pins = False
        self._rollouts: list[_Rollout] = []
        self._faults = Faults()
        self._faults_lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.address: str | None = None

    @staticmethod
    def _load(entry) -> dict[int, _Servable]:
        import tensorflow as tf

        base = Path(entry.base_path)
        versions = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())
        policy = entry.model_version_policy
        if policy.HasField("specific"):
            versions = [v for v in versions if v in set(policy.specific.versions)]
        else:
            keep = policy.latest.num_versions if policy.HasField("latest") else 1
            versions = versions[-(keep or 1):]
        return {v: _Servable(entry.name, v, dict(tf.saved_model.load(str(base / str(v))).signatures)) for v in versions}

    # -- fault injection ---------------------------------------------------------------------
    @contextlib.contextmanager
    def faults(
        self, *, delay_seconds: float = 0.0, status: grpc.StatusCode | None = None, count: int | None = None,
        methods: tuple[str, ...] | None = None,
    ) -> Iterator[Faults]:
        """Within the block, calls (of `methods` only, when given) are delayed and/or fail with `status`
        (the first `count` of them only)."""
        with self._faults_lock:
            self._faults = Faults(delay_seconds, status, count, frozenset(methods) if methods is not None else None)
            active = self._faults
        try:
            yield active
        finally:
            with self._faults_lock:
                self._faults = Faults()

    def _suffer(self, method: str, context: grpc.ServicerContext) -> None:
        with self._faults_lock:
            self.calls[method] += 1
            f = self._faults
            if f.methods is not None and method not in f.methods:
                return
            f.calls += 1
            applies = f.count is None or f.calls <= f.count
        if not applies:
            return
        if f.delay_seconds:
            time.sleep(f.delay_seconds)
        if f.status is not None:
            context.abort(f.status, f"injected {f.status.name}")

    # -- what TF Serving is loading ----------------------------------------------------------------
    @contextlib.contextmanager
    def loading(self, *models: str) -> Iterator[None]:
        """Within the block, `models` are being loaded: GetModelStatus reports their versions LOADING
        and Predict cannot reach them (NOT_FOUND, as for a servable not ready yet)."""
        with self._faults_lock:
            self._loading.update(models)
        try:
            yield
        finally:
            with self._faults_lock:
                self._loading.difference_update(models)

    @contextlib.contextmanager
    def rollout(self, model: str, *, after_predicts: int) -> Iterator[list[tuple[int, int]]]:
        """After the next `after_predicts` Predicts of `model`, a new version (the newest one's graph
        under the next number) becomes the newest; removed again after the block. Yields the
        (version, batch size) of every Predict of `model` answered within the block."""
        rollout = _Rollout(model, after_predicts)
        with self._faults_lock:
            self._rollouts.append(rollout)
        try:
            yield rollout.answered
        finally:
            with self._faults_lock:
                self._rollouts.remove(rollout)
                if rollout.version is not None:
                    del self.servables[model][rollout.version]

    @contextlib.contextmanager
    def ignoring_pins(self) -> Iterator[None]:
        """Within the block, Predict answers from the model's newest version whatever version the
        request pinned; the response names the version that answered."""
        with self._faults_lock:
            self._ignore_pins = True
        try:
            yield
        finally:
            with self._faults_lock:
                self._ignore_pins = False

    def _answered(self, servable: _Servable, batch: int) -> None:
        with self._faults_lock:
            self.predicted[servable.name] += 1
            for rollout in self._rollouts:
                if rollout.model != servable.name:
                    continue
                rollout.answered.append((servable.version, batch))
                if len(rollout.answered) == rollout.after_predicts:
                    versions = self.servables[rollout.model]
                    newest = versions[max(versions)]
                    rollout.version = newest.version + 1
                    versions[rollout.version] = _Servable(newest.name, rollout.version, newest.signatures)

    # -- resolving a ModelSpec like TF Serving ----------------------------------------------------
    def _servable(self, spec, context: grpc.ServicerContext) -> _Servable:
        versions = self.servables.get(spec.name)
        if versions is None or spec.name in self._loading:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version"):
            found = versions.get(spec.version.value)
            if found is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({spec.name}, {spec.version.value})")
            return found
        if spec.version_label:
            v = self.labels[spec.name].get(spec.version_label)
            if v is None or v not in versions:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {spec.version_label}")
            return versions[v]
        return versions[max(versions)]

    # -- PredictionService ------------------------------------------------------------------------
    def Predict(self, request, context):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        self._suffer("Predict", context)
        servable = self._servable(request.model_spec, context)
        if self._ignore_pins:
            versions = self.servables[servable.name]
            servable = versions[max(versions)]
        name = request.model_spec.signature_name or "serving_default"
        fn = servable.signatures.get(name)
        if fn is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Serving signature name: \"{name}\" not found in signature def")
        expected = set(fn.structured_input_signature[1])
        if set(request.inputs) != expected:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expected inputs {sorted(expected)} for signature {name}, got {sorted(request.inputs)}",
            )
        batch = self._task_size(request, context)
        try:
            outputs = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc).splitlines()[0])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        wanted = set(request.output_filter) or set(outputs)
        for key, tensor in outputs.items():
            if key in wanted:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        self._answered(servable, batch)
        return response

    def _task_size(self, request, context: grpc.ServicerContext) -> int:
        """The batch a Predict brings to the batch scheduler, refused as TF Serving refuses it."""
        sizes = {v.tensor_shape.dim[0].size if v.tensor_shape.dim else 0 for v in request.inputs.values()}
        if len(sizes) != 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have equal 0th-dimension size")
        (size,) = sizes
        if self.max_batch_size is not None and size > self.max_batch_size:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Task size {size} is larger than maximum input batch size {self.max_batch_size}",
            )
        return size

    def GetModelMetadata(self, request, context):
        from tensorflow_serving.apis import get_model_metadata_pb2

        self._suffer("GetModelMetadata", context)
        servable = self._servable(request.model_spec, context)
        defs = get_model_metadata_pb2.SignatureDefMap()
        for name, fn in servable.signatures.items():
            sig = defs.signature_def[name]
            sig.method_name = "tensorflow/serving/predict"
            for key, spec in fn.structured_input_signature[1].items():
                _tensor_info(sig.inputs[key], key, spec)
            for key, spec in fn.structured_outputs.items():
                _tensor_info(sig.outputs[key], key, spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(defs)
        return response

    # -- ModelService -----------------------------------------------------------------------------
    def GetModelStatus(self, request, context):
        from tensorflow_serving.apis import get_model_status_pb2

        self._suffer("GetModelStatus", context)
        versions = self.servables.get(request.model_spec.name)
        if versions is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {request.model_spec.name}")
        wanted = sorted(versions)
        if request.model_spec.HasField("version"):
            if request.model_spec.version.value not in versions:
                context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {request.model_spec.version.value} of model {request.model_spec.name}",
                )
            wanted = [request.model_spec.version.value]
        loading = request.model_spec.name in self._loading
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in wanted:
            status = response.model_version_status.add()
            status.version = v
            status.state = get_model_status_pb2.ModelVersionStatus.LOADING if loading else get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response

    # -- the server -------------------------------------------------------------------------------
    def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Listen on `port` of `host` (0: a free one); returns "HOST:PORT"."""
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Prediction(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_Models(self), server)
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:  # a port grpc could not bind (newer releases raise instead)
            raise OSError(f"expected to listen on {host}:{port or 'a free port'}, grpc could not bind it")
        server.start()
        self._server = server
        self.address = f"{host}:{bound}"
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None


def _tensor_info(info, key: str, spec) -> None:
    info.name = f"{key}:0"
    info.dtype = spec.dtype.as_datatype_enum
    if spec.shape.rank is None:
        info.tensor_shape.unknown_rank = True
        return
    for dim in spec.shape.as_list():
        info.tensor_shape.dim.add().size = -1 if dim is None else dim


def _servicer(base, fake: FakeTFServing, methods: tuple[str, ...]):
    return type(base.__name__.replace("Servicer", "Fake"), (base,), {m: staticmethod(getattr(fake, m)) for m in methods})()


def _Prediction(fake: FakeTFServing):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return _servicer(prediction_service_pb2_grpc.PredictionServiceServicer, fake, ("Predict", "GetModelMetadata"))


def _Models(fake: FakeTFServing):
    from tensorflow_serving.apis import model_service_pb2_grpc

    return _servicer(model_service_pb2_grpc.ModelServiceServicer, fake, ("GetModelStatus",))


MONITORING_PATH = "/monitoring/prometheus/metrics"


def monitoring_page(fake: FakeTFServing) -> str:
    """TF Serving's monitoring page as its text exposition writes it, with the one series this
    stand-in can honestly report: `:tensorflow:serving:request_count`, the Predicts answered per
    model. Written out rather than through prometheus_client, which would rename a counter without
    `_total` (or escape its colons under OpenMetrics) where TF Serving does neither."""
    name = ":tensorflow:serving:request_count"
    with fake._faults_lock:
        counts = sorted(fake.predicted.items())
    lines = [f"# TYPE {name} counter"] + [f'{name}{{model_name="{model}",status="OK"}} {count}' for model, count in counts]
    return "\n".join(lines) + "\n"


def serve_monitoring(fake: FakeTFServing, port: int, host: str = "0.0.0.0"):
    """The monitoring page on `port` (TF Serving's --rest_api_port), in a daemon thread; 404 elsewhere."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            found = self.path == MONITORING_PATH
            body = monitoring_page(fake).encode() if found else b"Not found\n"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4" if found else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # one line per scrape would drown the container's log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.integration.tfserving_fake` takes `tensorflow_model_server`'s command line
    (the flags deploy/compose.yaml gives it), so the container tests run compose's own `tf-serving`
    service with this stand-in as its image: gRPC on --port of every interface, the monitoring page
    on --rest_api_port (TF Serving's path; this stand-in's own request counts), the models of
    --model_config_file as they are at start (it does not poll), the batch limit of
    --batching_parameters_file when --enable_batching. The other flags are accepted and ignored."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="tfserving_fake", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--model_config_file", type=Path, required=True)
    parser.add_argument("--enable_batching", action="store_true")
    parser.add_argument("--batching_parameters_file", type=Path)
    known, ignored = parser.parse_known_args(argv)
    fake = FakeTFServing(known.model_config_file, batching_config=known.batching_parameters_file if known.enable_batching else None)
    serve_monitoring(fake, known.rest_api_port)
    print(f"TF Serving stand-in: gRPC on 0.0.0.0:{known.port}, monitoring on {known.rest_api_port}, models "
          f"{sorted(fake.servables)}; ignored {ignored}", flush=True)
    fake.start(known.port, host="0.0.0.0")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
