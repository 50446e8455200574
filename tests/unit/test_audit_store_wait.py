"""A database server that starts after its clients: the store waits for it, says so, and then fails clearly.

The "comes up late" case runs against PostgreSQL when MEDROBUST_TEST_POSTGRES_URL is set (.ci/run
sets it): the store is pointed at a port where nothing listens until a relay to the real server
opens there, two attempts in.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest
import sqlalchemy as sa

from audit.store import AuditStore, StoreUnavailable, make_engine, wait_for_database
from medrobust.cli import main
from tests.integration.serving import free_port

_PG = os.environ.get("MEDROBUST_TEST_POSTGRES_URL")


class FakeClock:
    """time.monotonic and time.sleep in one: sleeping moves the clock, so a wait takes no real time."""

    def __init__(self, on_sleep=None):
        self.now, self.sleeps, self.on_sleep = 0.0, [], on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


def _unreachable_url() -> str:
    return f"postgresql+psycopg2://medrobust:s3cret-pw@127.0.0.1:{free_port()}/audits?connect_timeout=2"


def test_an_absent_server_is_waited_for_then_named_without_its_password():
    time = FakeClock()
    with pytest.raises(StoreUnavailable) as raised:
        wait_for_database(make_engine(_unreachable_url()), 8.0, sleep=time.sleep, clock=time.clock)
    message = str(raised.value)
    assert "within 8 s" in message and "MEDROBUST_DATABASE_WAIT_SECONDS" in message
    assert "127.0.0.1" in message and "refused" in message.lower()
    assert "s3cret-pw" not in message
    assert time.sleeps == [0.5, 1.0, 2.0, 4.0, 0.5]  # backing off, and never past the deadline
    assert sum(time.sleeps) == 8.0


def test_no_wait_fails_at_the_first_attempt():
    time = FakeClock()
    with pytest.raises(StoreUnavailable, match="within 0 s"):
        wait_for_database(make_engine(_unreachable_url()), 0.0, sleep=time.sleep, clock=time.clock)
    assert time.sleeps == []


def test_sqlite_is_a_file_with_nothing_to_wait_for(tmp_path):
    time = FakeClock()
    assert wait_for_database(make_engine(f"sqlite:///{tmp_path}/a.sqlite"), 60.0, sleep=time.sleep, clock=time.clock) == 0
    assert time.sleeps == []


def test_the_worker_command_says_what_it_waited_for_and_exits_1(monkeypatch, capsys):
    monkeypatch.setenv("MEDROBUST_DATABASE_WAIT_SECONDS", "0")
    code = main(["audit", "worker", "--dataset", "synthetic:40", "--database-url", _unreachable_url()])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "error: expected the audit database at" in err and "Traceback" not in err


def test_serve_says_what_it_waited_for_before_starting_gunicorn(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MEDROBUST_DATABASE_WAIT_SECONDS", "0")
    code = main(["serve", "--model-repo", str(tmp_path), "--port", str(free_port()), "--database-url", _unreachable_url()])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "medrobust serve: error: expected the audit database at" in err and "Traceback" not in err


def test_serve_refuses_a_database_no_writer_has_upgraded_and_does_not_migrate_it(monkeypatch, capsys, tmp_path):
    from audit import migrate

    monkeypatch.setenv("MEDROBUST_DATABASE_WAIT_SECONDS", "0")
    url = f"sqlite:///{tmp_path / 'audits.sqlite'}"
    code = main(["serve", "--model-repo", str(tmp_path), "--port", str(free_port()), "--database-url", url])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "medrobust serve: error: expected the audit database at" in err and "run `medrobust db upgrade`" in err
    assert migrate.current(make_engine(url)) is None  # the front end only reads


def test_a_negative_wait_is_refused_naming_its_variable(monkeypatch, capsys):
    monkeypatch.setenv("MEDROBUST_DATABASE_WAIT_SECONDS", "-1")
    assert main(["audit", "worker", "--dataset", "synthetic:40"]) == 2
    assert "MEDROBUST_DATABASE_WAIT_SECONDS" in capsys.readouterr().err


def _relay(listen_port: int, target: tuple[str, int]) -> threading.Event:
    """Open `listen_port` and relay each connection to `target` (a database that "starts" late)."""
    server = socket.create_server(("127.0.0.1", listen_port))
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()
        server.close()

    threading.Thread(target=accept, daemon=True).start()
    return stop


@pytest.mark.skipif(not _PG, reason="MEDROBUST_TEST_POSTGRES_URL not set (.ci/run starts Debian's PostgreSQL and sets it)")
def test_a_store_opens_once_a_late_server_comes_up():
    real = sa.engine.make_url(_PG)
    port = free_port()
    late = real.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    stops = []
    time = FakeClock(on_sleep=lambda n: n == 2 and stops.append(_relay(port, (real.host or "127.0.0.1", real.port or 5432))))
    engine = make_engine(late)
    try:
        assert wait_for_database(engine, 60.0, sleep=time.sleep, clock=time.clock) == 2
        store = AuditStore(late, wait_seconds=0)  # the server is up now: no wait
        try:
            assert store.list_runs(limit=1) is not None
        finally:
            store.close()
    finally:
        engine.dispose()
        for stop in stops:
            stop.set()
