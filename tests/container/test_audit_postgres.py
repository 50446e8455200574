"""The audit worker's runs, stored in PostgreSQL, survive `podman restart` of the worker and of the
database.

Debian's PostgreSQL 15 runs in a container of the Debian stand-in (compose's `postgres` service),
the worker in a container of the project's image with compose's hardening, both on the host's
network: their loopback ports stay the same across restarts, as compose's service names do.

The worker audits one model on its new-version poll (every second here), not with `--now`: `--now`
is part of the container's command, so a restarted worker would start a second run on purpose. A
version with a stored run is never audited again on arrival: a restarted worker that did not find
the stored run would audit the version again, and the runs would change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.container import images
from tests.container.containers import HARDENED, Container, metrics, wait_until
from tests.container.images import podman
from tests.integration.serving import free_ports

pytestmark = [pytest.mark.container, pytest.mark.timeout(1500)]

APPLICATION = "medrobust-audit-worker"  # the worker's application_name, naming its connections in pg_stat_activity
EPSILONS = ("0", "0.01")
DATABASE_SECONDS = 60
AUDIT_SECONDS = 300  # TensorFlow's import, one model's load and a tiny audit on a loaded 2-core machine
START_SECONDS = 180  # a restarted worker imports TensorFlow again
RUN_COLUMNS = "id, model, version, status, trigger, started_at, finished_at, robustness_score, error"


@dataclass
class Database:
    """The PostgreSQL container and the loopback port its server listens on."""

    container: Container
    port: int

    def url(self) -> str:
        return (
            f"postgresql+psycopg2://{images.POSTGRES_USER}:{images.POSTGRES_PASSWORD}@127.0.0.1:{self.port}/"
            f"{images.POSTGRES_DB}?application_name={APPLICATION}"
        )

    def query(self, sql: str) -> list[tuple[str, ...]]:
        """The rows `sql` returns, each column as psql prints it (over the socket, as the database's owner)."""
        done = podman(
            "exec", self.container.name, "psql", f"--host={images.POSTGRES_SOCKETS}", f"--port={self.port}",
            f"--username={images.POSTGRES_USER}", f"--dbname={images.POSTGRES_DB}", "--no-align", "--tuples-only",
            "--field-separator=|", "--set=ON_ERROR_STOP=1", f"--command={sql}",
        )
        return [tuple(line.split("|")) for line in done.stdout.splitlines() if line]

    def accepting(self) -> bool:
        """The server takes TCP connections on its port (what the worker uses)."""
        ready = podman("exec", self.container.name, "pg_isready", "--host=127.0.0.1", f"--port={self.port}", check=False)
        return ready.returncode == 0

    def stored(self) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
        """Every run, and every (run, epsilon) point, as stored."""
        return (
            self.query(f"SELECT {RUN_COLUMNS} FROM audit_runs ORDER BY id"),
            self.query("SELECT run_id, epsilon, robust_accuracy FROM audit_points ORDER BY run_id, epsilon"),
        )

    def worker_connections(self) -> int:
        return int(self.query(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APPLICATION}'")[0][0])


def _start_database(start, image: str, port: int) -> Database:
    container = start("-c", f"port={port}", image=image, options=("--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
                      host_network=True)
    database = Database(container, port)
    _wait_accepting(database)
    return database


def _wait_accepting(database: Database) -> None:
    wait_until(database.accepting, seconds=DATABASE_SECONDS, expected=f"PostgreSQL accepting connections on 127.0.0.1:{database.port}",
               context=database.container.logs)


def _start_worker(start, tiny_repo, database: Database, model: str, port: int) -> Container:
    """The worker as compose runs it (the store's URL in MEDROBUST_DATABASE_URL), auditing `model`,
    its /metrics and /healthz on `port`."""
    worker = start(
        "audit", "worker", "--model-repo", "/models", "--dataset", tiny_repo.dataset_spec, "--models", model,
        "--samples", "8", "--epsilons", *EPSILONS, "--steps", "2", "--batch-size", "8",
        "--artefacts-dir", "/tmp/artefacts", "--no-progress", "--metrics-port", str(port),
        options=(
            *HARDENED, "--no-healthcheck", "--volume", f"{tiny_repo.path}:/models:ro",
            "--env", f"MEDROBUST_DATABASE_URL={database.url()}",
            "--env", "MEDROBUST_AUDIT_POLL_SECONDS=1", "--env", "MEDROBUST_AUDIT_METRICS_HOST=127.0.0.1",
        ),
        host_network=True,
    )
    worker.wait_for(port, "/healthz", seconds=START_SECONDS)
    return worker


def _finished_runs(database: Database, worker: Container) -> list[tuple[str, ...]]:
    """The stored runs once none is running (empty until then); fails at once if the worker exits."""
    assert worker.state().get("Running"), f"expected the worker to keep running:\n{worker.logs()}"
    runs, _ = database.stored()
    return runs if runs and all(run[3] not in ("queued", "running") for run in runs) else []


def _robust_accuracy(worker: Container, port: int, model: str) -> dict[str, float]:
    """epsilon -> the robust accuracy the worker's /metrics gives `model`."""
    return {
        s.labels["epsilon"]: s.value for s in metrics(worker, port)
        if s.name == "medrobust_audit_robust_accuracy" and s.labels["model"] == model
    }


def _runs_counted(worker: Container, port: int) -> dict[tuple[str, str], float]:
    """(model, status) -> medrobust_audit_runs_total, every series the worker declares."""
    return {(s.labels["model"], s.labels["status"]): s.value for s in metrics(worker, port) if s.name == "medrobust_audit_runs_total"}


def test_the_workers_runs_survive_restarts_of_the_worker_and_of_the_database(start, postgres_image, tiny_repo):
    audited = tiny_repo.attention
    database_port, port = free_ports(2)
    database = _start_database(start, postgres_image.tag, database_port)
    worker = _start_worker(start, tiny_repo, database, audited, port)
    runs = wait_until(lambda: _finished_runs(database, worker), seconds=AUDIT_SECONDS,
                      expected="the worker's first audit run finished in PostgreSQL", context=worker.logs)
    stored = database.stored()
    assert [(r[1], r[3], r[4]) for r in runs] == [(audited, "succeeded", "new_version")], f"{runs}\n{worker.logs()}"
    assert [p[1] for p in stored[1]] == list(EPSILONS), stored
    figures = wait_until(lambda: _robust_accuracy(worker, port, audited), seconds=30,
                         expected=f"the robust accuracy of {audited} on the worker's /metrics", context=worker.logs)
    assert set(figures) == set(EPSILONS), figures

    worker.restart()
    worker.wait_for(port, "/healthz", seconds=START_SECONDS)
    # Read from the store before the metrics server starts: the figures of the run before the restart.
    assert _robust_accuracy(worker, port, audited) == figures, worker.logs()
    counted = _runs_counted(worker, port)
    assert counted.get((audited, "succeeded")) == 1.0, f"expected one succeeded run of {audited} counted, got {counted}"
    # The restarted worker holds the schedule's lease once its first new-version poll has run, and
    # that poll has then decided whether to queue `audited` again (it must not: its version has a
    # finished audit under the same settings), and would have stored that run's row already.
    wait_until(lambda: json.loads(worker.wait_for(port, "/healthz"))["schedule_holder"], seconds=60,
               expected="a new-version poll of the restarted worker", context=worker.logs)
    assert database.stored() == stored, f"expected the stored runs unchanged by the worker's restart:\n{worker.logs()}"

    database.container.restart()
    _wait_accepting(database)
    assert database.stored() == stored, f"expected the stored runs unchanged by the database's restart:\n{database.container.logs()}"
    # The restart ended every connection the worker's pool held; a new one is the running worker's
    # next poll reaching the store again.
    wait_until(database.worker_connections, seconds=60, expected="the worker connected to the restarted database",
               context=worker.logs)
    worker.wait_for(port, "/healthz")
    assert database.stored() == stored, worker.logs()
