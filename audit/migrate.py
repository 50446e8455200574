"""The audit store's schema moves by Alembic migrations (audit/migrations), run by the processes that write.

Programmatic configuration: no alembic.ini at run time. Writers call `upgrade`; two of them
starting together take turns (a PostgreSQL advisory lock; a lock file beside a SQLite database),
so the second finds the schema current. The read-only front end calls `wait_for_schema` instead,
which never changes the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_ADVISORY_LOCK = 0x6D656472  # "medr": one key for every medrobust migration on a server


class SchemaOutdated(RuntimeError):
    """The database's schema is not the one this code reads (a writer has not upgraded it yet)."""


def _config(connection: sa.Connection | None = None) -> Config:
    # Alembic logs every plugin it sets up and every step at INFO; this module logs the result.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    newest = ScriptDirectory.from_config(_config()).get_current_head()
    if newest is None:
        raise RuntimeError("expected the audit package's migrations beside it, got none")
    return newest


def current(engine: sa.Engine) -> str | None:
    """The database's revision; None for an empty database or one written before migrations."""
    _config()  # quiets Alembic's logging before its first import
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _one_migrator(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection holding the migration lock for as long as the block runs."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_lock(_ADVISORY_LOCK)))
            conn.commit()
            try:
                yield conn
            finally:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(_ADVISORY_LOCK)))
                conn.commit()
        return
    database = engine.url.database
    lock_path = Path(f"{database}.migrate.lock") if engine.dialect.name == "sqlite" and database and database != ":memory:" else None
    with contextlib.ExitStack() as stack:
        if lock_path is not None:
            handle = stack.enter_context(lock_path.open("w"))
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield stack.enter_context(engine.connect())


def upgrade(engine: sa.Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the database to `revision` (the newest by default); returns (before, after)."""
    _config()  # quiets Alembic's logging before its first import
    from alembic import command

    with _one_migrator(engine) as conn:
        from alembic.runtime.migration import MigrationContext

        before = MigrationContext.configure(conn).get_current_revision()
        if before != head() or revision != "head":
            command.upgrade(_config(conn), revision)
            conn.commit()
        after = MigrationContext.configure(conn).get_current_revision()
    if before != after:
        log.info("audit database upgraded from revision %s to %s", before or "(none)", after)
    if after is None:
        raise RuntimeError("expected the audit database at a revision after upgrading, got none")
    return before, after


def wait_for_schema(
    engine: sa.Engine, wait_seconds: float, *, sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Wait up to `wait_seconds` for a writer to bring the schema to this code's head; never migrate.

    A front end started beside a worker on a fresh database finds it empty for a few seconds.
    """
    wanted, deadline = head(), clock() + wait_seconds
    while True:
        found = current(engine)
        if found == wanted:
            return found
        if clock() >= deadline:
            where = engine.url.render_as_string(hide_password=True)
            raise SchemaOutdated(
                f"expected the audit database at {where} at schema revision {wanted}, found "
                f"{found or 'no revision (empty, or written before migrations)'}; run `medrobust db upgrade` "
                "or start a process that writes (`medrobust audit worker`, `medrobust up`), then start this one again"
            )
        log.warning("audit database at revision %s, this process reads %s: waiting for a writer to upgrade it", found, wanted)
        sleep(min(2.0, max(deadline - clock(), 0.0)))
