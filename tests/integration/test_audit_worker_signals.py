"""The audit worker stops cleanly on SIGINT even when started in the background, where a shell
starts it with SIGINT ignored and Python installs no KeyboardInterrupt handler."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.system  # whole worker processes, signalled


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_worker_started_in_the_background_stops_on_signal(tmp_path, sig):
    repo = tmp_path / "repo"
    repo.mkdir()
    command = [
        sys.executable, "-m", "medrobust", "audit", "worker", "--model-repo", str(repo), "--dataset", "synthetic:30",
        "--database-url", f"sqlite:///{tmp_path / 'audits.sqlite'}", "--artefacts-dir", str(tmp_path / "artefacts"),
        "--metrics-port", "0", "--no-progress",
    ]
    # What `medrobust audit worker &` does in a non-interactive shell: SIGINT ignored from the start.
    worker = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Inherited SIG_IGN is the case under test; the test process starts no threads before this fork.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
    )
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = worker.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("audit worker: schedule"):
                break
        assert any(line.startswith("audit worker: schedule") for line in lines), "".join(lines)
        worker.send_signal(sig)
        rest, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, "".join(lines) + rest
        assert "audit worker: stopping" in rest
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
