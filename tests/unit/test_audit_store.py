"""The audit store: one transaction per run, interrupted runs marked failed, history kept.

Runs against SQLite always, and against PostgreSQL too when MEDROBUST_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from audit.results import AuditResult, AuditSet, EpsilonPoint, SampleOutcome, SanityCheck
from audit.store import AuditStore, RunNotFound, audit_points, audit_samples, audit_sanity

_PG = os.environ.get("MEDROBUST_TEST_POSTGRES_URL")
# The PostgreSQL cases are always collected, so a run without a server reports them as skipped.
_URLS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not _PG, reason="MEDROBUST_TEST_POSTGRES_URL not set (.ci/run starts Debian's PostgreSQL and sets it)"),
    ]),
]
CARD = {"task": "demo", "backbone": "resnet50", "attention": True}


@pytest.fixture(params=_URLS)
def database_url(request, tmp_path):
    """A fresh database: a SQLite file, or a private schema in the PostgreSQL server."""
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


def make_result(model="demo-resnet50-attention", version=1, attention=True, robust=(0.75, 0.5, 0.25), sanity_ok=True):
    audit_set = AuditSet("f" * 64, "d" * 64, "synthetic:240", 0, 64, ("s1", "s2", "s3", "s4"), (0, 1, 2, 0), ("a", "b", "c"))
    points = tuple(
        EpsilonPoint(eps, acc, acc, {"a": acc}, 4, 1, acc) for eps, acc in zip(("0", "0.01", "0.02"), robust)
    )
    samples = tuple(SampleOutcome(s, 0, 0, "0.01" if i == 0 else None, 1 if i == 0 else None) for i, s in enumerate(audit_set.sample_ids))
    sanity = (SanityCheck("gradients_nonzero", sanity_ok, "detail"), SanityCheck("robust_accuracy_monotone", True, "ok"))
    return AuditResult(
        model=model, version=version, task="demo", backbone="resnet50", attention=attention, backend="embedded",
        attack="linf_pgd", steps=20, restarts=1, audit_set=audit_set, clean_accuracy=robust[0],
        balanced_clean_accuracy=robust[0], points=points, samples=samples, sanity=sanity, seconds=1.5,
    )


def _count(store, table, run_id):
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).where(table.c.run_id == run_id)).scalar_one()


def test_a_finished_run_keeps_every_figure(database_url):
    store = AuditStore(database_url)
    run_id = store.start_run(model="demo-resnet50-attention", version=1, card=CARD, backend="embedded", attack="linf_pgd", config={"steps": 20})
    assert store.get_run(run_id).status == "running"
    store.finish_run(run_id, make_result(), artefacts="/tmp/x")
    run = store.get_run(run_id)
    assert run.status == "succeeded" and run.attention is True and run.sanity_passed is True
    assert [p["epsilon"] for p in run.points] == ["0", "0.01", "0.02"]
    assert run.robustness_score == pytest.approx(0.5)
    assert {s["sample_id"]: s["fooled_at"] for s in store.samples(run_id)} == {"s1": "0.01", "s2": None, "s3": None, "s4": None}
    assert store.audit_set(run.audit_set).sample_ids == ("s1", "s2", "s3", "s4")
    with pytest.raises(RunNotFound, match="no audit run with id 999"):
        store.get_run(999)
    store.close()


def test_a_failure_while_writing_leaves_no_partial_rows(database_url):
    store = AuditStore(database_url)
    run_id = store.start_run(model="m", version=1, card=CARD, backend="embedded", attack="linf_pgd", config={})
    broken = make_result()
    # Two checks with one name break the primary key after the points and samples were inserted.
    broken = AuditResult(**{**broken.__dict__, "sanity": broken.sanity + (broken.sanity[0],)})
    with pytest.raises(sa.exc.IntegrityError):
        store.finish_run(run_id, broken)
    assert store.get_run(run_id).status == "running"
    assert [_count(store, t, run_id) for t in (audit_points, audit_samples, audit_sanity)] == [0, 0, 0]
    store.fail_run(run_id, "IntegrityError: duplicate check")
    assert store.get_run(run_id).status == "failed"
    store.close()


def test_runs_of_a_dead_process_are_marked_failed_at_next_start(database_url):
    store = AuditStore(database_url)
    mine = store.start_run(model="m", version=1, card=CARD, backend="embedded", attack="linf_pgd", config={})
    code = (
        "import sys; from audit.store import AuditStore; s = AuditStore(sys.argv[1]); "
        "print(s.start_run(model='m', version=2, card={}, backend='embedded', attack='linf_pgd', config={}))"
    )
    dead = int(subprocess.run([sys.executable, "-c", code, database_url], check=True, capture_output=True, text=True).stdout)
    assert AuditStore(database_url).get_run(dead).status == "failed"  # its process has exited
    assert store.get_run(dead).error.startswith("interrupted")
    assert store.get_run(mine).status == "running"  # this process is alive: its run is left alone
    store.close()


def test_history_is_kept_across_versions_and_latest_runs_are_found(database_url):
    store = AuditStore(database_url)
    ids = []
    for version, model, attention in ((1, "demo-resnet50-attention", True), (2, "demo-resnet50-attention", True), (1, "demo-resnet50-baseline", False)):
        run_id = store.start_run(model=model, version=version, card={**CARD, "attention": attention}, backend="embedded", attack="linf_pgd", config={})
        store.finish_run(run_id, make_result(model=model, version=version, attention=attention))
        ids.append(run_id)
    failed = store.start_run(model="demo-resnet50-baseline", version=1, card=CARD, backend="embedded", attack="linf_pgd", config={})
    store.fail_run(failed, "boom")
    assert [r.id for r in store.list_runs()] == [failed, *reversed(ids)]
    assert sorted((r.model, r.version) for r in store.latest_succeeded()) == [
        ("demo-resnet50-attention", 1), ("demo-resnet50-attention", 2), ("demo-resnet50-baseline", 1),
    ]
    assert store.run_counts() == {("demo-resnet50-attention", "succeeded"): 2, ("demo-resnet50-baseline", "succeeded"): 1, ("demo-resnet50-baseline", "failed"): 1}
    assert store.audited_versions() == {("demo-resnet50-attention", 1), ("demo-resnet50-attention", 2), ("demo-resnet50-baseline", 1)}
    assert store.partner_run(store.get_run(ids[2])).id == ids[1]
    store.close()


def test_an_audit_set_stored_by_another_process_first_does_not_fail_the_run(database_url):
    # Two processes finishing the first runs on a new audit set both find it missing; the second
    # insert of the same set must not cost its run, nor leave its figures half written.
    first, second = AuditStore(database_url), AuditStore(database_url)
    try:
        a = first.start_run(model="demo-resnet50-attention", version=1, card=CARD, backend="embedded", attack="linf_pgd", config={})
        b = second.start_run(model="demo-resnet50-baseline", version=1, card=CARD, backend="embedded", attack="linf_pgd", config={})
        first.finish_run(a, make_result())
        second.finish_run(b, make_result(model="demo-resnet50-baseline", attention=False))
        assert first.get_run(a).status == "succeeded" and second.get_run(b).status == "succeeded"
        assert _count(second, audit_points, b) == 3 and _count(second, audit_samples, b) == 4
    finally:
        first.close()
        second.close()


def test_a_store_opened_while_another_process_creates_the_tables_still_opens(database_url, monkeypatch):
    import audit.store as store_module

    real = store_module.metadata.create_all
    calls = []

    def racing(engine, checkfirst=True, **kwargs):
        calls.append(checkfirst)
        if len(calls) == 1:
            other = sa.create_engine(database_url)
            real(other)  # the other process (front end or worker) creates the tables first ...
            other.dispose()
            real(engine, checkfirst=False)  # ... so our CREATE fails, with the database's own error
        return real(engine, checkfirst=checkfirst, **kwargs)

    monkeypatch.setattr(store_module.metadata, "create_all", racing)
    store = AuditStore(database_url)
    assert len(calls) == 2
    assert store.list_runs() == ()
    store.close()
