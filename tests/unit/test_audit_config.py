"""The audit's configuration: epsilon labels, the audit set's draw, and flags over environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audit.auditset import audit_set_fingerprint, stratified_indices
from training.contract.config import (
    PAPER_EPSILONS,
    AttackConfig,
    AuditConfig,
    epsilon_label,
    parse_epsilons,
    read_config,
)


@pytest.mark.parametrize(
    ("given", "label"),
    [("0", "0"), (0.0, "0"), ("0.00125", "0.00125"), (0.00125, "0.00125"), ("0.320", "0.32"), ("1e-2", "0.01"), (0.32, "0.32")],
)
def test_epsilon_labels_are_the_grids_decimal_strings(given, label):
    assert epsilon_label(given) == label


@pytest.mark.parametrize("bad", ["-0.1", "nan", "inf", "eps"])
def test_bad_epsilons_are_refused_with_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad) if bad != "eps" else "decimal"):
        epsilon_label(bad)


def test_paper_grid_is_the_default_and_parsing_sorts_and_dedups():
    assert AttackConfig().epsilons == PAPER_EPSILONS
    assert PAPER_EPSILONS == ("0", "0.00125", "0.0025", "0.005", "0.01", "0.02", "0.04", "0.08", "0.16", "0.32")
    assert parse_epsilons("0.02, 0 0.02,0.01") == ("0", "0.01", "0.02")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attack": "cw"}, "expected an attack in"),
        ({"steps": 0}, "^steps: expected at least 1, got 0$"),
        ({"restarts": 0}, "^restarts: expected at least 1, got 0$"),
        ({"batch_size": 0}, "^batch_size: expected at least 1, got 0$"),
        ({"queries": 0}, "^queries: expected at least 1, got 0$"),
    ],
)
def test_attack_config_validates_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttackConfig(**kwargs)


def test_flags_win_over_environment_which_wins_over_defaults():
    env = {
        "MEDROBUST_AUDIT_STEPS": "7", "MEDROBUST_AUDIT_SAMPLES": "32", "MEDROBUST_DATABASE_URL": "sqlite:///env.db",
        "MEDROBUST_AUDIT_SCHEDULE": "*/5 * * * *", "MEDROBUST_MODEL_REPO": "/models", "MEDROBUST_AUDIT_EPSILONS": "0,0.01",
    }
    config = read_config(AuditConfig, dict(steps=3, dataset="synthetic:30"), env)
    assert config.attack.steps == 3 and config.samples == 32 and config.database_url == "sqlite:///env.db"
    assert config.schedule == "*/5 * * * *" and config.model_repo == Path("/models")
    assert config.attack.epsilons == ("0", "0.01") and config.dataset == "synthetic:30"
    defaults = read_config(AuditConfig, {}, {})
    assert defaults.samples == 256 and defaults.attack.iterations == 20 and defaults.attack.restarts == 1
    assert defaults.attack.attack == "linf_pgd" and defaults.attacks == ("linf_pgd",) and defaults.metrics_port == 9101
    assert defaults.attack.queries == 5000 and defaults.attack.seed == 0


def test_several_attacks_each_with_its_own_default_steps():
    config = read_config(AuditConfig, {}, {"MEDROBUST_AUDIT_ATTACK": "linf_pgd,ensemble", "MEDROBUST_AUDIT_SEED": "4"})
    assert config.attacks == ("linf_pgd", "ensemble")
    assert [config.attack_config(a).iterations for a in config.attacks] == [20, 100]
    assert config.attack_config("ensemble").seed == 4 == config.seed
    assert read_config(AuditConfig, dict(attack=["apgd_t", "square", "apgd_t"]), {}).attacks == ("apgd_t", "square")
    given = read_config(AuditConfig, dict(attack=["linf_pgd", "apgd_ce"], steps=7), {})
    assert [given.attack_config(a).iterations for a in given.attacks] == [7, 7]
    with pytest.raises(ValueError, match="expected attacks among .* got 'pgd'"):
        read_config(AuditConfig, {}, {"MEDROBUST_AUDIT_ATTACK": "pgd"})
    with pytest.raises(ValueError, match="expected an attack among the configured"):
        config.attack_config("square")


def test_malformed_environment_names_the_variable():
    with pytest.raises(ValueError, match="MEDROBUST_AUDIT_STEPS: expected an integer, got 'many'"):
        read_config(AuditConfig, {}, {"MEDROBUST_AUDIT_STEPS": "many"})


def test_tf_serving_keeps_a_mounted_repository_for_cards_and_a_repo_flag_means_embedded():
    env = {"MEDROBUST_TF_SERVING": "tf-serving:8500", "MEDROBUST_MODEL_REPO": "/models"}
    config = read_config(AuditConfig, {}, env)
    assert config.tf_serving == "tf-serving:8500" and config.model_repo == Path("/models")
    assert read_config(AuditConfig, dict(model_repo="local"), env).tf_serving is None
    assert read_config(AuditConfig, dict(tf_serving="h:1"), {}).model_repo is None


def test_config_refuses_an_empty_audit_set():
    with pytest.raises(ValueError, match="samples: expected at least 1, got 0"):
        AuditConfig(samples=0)


def test_audit_set_is_seeded_stratified_and_stable():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    a = stratified_indices(labels, 10, seed=0)
    assert np.array_equal(a, stratified_indices(labels, 10, seed=0))
    assert not np.array_equal(a, stratified_indices(labels, 10, seed=1))
    assert np.bincount(labels[a], minlength=3).tolist() == [5, 3, 2]
    rare = np.array([0] * 98 + [1, 2])
    assert set(labels[stratified_indices(labels, 3, seed=0)]) == {0, 1, 2}
    assert set(rare[stratified_indices(rare, 3, seed=0)]) == {0, 1, 2}  # every class present gets an image
    assert len(stratified_indices(labels, 500, seed=0)) == 100


def test_audit_set_fingerprint_changes_with_ids_labels_size_and_data():
    base = audit_set_fingerprint("d", 64, ("a", "b"), [0, 1])
    assert base == audit_set_fingerprint("d", 64, ("a", "b"), [0, 1])
    assert len({base, audit_set_fingerprint("e", 64, ("a", "b"), [0, 1]), audit_set_fingerprint("d", 32, ("a", "b"), [0, 1]),
                audit_set_fingerprint("d", 64, ("a", "c"), [0, 1]), audit_set_fingerprint("d", 64, ("a", "b"), [1, 1])}) == 5
