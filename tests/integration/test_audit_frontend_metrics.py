"""A front end started with a database URL, and no worker, exports the audit's figures and names what it cannot audit."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from audit.store import AuditStore
from tests.audit_runs import make_result
from training.contract.config import ServiceConfig

TOKEN = {"Authorization": "Bearer t"}


def _store_runs(url: str, tiny_repo) -> None:
    """What a worker, now stopped, left in the store: one run of each served model."""
    store = AuditStore(url)
    for model, attention, robust in ((tiny_repo.baseline, False, (0.75, 0.25, 0.0)), (tiny_repo.attention, True, (0.75, 0.5, 0.25))):
        card = {"task": "demo", "backbone": "resnet50", "attention": attention}
        run_id = store.start_run(model=model, version=1, card=card, backend="embedded", attack="linf_pgd", config={"steps": 20})
        store.finish_run(run_id, make_result(model=model, version=1, attention=attention, robust=robust))
    store.close()


def _samples(exposition: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition.decode())
        for s in family.samples
    }


def test_a_fresh_front_end_exports_the_latest_figures_of_every_audited_model(tiny_repo, embedded_predictor, tmp_path):
    from medrobust.compose import build_app

    url = f"sqlite:///{tmp_path / 'audits.sqlite'}"
    _store_runs(url, tiny_repo)
    app = build_app(ServiceConfig(model_repo=tiny_repo.path, database_url=url, api_token="t"), predictor=embedded_predictor)
    samples = _samples(app.extensions["medrobust"].metrics.exposition())
    for model, expected in ((tiny_repo.baseline, 0.25), (tiny_repo.attention, 0.5)):
        attention = "true" if model == tiny_repo.attention else "false"
        labels = {"task": "demo", "model": model, "backbone": "resnet50", "attention": attention, "version": "1",
                  "attack": "linf_pgd", "epsilon": "0.01"}
        assert samples[("medrobust_audit_robust_accuracy", tuple(sorted(labels.items())))] == expected
        assert samples[("medrobust_audit_runs_total", (("model", model), ("status", "succeeded")))] == 1
    gain = {"task": "demo", "backbone": "resnet50", "attack": "linf_pgd", "epsilon": "0.01"}
    assert samples[("medrobust_audit_attention_gain", tuple(sorted(gain.items())))] == pytest.approx(0.25)
    # No audit sets named here: the front end does not guess which models a worker can audit.
    assert not any(name == "medrobust_audit_unauditable" for name, _ in samples)
    assert app.test_client().get("/api/v1/audits", headers=TOKEN).get_json()["unauditable"] == []


@pytest.fixture
def unreadable_repo(copy_repo, tmp_path):
    """The tiny repository, its models' cards saying they were trained on data this machine cannot read."""
    repo = copy_repo()
    for card_path in repo.glob("*/*/assets.extra/model_card.json"):
        card = json.loads(card_path.read_text())
        card["dataset"] = {**card.get("dataset", {}), "source": f"folder:{tmp_path / 'elsewhere'}"}
        card_path.write_text(json.dumps(card))
    return repo


def test_served_models_no_audit_set_covers_are_named_by_the_api_the_page_and_the_metric(unreadable_repo, tiny_repo, tmp_path):
    from medrobust.compose import build_app
    from service.embedded import EmbeddedPredictor

    sets = tmp_path / "audit-sets.toml"
    sets.write_text('[tasks]\nderm = "ham10000:/data/ham10000"\n')  # not the tiny models' task
    url = f"sqlite:///{tmp_path / 'audits.sqlite'}"
    AuditStore(url).close()
    predictor = EmbeddedPredictor(unreadable_repo)
    try:
        config = ServiceConfig(model_repo=unreadable_repo, database_url=url, api_token="t", audit_sets=sets)
        app = build_app(config, predictor=predictor)
        client = app.test_client()
        expected = [{"model": m, "task": "demo"} for m in sorted(tiny_repo.models)]
        assert client.get("/api/v1/audits", headers=TOKEN).get_json()["unauditable"] == expected
        page = client.get("/audits", headers=TOKEN).get_data(as_text=True)
        assert 'id="unauditable"' in page and all(m in page for m in tiny_repo.models)
        samples = _samples(app.extensions["medrobust"].metrics.exposition())
        for model in tiny_repo.models:
            assert samples[("medrobust_audit_unauditable", (("model", model), ("task", "demo")))] == 1
        # The same front end told a default audit set for every task names none.
        covered = build_app(replace(config, audit_dataset="synthetic:240"), predictor=predictor, registry=CollectorRegistry())
        assert covered.test_client().get("/api/v1/audits", headers=TOKEN).get_json()["unauditable"] == []
    finally:
        predictor.close()


def test_audit_model_refuses_another_tasks_data_with_the_same_class_count(tiny_repo, embedded_predictor):
    from audit.foolbox_model import AuditError
    from audit.runner import audit_model
    from training.contract.config import AttackConfig, AuditConfig
    from training.datasets import load_dataset

    dataset = load_dataset(tiny_repo.dataset_spec, seed=0)
    other = replace(dataset, class_names=("nevus", "melanoma", "keratosis"), source="ham10000:/data/ham10000")
    config = AuditConfig(model_repo=tiny_repo.path, samples=6, progress=False,
                         attack=AttackConfig(epsilons=("0", "0.01"), steps=1, batch_size=6))
    with pytest.raises(AuditError, match=r"expected an audit set of task 'demo' with classes \['synthetic lesion: ring'"):
        audit_model(embedded_predictor, tiny_repo.baseline, other, config)


def test_audit_sets_lists_each_tasks_set_and_the_models_it_covers(tiny_repo, tmp_path, capsys):
    from medrobust.cli import main

    assert main(["audit", "sets", "--model-repo", str(tiny_repo.path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # Trained here on the synthetic set: their cards' data can be read, so `audit run` needs no --dataset.
    assert doc["tasks"] == [{"task": "demo", "dataset": tiny_repo.dataset_spec, "origin": "model card",
                             "models": sorted(tiny_repo.models)}]
    assert doc["unauditable"] == []
    sets = tmp_path / "sets.toml"
    sets.write_text('[tasks]\ndemo = "synthetic:30"\nderm = "ham10000:/data/ham10000"\n')
    assert main(["audit", "sets", "--model-repo", str(tiny_repo.path), "--audit-sets", str(sets)]) == 0
    table = capsys.readouterr().out
    assert "synthetic:30" in table and tiny_repo.baseline in table and "(none served)" in table
