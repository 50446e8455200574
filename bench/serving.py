"""Serving benchmark: predict-with-Grad-CAM through the HTTP front end against the in-process floor.

    python -m bench.serving [--model-repo DIR | --image-size 224] [--model NAME] [--image FILE] [--requests 40]

Side by side, in one run, for the same model and the same image:
  http-1     `medrobust serve` (gunicorn, embedded backend) with 1 concurrent client
  http-4     the same with 4 concurrent clients
  floor      the `gradcam` signature called directly in-process on the preprocessed batch
  keras-vis  tf-keras-vis `Gradcam` on the Keras model (what a user would pick instead); the
             model is rebuilt with the same architecture (the timing does not depend on weights)
Prints requests/s and p50/p99 latency, then one JSON line with the ratios. The goal: the front
end's overhead over the floor at most 15% at p50 for one client. Without --model-repo the models
are trained for the run at --image-size (default 224, the paper's ResNet-50 input): the front
end's cost is nearly fixed per request, so the ratio depends on how long the model takes.

http-1 and the floor are measured alternately, one call each in turn, with the server in the
benchmark's own process group and session: on a shared, loaded machine, timing them one after
the other (or the server in its own scheduling group) measured the machine's load, not the
front end (the ratio swung from 0.7 to 1.5 between runs).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.frontend import Frontend


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _row(name: str, latencies: list[float], wall: float) -> dict:
    return {
        "name": name,
        "n": len(latencies),
        "rps": len(latencies) / wall,
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p99_ms": _percentile(latencies, 99) * 1000,
    }


def _bench_repo(root: Path, image_size: int, *, attention: bool) -> Path:
    """A repository like the tests' (a ResNet-50 baseline, and its attentive variant only when
    `attention`: each takes a minute or more to train and export at 224 px), briefly trained on
    synthetic data at `image_size`, when no repository is given. The timings do not depend on the
    weights, only on the architecture and the input size."""
    from training.datasets import load_dataset
    from training.recipe import Recipe
    from training.workflow import Variant, train_and_export

    repo = root / "repo"
    dataset = load_dataset("synthetic:240", seed=0)
    recipe = Recipe(epochs=1, batch_size=32, learning_rate=0.001, seed=0)
    for variant in (False, True) if attention else (False,):
        train_and_export(dataset, Variant("resnet50", variant), task="demo", image_size=image_size, model_repo=repo,
                         recipe=recipe, limit=64, verbose=0, log=lambda _m: None)
    return repo


def _image_png(size: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Client:
    """One keep-alive connection; reconnects when the server has closed an idle one."""

    def __init__(self, port: int, path: str, body: bytes):
        self.port, self.path, self.body = port, path, body
        self.conn: http.client.HTTPConnection | None = None
        self.last_body = b""

    def post(self) -> float:
        """One request; returns its latency (a stale keep-alive connection is reopened, untimed)."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                self.conn.connect()
            start = time.perf_counter()
            try:
                self.conn.request("POST", self.path, body=self.body, headers={"Content-Type": "image/png"})
                response = self.conn.getresponse()
                self.last_body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
                continue
            elapsed = time.perf_counter() - start
            if response.status != 200:
                raise RuntimeError(f"expected 200 from the front end, got {response.status}")
            return elapsed
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _http_run(port: int, path: str, body: bytes, clients: int, requests: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = requests // clients

    def client() -> None:
        c = _Client(port, path, body)
        try:
            for _ in range(per_client):
                elapsed = c.post()
                with lock:
                    latencies.append(elapsed)
        finally:
            c.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for done in [pool.submit(client) for _ in range(clients)]:
            done.result()  # a failed client fails the run instead of dying silently in its thread
    return latencies, time.perf_counter() - start


def _alternate(first, second, requests: int) -> tuple[list[float], list[float]]:
    """Latencies of `first()` and `second()` called in turn, so both see the same machine load."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(requests):
        t = time.perf_counter()
        first()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        second()
        b.append(time.perf_counter() - t)
    return a, b


def _breakdown(latencies: list[float], server_ms: list[dict]) -> dict[str, float]:
    """Medians of where an HTTP request's time went: the handler's own timings (decode, model,
    overlay, as the API reports them) and the rest of the round trip outside the handler."""
    outside = [lat * 1000 - t["total"] for lat, t in zip(latencies, server_ms)]
    parts = {k: _percentile([t[k] for t in server_ms], 50) for k in ("decode", "model", "overlay")}
    return {**{k: round(v, 3) for k, v in parts.items()}, "outside_handler": round(_percentile(outside, 50), 3)}


def _timed(fn, requests: int) -> tuple[list[float], float]:
    latencies = []
    start = time.perf_counter()
    for _ in range(requests):
        t = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=os.environ.get("MEDROBUST_MODEL_REPO"))
    parser.add_argument("--image-size", type=int, default=224,
                        help="without --model-repo: the input size of the repository trained for the run (default "
                             "224, the paper's ResNet-50 input; 64 is the tests' size, where the front end's fixed "
                             "cost per request weighs most)")
    parser.add_argument("--model", help="model to benchmark (default: the first baseline in the repository)")
    parser.add_argument("--image", type=Path,
                        help="the upload (default: a PNG of random pixels at the model's input size, the worst case "
                             "for the overlay's PNG encoder)")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.models import spec_for

    minimum = spec_for("resnet50").min_size
    if args.image_size < minimum:
        parser.error(f"--image-size: expected at least {minimum} (ResNet-50's minimum), got {args.image_size}")

    from training.contract.imaging import decode_image

    upload = None
    if args.image is not None:  # checked before the tiny repository is trained, not after
        try:
            upload = args.image.read_bytes()
            decode_image(upload)
        except (OSError, ValueError) as exc:
            parser.error(f"--image: expected a readable PNG, JPEG, BMP or TIFF file, got {args.image} ({exc})")
    with tempfile.TemporaryDirectory(prefix="medrobust-bench-") as scratch_dir:
        return _measure(args, parser, upload, Path(scratch_dir))


def _measure(args: argparse.Namespace, parser: argparse.ArgumentParser, upload: bytes | None, scratch: Path) -> int:
    from service.embedded import EmbeddedPredictor
    from training.contract import repository
    from training.contract.imaging import decode_image, resize_for_model

    wants_attention = bool(args.model and args.model.endswith("-attention"))
    repo = args.model_repo or _bench_repo(scratch, args.image_size, attention=wants_attention)
    models = repository.list_models(repo)
    if not models:
        parser.error(f"--model-repo: expected a model repository, found no models in {repo}")
    entry = next((m for m in models if m.name == args.model), None) if args.model else next(
        (m for m in models if not m.card["attention"]), models[0])
    if entry is None:
        parser.error(f"--model: expected one of {[m.name for m in models]}, got {args.model!r}")
    size = int(entry.card["input_size"][0])
    body = upload if upload is not None else _image_png(size)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"model {entry.name} v{entry.latest}, {size}x{size} input, upload "
          f"{args.image.name if args.image else 'random pixels'} ({len(body):,} bytes), "
          f"{args.requests} timed requests each; "
          f"load average {load} on {os.cpu_count()} CPUs", file=sys.stderr)

    # The floor's model is loaded before the server starts, so both are ready when timing begins.
    predictor = EmbeddedPredictor(repo, poll_seconds=3600)
    batch = resize_for_model(decode_image(body), size)[None]
    floor = lambda: predictor.gradcam(entry.name, batch)  # noqa: E731
    for _ in range(args.warmup):
        floor()

    rows = []
    frontend = Frontend([f"--model-repo={repo}", "--workers", "1", "--threads", "4"], scratch)
    port = frontend.port
    try:
        path = f"/api/v1/models/{entry.name}/predict?explain=gradcam"
        deadline = time.monotonic() + 180
        while True:
            try:
                _http_run(port, path, body, 1, 1)
                break
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline or frontend.exited():
                    raise frontend.failure("the front end did not answer within 180 s") from None
                time.sleep(0.5)
        client = _Client(port, path, body)
        for _ in range(args.warmup):
            client.post()
        bodies: list[bytes] = []

        def http_post() -> None:
            client.post()
            bodies.append(client.last_body)  # parsed after the timing, not inside it

        http1, floors = _alternate(http_post, floor, args.requests)
        client.close()
        breakdown = _breakdown(http1, [json.loads(b)["timings_ms"] for b in bodies])
        # A single client waits for each answer, so its requests/s is 1 / mean latency.
        rows.append(_row("http-1", http1, sum(http1)))
        rows.append(_row("floor", floors, sum(floors)))
        latencies, wall = _http_run(port, path, body, 4, args.requests)
        rows.append(_row("http-4", latencies, wall))
    finally:
        frontend.stop()
    predictor.close()

    # -- tf-keras-vis on the Keras model ----------------------------------------------------------------
    note = ""
    try:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore

        from training.models import build_model

        keras_model = build_model(entry.card["backbone"], attention=bool(entry.card["attention"]),
                                  num_classes=int(entry.card["num_classes"]), image_size=size)
        gradcam = Gradcam(keras_model, model_modifier=ReplaceToLinear(), clone=True)
        layer = entry.card["gradcam_layer"]
        explain = lambda: gradcam(CategoricalScore([0]), batch, penultimate_layer=layer)  # noqa: E731
        for _ in range(args.warmup):
            explain()
        rows.append(_row("keras-vis", *_timed(explain, args.requests)))
    except Exception as exc:  # the comparison is informative, not essential
        note = f"tf-keras-vis failed: {type(exc).__name__}: {exc}"
        print(note, file=sys.stderr)

    rows.sort(key=lambda r: ["http-1", "http-4", "floor", "keras-vis"].index(r["name"]))
    print(f"{'configuration':<14}{'n':>5}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for r in rows:
        print(f"{r['name']:<14}{r['n']:>5}{r['rps']:>10.2f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}")
    by = {r["name"]: r for r in rows}
    floor = by["floor"]["p50_ms"]
    ratios = {
        "model": entry.name,
        "input_size": size,
        "upload": args.image.name if args.image else "random pixels",
        "http1_p50_over_floor": round(by["http-1"]["p50_ms"] / floor, 3),
        "http4_p50_over_floor": round(by["http-4"]["p50_ms"] / floor, 3),
        "http4_rps_over_http1": round(by["http-4"]["rps"] / by["http-1"]["rps"], 3),
        "keras_vis_p50_over_floor": round(by["keras-vis"]["p50_ms"] / floor, 3) if "keras-vis" in by else None,
        "overhead_goal_met": by["http-1"]["p50_ms"] / floor <= 1.15,
    }
    ratios["http1_breakdown_ms"] = breakdown
    print(f"http-1 medians, ms: floor {floor:.1f}; in the handler: decode {breakdown['decode']:.2f}, model "
          f"{breakdown['model']:.2f}, overlay {breakdown['overlay']:.2f}; outside it (gunicorn, Flask, HTTP, "
          f"client) {breakdown['outside_handler']:.2f}")
    if note:
        ratios["note"] = note
    print(json.dumps(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
