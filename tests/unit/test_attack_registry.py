"""One registry of attacks: classes and specs agree, and everything that lists attacks reads it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from audit.attack_base import Attack, SingleAttack
from audit.attacks import REGISTRY, Attacker, attack_class, distance, is_random, stages
from training.contract.attacks import ATTACKS, attack_names, attack_spec, attack_table_markdown, attacks_with
from training.contract.config import AttackConfig, AuditConfig, ConfigError, read_config

ROOT = Path(__file__).resolve().parents[2]
REGISTRY_MODULE = ROOT / "training" / "contract" / "attacks.py"


def test_every_spec_has_its_class_and_every_class_its_spec():
    assert tuple(REGISTRY) == attack_names()
    for name, cls in REGISTRY.items():
        assert issubclass(cls, Attack) and cls.spec is ATTACKS[name]
    # Every attack but a composition of others runs a batch itself.
    assert {n for n, cls in REGISTRY.items() if not issubclass(cls, SingleAttack)} == {
        n for n, spec in ATTACKS.items() if spec.stages
    }
    for name, spec in ATTACKS.items():
        assert all(not ATTACKS[stage].stages for stage in spec.stages), name  # stages are single attacks


@pytest.mark.parametrize("name", attack_names())
def test_each_class_is_built_keyword_only_with_its_own_defaults(name):
    cls = attack_class(name)
    assert dict(cls().budget) == dict(attack_spec(name).defaults)
    with pytest.raises(TypeError):
        cls(1)  # keyword-only, as Foolbox's
    with pytest.raises(TypeError, match=rf"{cls.__name__}: expected budget fields among .*, got colour"):
        cls(colour=1)
    for field in set(attack_spec(name).defaults) & {"steps", "queries"}:
        with pytest.raises(ValueError, match=f"expected {field} > 0, got 0"):
            cls(**{field: 0})


def test_the_budgets_are_the_papers_and_the_references():
    assert dict(attack_class("linf_pgd")().budget) == {"steps": 20, "step_ratio": 2.5, "random_start": True}
    assert attack_class("apgd_ce")().budget["steps"] == 100 and attack_class("square")().budget["queries"] == 5000
    assert stages("linf_pgd") == ("linf_pgd",) and stages("linf_pgd", 2) == ("linf_pgd",)
    assert set(attacks_with("queries")) == {"square", "ensemble"}
    assert dict(attack_class("fab_t")().budget) == {"steps": 100} and not attack_spec("fab_t").random
    assert attack_spec("square").threat_model == "score-based" and attack_spec("linf_pgd").threat_model == "white-box"


def test_the_ensemble_is_autoattacks_standard_version_in_its_order():
    """APGD-CE, APGD-T, FAB-T, Square, each on the images the previous left standing (AutoAttack's order)."""
    assert stages("ensemble") == ("apgd_ce", "apgd_t", "fab_t", "square")
    assert stages("ensemble", 7) == stages("ensemble", 3) == stages("ensemble")
    assert dict(attack_class("ensemble")().budget) == {"steps": 100, "queries": 5000}  # the standard budget by default


def test_for_two_classes_the_ensemble_runs_a_second_apgd_start_instead_of_apgd_t():
    """With K = 2 APGD-T repeats APGD-CE's steps; its place goes to APGD on the margin from another start."""
    assert stages("ensemble", 2) == ("apgd_ce", "apgd_dlr", "fab_t", "square")
    assert attack_spec("apgd_dlr").random  # a random start of its own (the sweep seeds each stage apart)


def test_a_reduced_budget_is_labelled_and_only_the_default_is_standard():
    from training.contract.attacks import budget_label

    assert budget_label("ensemble", {"steps": 100, "queries": 5000}) == "standard"
    assert budget_label("ensemble", {"steps": 25, "queries": 300}) == "reduced (25 iterations, 300 queries)"
    assert budget_label("ensemble", {"steps": 100, "queries": 300}) == "reduced (100 iterations, 300 queries)"
    assert budget_label("ensemble", {"steps": 200, "queries": 300}) == "non-standard (200 iterations, 300 queries)"
    assert budget_label("fab_t", {"steps": 25}) == "reduced (25 iterations)"
    assert budget_label("linf_pgd", {"steps": 10, "step_ratio": 2.5, "random_start": True}) == "reduced (10 steps)"
    assert budget_label("linf_pgd", {"steps": 20, "random_start": False}) == (
        "non-standard (20 steps, random start False)"
    )
    assert budget_label("fgsm", {"steps": 1}) == "standard"  # nothing to reduce
    # A run's stored config (every AttackConfig setting) labels the same way.
    assert budget_label("ensemble", AttackConfig(attack="ensemble", steps=25, queries=300).budget()) == (
        "reduced (25 iterations, 300 queries)"
    )
    assert budget_label("ensemble", AttackConfig(attack="ensemble").budget()) == "standard"


def test_a_config_builds_each_attack_with_its_budget():
    config = AttackConfig(attack="ensemble", steps=7, queries=30)
    assert dict(attack_class("apgd_t").from_config(config).budget) == {"steps": 7}  # the ensemble's steps reach APGD
    assert dict(attack_class("square").from_config(config).budget) == {"queries": 30}
    pgd = attack_class("linf_pgd").from_config(AttackConfig(random_start=False))
    assert dict(pgd.budget) == {"steps": 20, "step_ratio": 2.5, "random_start": False}
    assert is_random("linf_pgd", AttackConfig()) and not is_random("linf_pgd", AttackConfig(random_start=False))
    assert is_random("square", AttackConfig()) and not is_random("ensemble", AttackConfig()) and not is_random("fgsm", AttackConfig())


def test_the_ensemble_is_run_by_its_stages_not_by_the_attacker():
    attacker = Attacker(served=None, config=AttackConfig(attack="ensemble"))
    with pytest.raises(TypeError, match="expected a single attack, got .ensemble."):
        attacker("ensemble", *[None] * 2, 0.01, None, None)


def test_distance_is_in_the_attacks_norm():
    import numpy as np

    clean = np.zeros((1, 2, 2, 3), np.float32)
    adversarial = clean + 0.1
    assert distance("l2_pgd", adversarial, clean) == pytest.approx(np.sqrt(12 * 0.01))
    assert distance("linf_pgd", adversarial, clean) == pytest.approx(0.1)


def test_config_validation_and_the_cli_read_the_registry():
    from medrobust.cli import build_parser

    with pytest.raises(ConfigError, match=re.escape(f"expected attacks among {attack_names()}, got 'nope'")):
        read_config(AuditConfig, {"attack": ["nope"]}, {})
    with pytest.raises(ValueError, match=re.escape(f"expected an attack in {attack_names()}, got 'nope'")):
        AttackConfig(attack="nope")
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["audit"]._subparsers._group_actions[0].choices["run"]
    attack = next(a for a in run._actions if a.dest == "attack")
    assert tuple(attack.choices) == attack_names()


def test_the_readme_table_is_the_registrys():
    readme = (ROOT / "README.md").read_text()
    assert attack_table_markdown() in readme, "regenerate the README's attack table: attack_table_markdown()"
    for name in attack_names():
        assert f"| `{name}` |" in readme


def test_the_dashboard_attack_variable_lists_every_registered_attack():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "robustness.json").read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "attack")
    assert [option["value"] for option in variable["options"]] == list(attack_names())


def _literal_names(node: ast.AST) -> set[str]:
    elements = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", [])
    return {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)} & set(attack_names())


def test_no_other_module_spells_the_list_of_attacks():
    """A copy of the list is how the dashboards once lost `ensemble`, `apgd_*` and `square`.

    Three or more names in one literal make a list; a pair (the report's styles for PGD and the
    ensemble) is a choice about those two.
    """
    offenders = []
    for package in ("training", "service", "audit", "medrobust", "deploy", "bench", "tools"):
        for path in (ROOT / package).rglob("*.py"):
            if path == REGISTRY_MODULE:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and len(_literal_names(node)) >= 3:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(_literal_names(node))}")
    assert not offenders, "attack names listed outside training/contract/attacks.py:\n" + "\n".join(offenders)
