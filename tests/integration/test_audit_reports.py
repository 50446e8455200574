"""A run's report is drawn once, by the worker, when the run ends; the pages only read it."""

from __future__ import annotations

from audit.report import EXAMPLES, FIGURE, PAGE, report_dir
from audit.store import AuditStore
from audit.web_reader import StoreReader
from tests.audit_runs import audit_now
from training.contract.config import AttackConfig, AuditConfig


def test_the_report_is_drawn_when_the_run_ends_and_never_on_a_read(tiny_repo, embedded_predictor, tmp_path):
    config = AuditConfig(
        model_repo=tiny_repo.path, dataset=tiny_repo.dataset_spec, samples=6, progress=False,
        database_url=f"sqlite:///{tmp_path / 'audits.sqlite'}", artefacts_dir=tmp_path / "artefacts",
        attack=AttackConfig(epsilons=("0", "0.02"), steps=2, batch_size=6),
    )
    store = AuditStore(config.database_url)
    run_id, audit = audit_now(config, embedded_predictor, store, tiny_repo.baseline)
    assert audit is not None
    run = store.get_run(run_id)
    folder = report_dir(run, config.artefacts_dir)
    assert (folder / FIGURE).stat().st_size > 0 and (folder / PAGE).is_file()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    reader = StoreReader(store, config.artefacts_dir)
    assert reader.picture(run, FIGURE) == folder / FIGURE
    # A picture that was never drawn is not drawn on request: the reader answers None (a 404).
    (folder / FIGURE).unlink()
    (folder / EXAMPLES).unlink(missing_ok=True)
    assert reader.picture(run, FIGURE) is None and reader.picture(run, EXAMPLES) is None
    assert not (folder / FIGURE).exists()
    store.close()
