"""What a newcomer sees from `medrobust up`: the banner, progress and URLs, not TensorFlow's
start-up noise; and Ctrl-C ends it cleanly (exit 0), not with a C++ abort (exit 134)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.serving import free_port

pytestmark = pytest.mark.system  # the whole `up` process

NOISE = ("oneDNN", "cuInit", "unsupported characters", "cpu_feature_guard", "terminate called",
         "FATAL: exception not rethrown", "absl::InitializeLog", "cudart_stub")


def test_up_starts_quietly_and_stops_cleanly_on_ctrl_c(copy_repo, tmp_path):
    repo = copy_repo()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEDROBUST_", "TF_CPP", "CUDA_")) and k != "PROMETHEUS_MULTIPROC_DIR"}
    up = subprocess.Popen(
        [sys.executable, "-m", "medrobust", "up", "--model-repo", str(repo), "--port", str(free_port()),
         "--metrics-port", str(free_port()), "--no-audit", "--database-url", f"sqlite:///{tmp_path / 'audits.sqlite'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env,
    )
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        assert any("medrobust is up" in line for line in lines), "".join(lines)
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    output = "".join(lines) + rest
    assert up.returncode == 0, output
    assert [word for word in NOISE if word in output] == [], output
    assert "stopping: front end, audit scheduler, metrics" in output
