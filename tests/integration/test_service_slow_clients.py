"""Slow clients against the front end, straight to gunicorn and through the project's nginx (issue #14).

Real processes: `medrobust serve` under gunicorn with one worker of two threads on the tiny model
repository, and Debian's nginx running deploy/nginx/medrobust.conf.template, rendered for loopback
ports the way the nginx image's entrypoint renders it in compose and in the Kubernetes pod. A
test-only main configuration includes the rendered server block, as the image's nginx.conf does.

Two connections that send half a request hold both of gunicorn's threads, so a normal request
waits behind them. Through nginx the same two cost gunicorn nothing: nginx holds them until its
timeouts close them, and hands gunicorn only whole requests.
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration import service_images as images
from tests.integration.serving import free_port
from tests.project import PROJECT
from training.contract.config import ServiceConfig, default_of

pytestmark = pytest.mark.system  # gunicorn and nginx as separate processes

TEMPLATE = PROJECT / "deploy" / "nginx" / "medrobust.conf.template"
# Debian installs it in /usr/sbin, which a non-root PATH may lack.
NGINX = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
MAX_UPLOAD_BYTES = default_of(ServiceConfig, "max_upload_bytes")
# The front end answers /healthz at once when a thread is free; this long without an answer means
# it has none.
BLOCKED_SECONDS = 5
Address = tuple[str, int]


def _timeout_seconds(directive: str) -> int:
    match = re.search(rf"^\s*{directive}\s+(\d+)s;", TEMPLATE.read_text(), re.MULTILINE)
    assert match, f"expected `{directive} <N>s;` in {TEMPLATE}"
    return int(match[1])


def render(template: str, values: Mapping[str, str]) -> str:
    """What the nginx image's entrypoint does with NGINX_ENVSUBST_FILTER=MEDROBUST_: ${MEDROBUST_X} becomes X's value."""
    return re.sub(r"\$\{(MEDROBUST_\w+)\}", lambda m: values[m[1]], template)


def _wait_until_listening(address: Address, process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(address, timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def request(address: Address, method: str, path: str, *, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """(status, body) of one request on a fresh connection; TimeoutError when no answer comes in time."""
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Frontend(tuple):
    """(host, port) of gunicorn's API; `metrics` is where its master answers /metrics and /healthz,
    `log` the file its output (the access log included) goes to."""

    metrics: Address
    log: Path


@pytest.fixture(scope="module")
def frontend(tiny_repo, tmp_path_factory) -> Iterator[Frontend]:
    """gunicorn with one worker of two threads: two held threads stop it."""
    work = tmp_path_factory.mktemp("frontend")
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MEDROBUST_API_TOKEN", None)
    log_path = work / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "medrobust", "serve", "--model-repo", str(tiny_repo.path), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--threads", "2", "--max-upload-bytes", str(MAX_UPLOAD_BYTES),
             "--metrics-port", str(metrics_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    address = Frontend(("127.0.0.1", port))
    address.metrics, address.log = ("127.0.0.1", metrics_port), log_path
    try:
        if not _wait_until_listening(address, process, 180):
            pytest.fail(f"medrobust serve did not start:\n{log_path.read_text()[-3000:]}")
        # Load the model now, so a prediction later takes a moment, not a model load.
        status, body = request(address, "POST", f"/api/v1/models/{tiny_repo.baseline}/predict?explain=none",
                               body=images.png(48, 48), headers={"Content-Type": "image/png"}, timeout=180)
        assert status == 200, body[:500]
        yield address
    finally:
        _stop(process)


WRAPPER = """\
# Test-only: the part of the nginx image's nginx.conf that the project's server block relies on
# (an http block that includes it), with every file nginx writes under this folder.
user {user} {group};  # the workers run as the master's user, as in the containers
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/medrobust.conf;
}}
"""


@pytest.fixture(scope="module")
def proxy(frontend, tmp_path_factory) -> Iterator[Address]:
    """Debian's nginx with the project's configuration, in front of `frontend`."""
    if NGINX is None:
        pytest.skip("nginx is not installed (`apt-get install nginx`, as .ci/run does): the proxy cannot be tested")
    work = tmp_path_factory.mktemp("nginx")
    address = ("127.0.0.1", free_port())
    values = {
        "MEDROBUST_PROXY_LISTEN": f"{address[0]}:{address[1]}",
        "MEDROBUST_PROXY_UPSTREAM": f"{frontend[0]}:{frontend[1]}",
        "MEDROBUST_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    }
    (work / "medrobust.conf").write_text(render(TEMPLATE.read_text(), values))
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    (work / "nginx.conf").write_text(WRAPPER.format(dir=work, user=user, group=group))
    with open(work / "nginx.out", "wb") as out:
        process = subprocess.Popen(
            [NGINX, "-p", f"{work}/", "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        if not _wait_until_listening(address, process, 30):
            error_log = work / "error.log"
            logged = (work / "nginx.out").read_text() + (error_log.read_text() if error_log.exists() else "")
            pytest.fail(f"nginx did not start:\n{logged[-3000:]}")
        yield address
    finally:
        _stop(process, signal.SIGQUIT)


def _half_headers(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: medrobust\r\nUser-Agent: slow".encode()


def _half_body(path: str) -> bytes:
    body = images.png(48, 48)
    head = f"POST {path} HTTP/1.1\r\nHost: medrobust\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body[: len(body) // 2]


# A request cut short in its headers (the case) and one cut short in its body: nginx must
# read both whole before gunicorn sees them.
SLOW = {"headers": _half_headers, "body": _half_body}


@contextmanager
def slow_clients(address: Address, kind: str, path: str, count: int = 2) -> Iterator[list[socket.socket]]:
    """`count` connections that each send half a request and then nothing."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address, timeout=10)
            sockets.append(sock)
            sock.sendall(SLOW[kind](path))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither answered on the connection nor closed it."""
    sock.setblocking(False)  # a socket with a timeout would wait for data instead of telling
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except ConnectionError:
        return False
    return False  # closed (b"") or answered


def read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection; TimeoutError if it keeps it open."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize("kind", sorted(SLOW))
def test_without_the_proxy_two_slow_clients_hold_both_threads(frontend, tiny_repo, kind):
    """The defect, and so the guard on the test below: straight to gunicorn, a normal request waits."""
    path = "/healthz" if kind == "headers" else f"/api/v1/models/{tiny_repo.baseline}/predict"
    with slow_clients(frontend, kind, path) as slow:
        with pytest.raises(TimeoutError):
            request(frontend, "GET", "/healthz", timeout=BLOCKED_SECONDS)
        assert all(still_open(sock) for sock in slow)
    # Once they are gone the same request is answered: it was the slow clients that held it.
    assert request(frontend, "GET", "/healthz")[0] == 200


def _liveness_timeout() -> float:
    """The Kubernetes front end's liveness probe timeout: what the kubelet would wait."""
    import yaml

    deployment = yaml.safe_load((PROJECT / "deploy" / "k8s" / "frontend-deployment.yaml").read_text())
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        probe = container.get("livenessProbe", {})
        if probe.get("httpGet", {}).get("port") == "metrics":
            return float(probe["timeoutSeconds"])
    raise AssertionError("expected the front end's liveness probe on its metrics port")


@pytest.mark.parametrize("kind", sorted(SLOW))
def test_liveness_on_the_masters_port_answers_while_slow_clients_hold_every_thread(frontend, tiny_repo, kind):
    """The probe the kubelet makes: while the API's own /healthz waits, the master's answers in time."""
    path = "/healthz" if kind == "headers" else f"/api/v1/models/{tiny_repo.baseline}/predict"
    with slow_clients(frontend, kind, path, count=4) as slow:
        with pytest.raises(TimeoutError):
            request(frontend, "GET", "/healthz", timeout=BLOCKED_SECONDS)
        for _ in range(3):
            status, body = request(frontend.metrics, "GET", "/healthz", timeout=_liveness_timeout())
            assert status == 200 and json.loads(body) == {"status": "ok", "workers": 1, "expected_workers": 1}
        assert all(still_open(sock) for sock in slow)


@pytest.mark.parametrize("kind", sorted(SLOW))
def test_through_the_proxy_slow_clients_do_not_delay_a_normal_request(proxy, tiny_repo, kind):
    predict = f"/api/v1/models/{tiny_repo.baseline}/predict"
    with slow_clients(proxy, kind, "/healthz" if kind == "headers" else predict) as slow:
        status, body = request(proxy, "GET", "/healthz", timeout=BLOCKED_SECONDS)
        assert (status, json.loads(body)["status"]) == (200, "ok")
        # Answered while both slow clients were still connected: nginx held them, not gunicorn.
        assert all(still_open(sock) for sock in slow)
        status, body = request(proxy, "POST", f"{predict}?explain=none", body=images.png(48, 48),
                               headers={"Content-Type": "image/png"})
        assert status == 200 and json.loads(body)["model"] == tiny_repo.baseline, body[:500]
        # nginx's own timeouts end the slow clients; none of them ever got an answer from the front end.
        timeout = _timeout_seconds("client_header_timeout" if kind == "headers" else "client_body_timeout")
        for sock in slow:
            answer = read_until_closed(sock, timeout + 20)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def test_the_proxy_passes_the_largest_upload_and_refuses_a_larger_one_as_json(proxy, tiny_repo):
    predict = f"/api/v1/models/{tiny_repo.baseline}/predict"
    headers = {"Content-Type": "image/png"}
    # The front end's largest body gets through to the front end, which judges it (not an image).
    status, body = request(proxy, "POST", predict, body=bytes(MAX_UPLOAD_BYTES), headers=headers)
    error = json.loads(body)["error"]
    assert 400 <= status < 500 and status != 413 and error["code"] != "payload_too_large", (status, error)
    # One byte more is refused from the headers alone, as JSON like the front end's own errors.
    status, body = request(proxy, "POST", predict, headers={**headers, "Content-Length": str(MAX_UPLOAD_BYTES + 1)})
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_the_access_log_never_carries_a_query_strings_token(frontend):
    secret = "qs-token-4f1d9c"
    for path in (f"/healthz?token={secret}", f"/api/v1/models?access_token={secret}&x=1"):
        request(frontend, "GET", path, headers={"Referer": f"http://example.test/audits?token={secret}"})
    deadline = time.monotonic() + 10
    # The exact line: earlier tests' predictions also name /api/v1/models/..., and gunicorn writes after answering.
    while '"GET /api/v1/models HTTP/1.1"' not in frontend.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = frontend.log.read_text()
    assert '"GET /healthz HTTP/1.1"' in text and '"GET /api/v1/models HTTP/1.1"' in text
    assert secret not in text


def raw_request(address: Address, data: bytes, *, read_seconds: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send `data` as it is on a fresh connection; the answer's status, headers and body."""
    with socket.create_connection(address, timeout=read_seconds) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # refused before the whole body was read
            pass
        answer = read_until_closed(sock, read_seconds)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


GUNICORN_REFUSALS = {
    "a request line over 4 KB": (b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "a header over 8 KB": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    "a control character in a header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Odd: a\x01b\r\n\r\n", 400),
    "Content-Length and Transfer-Encoding": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "a negative Content-Length": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(GUNICORN_REFUSALS))
def test_what_gunicorn_refuses_itself_is_answered_as_json(frontend, case):
    data, status = GUNICORN_REFUSALS[case]
    got, headers, body = raw_request(frontend, data)
    assert got == status and headers["content-type"] == "application/json", (got, headers, body[:300])
    error = json.loads(body)["error"]
    assert error["code"] and error["message"].startswith("expected a well-formed HTTP request")


def test_a_chunked_body_over_the_limit_is_413(frontend, tiny_repo):
    chunk = b"\x00" * (1 << 20)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_UPLOAD_BYTES // len(chunk) + 2)) + b"0\r\n\r\n"
    head = (f"POST /api/v1/models/{tiny_repo.baseline}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    status, headers, answer = raw_request(frontend, head + body, read_seconds=120)
    assert status == 413 and json.loads(answer)["error"]["code"] == "payload_too_large", (status, answer[:300])
    png = images.png(48, 48)  # the same way, within the limit: answered
    status, _, answer = raw_request(frontend, head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(png), png), read_seconds=120)
    assert status == 200, answer[:300]
