"""`medrobust db upgrade`: bring the audit database's schema to this version's (Alembic migrations)."""

from __future__ import annotations

import argparse

from training.contract.config import AuditConfig, default_of


def register(subparsers) -> None:
    db = subparsers.add_parser("db", help="the audit database's schema")
    sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = sub.add_parser("upgrade", help="migrate the audit database to this version's schema (the worker and `up` do it too)")
    upgrade.add_argument("--database-url", help="SQLAlchemy URL of the audit store "
                         f"(default: MEDROBUST_DATABASE_URL or {default_of(AuditConfig, 'database_url')})")
    upgrade.set_defaults(handler=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    from audit import migrate
    from audit.store import StoreUnavailable, make_engine, wait_for_database
    from medrobust.commands import StartupError, UsageError
    from training.contract.config import read_config

    try:
        config = read_config(AuditConfig, {"database_url": args.database_url})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    engine = make_engine(config.database_url)
    try:
        wait_for_database(engine, config.database_wait_seconds)
        before, after = migrate.upgrade(engine)
    except StoreUnavailable as exc:
        raise StartupError(str(exc)) from None
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    print(f"audit database at {where}: " + (f"revision {after}, already current" if before == after
                                            else f"upgraded from {before or 'no revision'} to {after}"))
    return 0
