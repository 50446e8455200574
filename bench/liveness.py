"""Liveness under load: the API port's /healthz against the master's, during an upload burst and slow clients.

    python -m bench.liveness [--model-repo DIR] [--uploads 50] [--upload-mb 10] [--slow-clients 4]

`medrobust serve` (gunicorn, its default workers and threads, embedded backend) is started on a
model repository (without --model-repo, a ResNet-50 briefly trained at 64 px for the run). Two
probes ask `/healthz` every 0.25 s side by side, each on a fresh connection, as the kubelet does:
**api** on gunicorn's port (answered by a worker thread, behind whatever holds them) and
**master** on the metrics port (answered by gunicorn's master, which restarts hung workers
itself). Three phases: idle; a burst of `--uploads` concurrent PNG uploads of about
`--upload-mb` MB each (random pixels, so they do not compress); and `--slow-clients` connections
sending a request body one byte every 3 s. Per phase and probe: answers, median and longest wait,
and how many took over 1 s or got no answer within 10 s. Ends with one JSON line.

This sizes the Kubernetes front end's liveness probe (deploy/k8s/frontend-deployment.yaml).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROBE_EVERY = 0.25
PROBE_GIVE_UP = 10.0
SLOW_BYTE_EVERY = 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _png(megabytes: float) -> bytes:
    import numpy as np
    from PIL import Image

    side = int((megabytes * 1e6 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _get(port: int, path: str, timeout: float) -> float | None:
    """Seconds until /healthz answered 200 on a fresh connection; None without an answer in time."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return time.perf_counter() - started if response.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


class _Prober:
    """Asks one /healthz every PROBE_EVERY seconds from its own thread until stopped."""

    def __init__(self, port: int):
        self.port, self.waits, self._stop = port, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pending: list[threading.Thread] = []
        while not self._stop.is_set():
            def one() -> None:
                self.waits.append(_get(self.port, "/healthz", PROBE_GIVE_UP))

            thread = threading.Thread(target=one, daemon=True)
            thread.start()
            pending.append(thread)
            self._stop.wait(PROBE_EVERY)
        for thread in pending:
            thread.join()

    def __enter__(self) -> _Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _summary(waits: list[float | None]) -> dict:
    answered = [w for w in waits if w is not None]
    return {
        "probes": len(waits),
        "median_ms": round(statistics.median(answered) * 1000, 1) if answered else None,
        "longest_ms": round(max(answered) * 1000, 1) if answered else None,
        "over_1s": sum(1 for w in answered if w > 1.0),
        "unanswered": len(waits) - len(answered),
    }


def _phase(api_port: int, metrics_port: int, load) -> dict:
    with _Prober(api_port) as api, _Prober(metrics_port) as master:
        load()
    return {"api": _summary(api.waits), "master": _summary(master.waits)}


def _burst(port: int, model: str, body: bytes, uploads: int) -> None:
    def upload() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            connection.request("POST", f"/api/v1/models/{model}/predict", body=body, headers={"Content-Type": "image/png"})
            connection.getresponse().read()
        except OSError:
            pass
        finally:
            connection.close()

    with ThreadPoolExecutor(uploads) as pool:
        list(pool.map(lambda _: upload(), range(uploads)))


def _slow(port: int, model: str, clients: int, seconds: float) -> None:
    sockets = []
    try:
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(f"POST /api/v1/models/{model}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         f"Content-Length: 100000\r\n\r\n".encode())
            sockets.append(sock)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for sock in sockets:
                try:
                    sock.sendall(b"\x00")
                except OSError:
                    pass
            time.sleep(SLOW_BYTE_EVERY)
    finally:
        for sock in sockets:
            sock.close()


def _wait_ready(port: int, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"medrobust serve exited with {process.returncode}")
        if _get(port, "/healthz", 1.0) is not None:
            return
        time.sleep(0.5)
    raise SystemExit("medrobust serve did not answer /healthz in time")


def run(repo: Path, model: str, *, uploads: int, upload_mb: float, slow_clients: int, slow_seconds: float) -> dict:
    port, metrics_port = _free_port(), _free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-liveness-"))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MEDROBUST_API_TOKEN", None)
    with open(work / "serve.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "medrobust", "serve", "--model-repo", str(repo), "--host", "127.0.0.1",
             "--port", str(port), "--metrics-port", str(metrics_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_ready(port, process, 300)
        body = _png(upload_mb)
        _burst(port, model, _png(0.05), 1)  # the model loaded before anything is measured
        return {
            "upload_bytes": len(body),
            "idle": _phase(port, metrics_port, lambda: time.sleep(5)),
            "burst": _phase(port, metrics_port, lambda: _burst(port, model, body, uploads)),
            "slow_clients": _phase(port, metrics_port, lambda: _slow(port, model, slow_clients, slow_seconds)),
        }
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, help="a model repository (default: a ResNet-50 trained at 64 px for the run)")
    parser.add_argument("--model", help="the model to upload to (default: the repository's first)")
    parser.add_argument("--uploads", type=int, default=50, help="concurrent uploads in the burst (default 50)")
    parser.add_argument("--upload-mb", type=float, default=10.0, help="size of each upload in MB (default 10)")
    parser.add_argument("--slow-clients", type=int, default=4, help="connections sending a byte every 3 s (default 4)")
    parser.add_argument("--slow-seconds", type=float, default=20.0, help="how long the slow clients last (default 20)")
    args = parser.parse_args(argv)
    scratch = tempfile.TemporaryDirectory(prefix="bench-liveness-repo-")
    if args.model_repo is None:
        from bench.serving import _bench_repo

        args.model_repo = _bench_repo(Path(scratch.name), 64, attention=False)
    from training.contract.repository import list_models

    model = args.model or list_models(args.model_repo)[0].name
    try:
        result = run(args.model_repo, model, uploads=args.uploads, upload_mb=args.upload_mb,
                     slow_clients=args.slow_clients, slow_seconds=args.slow_seconds)
    finally:
        scratch.cleanup()
    print(f"upload body: {result['upload_bytes'] / 1e6:.1f} MB PNG, {args.uploads} at once; {args.slow_clients} slow clients")
    print(f"{'phase':13} {'probe':7} {'probes':>6} {'median ms':>10} {'longest ms':>11} {'over 1 s':>9} {'unanswered':>11}")
    for phase in ("idle", "burst", "slow_clients"):
        for probe in ("api", "master"):
            row = result[phase][probe]
            print(f"{phase:13} {probe:7} {row['probes']:>6} {str(row['median_ms']):>10} {str(row['longest_ms']):>11} "
                  f"{row['over_1s']:>9} {row['unanswered']:>11}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
