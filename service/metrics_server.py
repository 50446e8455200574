"""`/metrics` (and `/healthz`) on a port of their own, for the front end and the audit worker.

The front end's metrics count diagnoses per model: they are for Prometheus, not for whoever reaches
the API. So they are served on a separate port that deployments do not publish, by a small
threaded WSGI server whose threads are bounded (a flood of idle connections cannot grow them).
Under gunicorn it runs in the master and sums every worker's files (multiprocess mode).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)

Healthy = Callable[[], tuple[bool, dict]]


class BoundedWSGIServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most `max_threads` at once: a connection beyond them is closed
    unanswered, so a flood of connections cannot create unbounded threads (a scrape retries)."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait for a client that never sends its request
    max_threads = 8

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_threads)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("metrics server: %d connections open, closing the one from %s", self.max_threads, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # A client that went quiet past the handler's timeout is routine, not a traceback on stderr.
        log.debug("metrics server: connection from %s failed", client_address, exc_info=True)


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # seconds a connection may hold its thread while sending nothing (a scrape sends at once)

    def log_message(self, format, *args):  # scrapes every few seconds would flood the log
        log.debug("metrics server: " + format, *args)


def metrics_app(registry, healthy: Healthy | None = None):
    """A WSGI app with /metrics (Prometheus text of `registry`) and, given `healthy`, /healthz (JSON)."""
    from prometheus_client import make_wsgi_app

    prometheus = make_wsgi_app(registry)
    paths = "/metrics or /healthz" if healthy is not None else "/metrics"

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return prometheus(environ, start_response)
        if path == "/healthz" and healthy is not None:
            ok, detail = healthy()
            body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [body]
        body = json.dumps({"error": {"code": "not_found", "message": f"expected {paths}, got {path}"}}).encode()
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [body]

    return app


@dataclass(frozen=True)
class MetricsServer:
    """A running metrics server; `port` is the bound one (useful when 0 was asked for)."""

    server: BoundedWSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_metrics_server(host: str, port: int, registry, healthy: Healthy | None = None, *, name: str) -> MetricsServer:
    """Serve `registry` on host:port from a daemon thread named `name`."""
    server = make_server(host, port, metrics_app(registry, healthy), server_class=BoundedWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return MetricsServer(server, thread)


def multiprocess_registry(directory: str):
    """A registry that reads every gunicorn worker's metric files in `directory` at each scrape."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry
