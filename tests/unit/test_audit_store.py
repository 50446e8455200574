"""The audit store: one transaction per run, interrupted runs queued again, history kept, schema migrated.

Runs against SQLite always, and against PostgreSQL too when MEDROBUST_TEST_POSTGRES_URL is set
(`database_url`, from tests/audit_runs.py).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pytest
import sqlalchemy as sa

from audit import migrate
from audit.results import AuditResult, wilson_interval
from audit.store import AuditStore, RunNotFound, audit_points, audit_samples, audit_sanity, comparable
from tests.audit_runs import CARD, EIGHT, OLD_SCHEMA_DUMP, make_result, one_class_result


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
    assert run.robustness_score == pytest.approx(0.375)  # epsilon 0 left out
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


def test_a_run_whose_process_died_is_queued_again_when_its_lease_expires_and_says_so(database_url):
    store = AuditStore(database_url)
    code = (
        "import sys; from audit.store import AuditStore; s = AuditStore(sys.argv[1]); "
        "print(s.start_run(model='m', version=2, card={}, backend='embedded', attack='linf_pgd', config={}, lease_seconds=1))"
    )
    dead = int(subprocess.run([sys.executable, "-c", code, database_url], check=True, capture_output=True, text=True).stdout)
    assert store.get_run(dead).status == "running"  # nobody can tell yet: its lease still runs
    deadline = time.monotonic() + 30
    while not (expired := store.expire_leases()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert expired == {dead: "queued"}
    run = store.get_run(dead)
    assert run.status == "queued" and run.error.startswith("interrupted: the lease of") and run.note is None
    job = store.claim(60)
    assert (job.run_id, job.attempt) == (dead, 2)
    assert store.get_run(dead).note == "restarted after interruption (attempt 2)"
    assert store.get_run(dead).to_json()["attempt"] == 2
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


def test_writers_opening_a_fresh_database_together_migrate_it_once(database_url):
    # The front end's writer, the worker and `db upgrade` may all start at once on an empty database.
    import threading

    stores, errors = [], []

    def open_store() -> None:
        try:
            stores.append(AuditStore(database_url))
        except Exception as exc:  # noqa: BLE001  (collected: the assertion below names it)
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(stores) == 4
    assert migrate.current(stores[0].engine) == migrate.head()
    assert all(s.list_runs() == () for s in stores)
    for s in stores:
        s.close()


def test_a_run_keeps_its_worst_class_interval_and_degenerate_flag(database_url):
    store = AuditStore(database_url)
    run_id = store.start_run(model="demo-resnet50-attention", version=1, card=CARD, backend="embedded", attack="linf_pgd", config={"steps": 20})
    store.finish_run(run_id, one_class_result())
    run = store.get_run(run_id)
    assert (run.degenerate, run.predicted_class_max_share, run.audit_set_size) == (True, 1.0, 8)
    assert (run.seed, run.fooled_by) == (7, {"apgd-ce": 0, "square": 0})
    lower, upper = wilson_interval(4, 8)
    for p in run.points:
        assert p["worst_class_robust_accuracy"] == 0.0 and p["per_class"] == {"a": 1.0, "b": 0.0, "c": 0.0}
        assert (p["samples"], p["robust_accuracy_lower"], p["robust_accuracy_upper"]) == (8, pytest.approx(lower), pytest.approx(upper))
    assert store.list_runs()[0].degenerate is True
    # Every interval, as the result computed it, per point and for the clean figures.
    result = one_class_result()
    for stored, point in zip(run.points, result.points):
        assert stored["worst_class"] == "b" and stored["class_counts"] == {"a": [4, 4], "b": [0, 2], "c": [0, 2]}
        assert (stored["worst_class_robust_accuracy_lower"], stored["worst_class_robust_accuracy_upper"]) == pytest.approx(wilson_interval(0, 2))
        assert (stored["balanced_robust_accuracy_lower"], stored["balanced_robust_accuracy_upper"]) == pytest.approx(point.balanced_interval)
    assert (run.clean_accuracy_lower, run.clean_accuracy_upper) == pytest.approx(result.clean_interval)
    assert (run.balanced_clean_accuracy_lower, run.balanced_clean_accuracy_upper) == pytest.approx(result.balanced_clean_interval)
    assert run.balanced_predicted_class_max_share == 1.0
    doc = json.loads(json.dumps(run.to_json()))
    assert doc["degenerate"] is True and doc["fooled_by"] == {"apgd-ce": 0, "square": 0} and doc["seed"] == 7
    store.close()


def _columns(path, table: str) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_a_database_written_by_the_first_schema_opens_with_every_new_figure(tmp_path):
    # A real SQLite file as the first schema wrote it: a one-class model (run 1), a trained one
    # (run 2) and a failed run (3), with none of the columns added since.
    path = tmp_path / "audits.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(OLD_SCHEMA_DUMP.read_text())
    assert "degenerate" not in _columns(path, "audit_runs") and "robust_accuracy_lower" not in _columns(path, "audit_points")
    store = AuditStore(f"sqlite:///{path}")
    assert {"seed", "fooled_by", "audit_set_size", "predicted_class_max_share", "degenerate"} <= _columns(path, "audit_runs")
    assert {"samples", "worst_class_robust_accuracy", "robust_accuracy_lower", "robust_accuracy_upper"} <= _columns(path, "audit_points")

    one_class, trained, failed = (store.get_run(i) for i in (1, 2, 3))
    assert (one_class.degenerate, one_class.predicted_class_max_share, one_class.audit_set_size) == (True, 1.0, 8)
    assert [p["worst_class_robust_accuracy"] for p in one_class.points] == [0.0, 0.0, 0.0]
    assert one_class.points[1]["robust_accuracy_lower"] == pytest.approx(wilson_interval(4, 8)[0])
    assert (trained.degenerate, trained.predicted_class_max_share) == (False, 0.5)
    assert trained.robustness_score == pytest.approx(0.375)  # was stored as 0.5, with epsilon 0 counted
    assert (failed.status, failed.degenerate, failed.audit_set_size) == ("failed", None, None)
    # The figures were written, not only derived on read: the listing (no points read) has them.
    assert {r.id: r.degenerate for r in store.list_runs()} == {1: True, 2: False, 3: None}
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit_points WHERE robust_accuracy_lower IS NULL").fetchone() == (0,)
    # Intervals on every figure, recounted from the stored outcomes where they give the stored figures:
    # run 1's do (4 of 4 a, none of b or c); run 2's per-class figure ({"a": 0.75} of a model that got
    # every image right) does not, so its points get no interval rather than a made-up one.
    assert one_class.points[1]["class_counts"] == {"a": [4, 4], "b": [0, 2], "c": [0, 2]}
    assert one_class.points[1]["worst_class"] == "b"
    assert one_class.points[1]["worst_class_robust_accuracy_upper"] == pytest.approx(wilson_interval(0, 2)[1])
    assert one_class.points[1]["balanced_robust_accuracy_lower"] == pytest.approx(1 / 3)
    assert one_class.balanced_predicted_class_max_share == 1.0
    assert [p["class_counts"] for p in trained.points] == [None, None, None]
    assert trained.clean_accuracy_lower == pytest.approx(wilson_interval(8, 8)[0])

    run_id = store.start_run(model="demo-resnet50-attention", version=3, card=CARD, backend="embedded", attack="linf_pgd", config={})
    store.finish_run(run_id, make_result(version=3))
    assert store.get_run(run_id).status == "succeeded"
    assert migrate.current(store.engine) == migrate.head()
    store.close()


def test_a_reader_never_migrates_and_says_what_to_do(database_url):
    # The front end opens the store read-only: on an old or empty database it waits, then refuses.
    with pytest.raises(migrate.SchemaOutdated, match="medrobust db upgrade") as raised:
        AuditStore(database_url, migrate=False, wait_seconds=0)
    assert "no revision" in str(raised.value)
    engine = sa.create_engine(database_url)
    assert sa.inspect(engine).get_table_names() == []  # nothing was created
    migrate.upgrade(engine, "0001")  # a writer of the previous version
    with pytest.raises(migrate.SchemaOutdated, match=f"revision {migrate.head()}, found 0001"):
        AuditStore(database_url, migrate=False, wait_seconds=0)
    assert "audit_jobs" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    AuditStore(database_url).close()  # a writer upgrades it
    reader = AuditStore(database_url, migrate=False)
    assert reader.list_runs() == ()
    reader.close()


def test_the_report_partner_is_a_comparable_run_only(database_url):
    store = AuditStore(database_url)
    baseline = store.start_run(model="demo-resnet50-baseline", version=1, card={**CARD, "attention": False}, backend="embedded", attack="linf_pgd", config={"steps": 20})
    store.finish_run(baseline, make_result(model="demo-resnet50-baseline", attention=False))
    for config, result in (
        ({"steps": 20}, make_result(audit_set=EIGHT)),  # another audit set
        ({"steps": 10}, make_result()),  # other steps
        ({"steps": 20}, make_result(epsilons=("0", "0.01", "0.04"))),  # another grid
    ):
        run_id = store.start_run(model="demo-resnet50-attention", version=1, card=CARD, backend="embedded", attack="linf_pgd", config=config)
        store.finish_run(run_id, result)
        assert store.partner_run(store.get_run(run_id)) is None
        assert not comparable(store.get_run(run_id), store.get_run(baseline))
    match = store.start_run(model="demo-resnet50-attention", version=1, card=CARD, backend="embedded", attack="linf_pgd", config={"steps": 20})
    store.finish_run(match, make_result())
    assert store.partner_run(store.get_run(baseline)).id == match
    assert store.partner_run(store.get_run(match)).id == baseline
    store.close()


def test_columns_an_older_database_lacks_are_added_and_filled(database_url):
    # The same upgrade on every database: the store as the code before migrations left it (no
    # revision, no jobs) and with the columns added since the first schema dropped again.
    store = AuditStore(database_url)
    run_id = store.start_run(model="demo-resnet50-attention", version=1, card=CARD, backend="embedded", attack="linf_pgd", config={})
    store.finish_run(run_id, one_class_result())
    new = {
        "audit_runs": ("seed", "fooled_by", "audit_set_size", "predicted_class_max_share", "degenerate",
                       "attempt", "progress_done", "progress_total", "progress_eta_seconds", "progress_at",
                       "balanced_predicted_class_max_share", "clean_accuracy_lower", "clean_accuracy_upper",
                       "balanced_clean_accuracy_lower", "balanced_clean_accuracy_upper"),
        "audit_points": ("samples", "worst_class_robust_accuracy", "robust_accuracy_lower", "robust_accuracy_upper",
                         "class_counts", "class_intervals", "worst_class", "worst_class_robust_accuracy_lower",
                         "worst_class_robust_accuracy_upper", "balanced_robust_accuracy_lower", "balanced_robust_accuracy_upper"),
    }
    with store.engine.begin() as conn:
        for table in ("alembic_version", "audit_leases", "audit_jobs"):
            conn.execute(sa.text(f"DROP TABLE {table}"))
        for table, columns in new.items():
            for column in columns:
                conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    store.close()
    upgraded = AuditStore(database_url)
    run = upgraded.get_run(run_id)
    assert (run.degenerate, run.audit_set_size, run.seed, run.fooled_by, run.attempt) == (True, 8, None, {}, None)
    assert run.points[1]["worst_class_robust_accuracy"] == 0.0 and run.points[1]["robust_accuracy_lower"] > 0
    # Revision 0003 recounts the intervals from the stored outcomes: the ones the run was written with.
    written = one_class_result()
    assert run.balanced_predicted_class_max_share == 1.0
    assert (run.clean_accuracy_lower, run.balanced_clean_accuracy_upper) == (
        pytest.approx(written.clean_interval[0]), pytest.approx(written.balanced_clean_interval[1]))
    expected = written.points[1].intervals()
    assert {k: run.points[1][k] for k in expected} == {
        **expected, "class_counts": {"a": [4, 4], "b": [0, 2], "c": [0, 2]},
        "class_intervals": {c: [pytest.approx(lo), pytest.approx(hi)] for c, (lo, hi) in expected["class_intervals"].items()},
        **{k: pytest.approx(v) for k, v in expected.items() if k.endswith(("_lower", "_upper"))},
    }
    assert migrate.current(upgraded.engine) == migrate.head()
    # The old run has no job; a new one of the same model is queued beside it.
    assert upgraded.enqueue(model=run.model, version=1, card=CARD, backend="embedded", attack="linf_pgd", config={}).created
    upgraded.close()
