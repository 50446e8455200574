"""Fixtures of the unit tests: `database_url`, a fresh audit database per test."""

from __future__ import annotations

import os
import uuid

import pytest

_PG = os.environ.get("MEDROBUST_TEST_POSTGRES_URL")
# The PostgreSQL cases are always collected, so a run without a server reports them as skipped.
_URLS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not _PG, reason="MEDROBUST_TEST_POSTGRES_URL not set (.ci/run starts Debian's PostgreSQL and sets it)"),
    ]),
]


@pytest.fixture(params=_URLS)
def database_url(request, tmp_path):
    """A fresh database: a SQLite file, or a private schema in the PostgreSQL server."""
    import sqlalchemy as sa

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audits.sqlite'}"
        return
    schema = f"audit_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(_PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.engine.make_url(_PG).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()
