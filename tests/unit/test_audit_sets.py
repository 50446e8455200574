"""Audit sets per task: the file, the default, the model card's data; and a model none covers is said, not skipped."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from audit.audit_sets import CARD, DEFAULT, FILE, AuditSets, AuditSetsError, load_audit_sets, readable_here
from audit.runner import AuditRunner
from audit.store import AuditStore
from training.contract.config import AuditConfig, ConfigError, read_config


def _card(task: str, source: str | None = None) -> dict:
    card = {"task": task, "class_names": ["a", "b"], "num_classes": 2}
    if source is not None:
        card["dataset"] = {"kind": source.split(":")[0], "source": source}
    return card


@pytest.fixture
def sets_file(tmp_path):
    path = tmp_path / "audit-sets.toml"
    path.write_text('[tasks]\nderm = "ham10000:/data/ham10000"\npneumothorax = "chestxray14:/data/cxr"\n')
    return path


def test_the_file_then_the_default_then_the_card_where_readable(sets_file, tmp_path):
    trained_here = tmp_path / "folder-data"
    trained_here.mkdir()
    with_default = load_audit_sets(sets_file, "synthetic:240")
    assert with_default.resolve(_card("derm")) == ("ham10000:/data/ham10000", FILE)
    assert with_default.resolve(_card("dr", f"folder:{trained_here}")) == ("synthetic:240", DEFAULT)
    only_file = load_audit_sets(sets_file)
    assert only_file.resolve(_card("dr", f"folder:{trained_here}")) == (f"folder:{trained_here}", CARD)
    assert only_file.resolve(_card("dr", "synthetic:600")) == ("synthetic:600", CARD)
    # Training data this machine cannot read, or none recorded: nothing to audit on.
    assert only_file.audit_set_for(_card("dr", f"folder:{tmp_path / 'elsewhere'}")) is None
    assert only_file.audit_set_for(_card("dr")) is None
    assert load_audit_sets(None).audit_set_for(_card("derm")) is None


def test_audit_set_for_is_a_plain_callable_of_a_card(sets_file):
    audit_set_for = load_audit_sets(sets_file).audit_set_for  # what the job side is handed
    assert audit_set_for({"task": "pneumothorax"}) == "chestxray14:/data/cxr"
    assert audit_set_for({"task": "dr"}) is None


def test_coverage_names_every_served_model_and_the_unauditable_ones(sets_file):
    sets = load_audit_sets(sets_file)
    served = [("derm-resnet50-attention", _card("derm")), ("dr-resnet50-baseline", _card("dr"))]
    coverage = sets.coverage(served)
    assert [c.to_json() for c in coverage] == [
        {"model": "derm-resnet50-attention", "task": "derm", "dataset": "ham10000:/data/ham10000", "origin": "file"},
        {"model": "dr-resnet50-baseline", "task": "dr", "dataset": None, "origin": None},
    ]
    assert sets.unauditable(served) == (("dr-resnet50-baseline", "dr"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tasks\nderm = 1", "expected TOML, got a syntax error"),
        ('derm = "ham10000:/data"', "expected one [tasks] table of task = \"KIND:PATH\", got other keys ['derm']"),
        ("tasks = 3", "expected one [tasks] table of task = \"KIND:PATH\", got tasks = 3"),
        ("[tasks]\nderm = 3", "expected each task's audit set as \"KIND:PATH\", got {'derm': 3}"),
        ('[tasks]\nderm = "ham10000"', "expected each task's audit set as \"KIND:PATH\", got {'derm': 'ham10000'}"),
    ],
)
def test_a_bad_file_is_refused_naming_it(tmp_path, text, message):
    path = tmp_path / "sets.toml"
    path.write_text(text)
    with pytest.raises(AuditSetsError) as raised:
        load_audit_sets(path)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(AuditSetsError, match="expected a readable audit-sets file"):
        load_audit_sets(tmp_path / "nope.toml")


def test_readable_here():
    assert readable_here("synthetic") and readable_here("synthetic:30")
    assert not readable_here("ham10000:/no/such/dir") and not readable_here("medmnist:dermamnist@64")


def test_the_file_is_a_flag_or_a_variable():
    assert read_config(AuditConfig, {"audit_sets": "a.toml"}, {}).audit_sets.name == "a.toml"
    assert read_config(AuditConfig, {}, {"MEDROBUST_AUDIT_SETS": "/etc/b.toml"}).audit_sets.name == "b.toml"
    with pytest.raises(ConfigError):
        read_config(AuditConfig, {"attack": ["nope"]}, {"MEDROBUST_AUDIT_SETS": "x"})


class _Predictor:
    backend_name = "stub"

    def __init__(self, card):
        self.card = card

    def model_info(self, model):
        return SimpleNamespace(name=model, latest=1, versions=(1,), card=self.card)

    def model_card(self, model, version=None):
        return self.card


def _enqueuer(store, predictor, config=None, audit_set_for=None):
    from audit.jobs import Enqueuer

    config = config or AuditConfig()
    return Enqueuer(config, predictor, store, AuditRunner(config, predictor, store), audit_set_for)


def test_a_model_without_an_audit_set_is_not_queued_and_no_run_is_recorded(tmp_path, sets_file, caplog):
    store = AuditStore(f"sqlite:///{tmp_path / 'audits.sqlite'}")
    sets = load_audit_sets(sets_file)
    queued = _enqueuer(store, _Predictor(_card("dr")), audit_set_for=sets.audit_set_for).enqueue("dr-resnet50-baseline", trigger="api")
    assert (queued.run_id, queued.created, queued.status) == (None, False, "no_audit_set")
    assert store.list_runs() == () and "no audit set for its task 'dr'" in caplog.text
    # A covered model's job records the audit set it is drawn from.
    queued = _enqueuer(store, _Predictor(_card("derm")), audit_set_for=sets.audit_set_for).enqueue("derm-resnet50-baseline", trigger="api")
    assert store.get_run(queued.run_id).config["dataset"] == "ham10000:/data/ham10000"
    store.close()


def test_the_scheduler_says_so_and_queues_the_others(tmp_path, sets_file, caplog):
    from audit.scheduler import AuditWorker

    store = AuditStore(f"sqlite:///{tmp_path / 'audits.sqlite'}")

    class Served(_Predictor):
        def list_models(self):
            return (self.model_info("dr-resnet50-baseline"),)

    config = AuditConfig()
    enqueuer = _enqueuer(store, Served(_card("dr")), config, load_audit_sets(sets_file).audit_set_for)
    worker = AuditWorker(config, enqueuer.runner, enqueuer, None, serve_metrics=False)
    assert worker.scheduled() == [] and worker.check_new_versions() == []
    assert "no audit set for its task 'dr'" in caplog.text and store.list_runs() == ()
    store.close()


def test_without_a_table_the_default_is_every_models(tmp_path):
    store = AuditStore(f"sqlite:///{tmp_path / 'audits.sqlite'}")
    queued = _enqueuer(store, _Predictor(_card("anything")), AuditConfig(dataset="synthetic:30")).enqueue(
        "anything-resnet50-baseline", trigger="api")
    assert json.loads(json.dumps(store.get_run(queued.run_id).config))["dataset"] == "synthetic:30"
    store.close()


def test_an_empty_table_is_a_value_not_a_guess():
    assert AuditSets().audit_set_for({"task": "derm"}) is None
