"""The audit attacks the served model at least as hard as an independent PGD, through both backends."""

from __future__ import annotations

import numpy as np
import pytest

from training.contract.config import AttackConfig, AuditConfig

EPSILONS = ("0", "0.0025", "0.01", "0.04")
STEPS = 5
APGD_STEPS = 20
SAMPLES = 8


@pytest.fixture(scope="module")
def dataset(tiny_repo):
    from training.datasets import load_dataset

    return load_dataset(tiny_repo.dataset_spec, seed=0)


def _config(tiny_repo, **attack):
    return AuditConfig(
        dataset=tiny_repo.dataset_spec, samples=SAMPLES, progress=False,
        attack=AttackConfig(**{"epsilons": EPSILONS, "steps": STEPS, "batch_size": 8, "queries": 20, **attack}),
    )


def independent_pgd(saved_model_dir, images, labels, epsilon, steps):
    """Plain L-inf PGD with a GradientTape on the SavedModel's serving_default: the audit's yardstick."""
    import tensorflow as tf

    module = tf.saved_model.load(str(saved_model_dir))
    serve = module.signatures["serving_default"]
    x0 = tf.constant(images)
    y = tf.constant(labels, tf.int64)
    step = 2.5 * epsilon / steps
    x = tf.clip_by_value(x0 + tf.random.uniform(x0.shape, -epsilon, epsilon), 0.0, 1.0)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = serve(image=x)["logits"]
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        x = x + step * tf.sign(tape.gradient(loss, x))
        x = tf.clip_by_value(tf.clip_by_value(x, x0 - epsilon, x0 + epsilon), 0.0, 1.0)
    return serve(image=x)["class_id"].numpy()


# ~45 s a case on a quiet machine, so the quick tier keeps one: the attentive model through TF
# Serving (the deployed path); --all-tiers adds the baseline through the embedded backend. The
# other two pairings add nothing: the backends answer the same `vjp`
# (test_service_backends::test_backends_agree), and the next test audits both models on both.
@pytest.mark.parametrize(
    ("predictor", "model_kind"),
    [("tfserving", "attention"), pytest.param("embedded", "baseline", marks=pytest.mark.slow)],
    indirect=["predictor"],
)
def test_an_independent_pgd_never_fools_more_than_the_audit(predictor, tiny_repo, dataset, model_kind):
    import tensorflow as tf

    from audit.runner import audit_model

    tf.random.set_seed(0)
    model = getattr(tiny_repo, model_kind)
    audit = audit_model(predictor, model, dataset, _config(tiny_repo))
    result = audit.result
    assert result.backend == predictor.backend_name and result.version == 1
    assert len(result.audit_set) == SAMPLES and [p.epsilon for p in result.points] == list(EPSILONS)
    labels = np.asarray(result.audit_set.labels, np.int64)
    correct = audit.sweep.correct
    for index, eps in enumerate(EPSILONS):
        audit_robust = int(audit.sweep.robust_mask(index).sum())
        assert result.points[index].robust_accuracy == pytest.approx(audit_robust / SAMPLES)
        # The per-class counts every interval is drawn from, read from the stored per-image outcomes,
        # are the sweep's own, class by class.
        mask = audit.sweep.robust_mask(index)
        assert result.points[index].class_counts == {
            name: (int(mask[labels == c].sum()), int((labels == c).sum()))
            for c, name in enumerate(result.audit_set.class_names) if (labels == c).any()
        }
        if eps == "0":
            assert audit_robust == int(correct.sum())
            continue
        predicted = independent_pgd(tiny_repo.path / model / "1", audit.images, labels, float(eps), STEPS)
        independent_robust = int((correct & (predicted == labels)).sum())
        assert independent_robust >= audit_robust, f"independent PGD beat the audit at epsilon {eps}"
    # Nested: every image counted as fooled was verified at its epsilon, and later epsilons skip it.
    attacked = [p.attacked for p in result.points]
    assert attacked == sorted(attacked, reverse=True)
    # Two epochs on 160 images leave the tiny model answering mostly one class, which
    # degenerate_predictions reports (test_audit_sanity_fixtures covers it); every other check passes.
    failed = [c for c in result.sanity if not c.passed and c.name != "degenerate_predictions"]
    assert not failed, failed


def test_every_counted_example_is_inside_the_ball_and_misclassified_as_served(predictor, tiny_repo, dataset):
    from audit.runner import audit_model
    from audit.sweep import NEVER

    audit = audit_model(predictor, tiny_repo.baseline, dataset, _config(tiny_repo))
    sweep = audit.sweep
    fooled = np.flatnonzero((sweep.fooled_at != NEVER) & sweep.correct)
    assert len(fooled), "expected the briefly trained model to be fooled somewhere on the grid"
    for i in fooled:
        eps = float(EPSILONS[sweep.fooled_at[i]])
        assert np.abs(sweep.adversarial[i] - audit.images[i]).max() <= eps + 1e-6
        assert sweep.adversarial[i].min() >= 0.0 and sweep.adversarial[i].max() <= 1.0
    served = predictor.predict(tiny_repo.baseline, sweep.adversarial[fooled], version=1).class_id
    assert np.all(served != sweep.labels[fooled])
    assert np.array_equal(served, sweep.adversarial_class[fooled])


@pytest.mark.parametrize("attack", ["fgsm", "l2_pgd", "uniform_noise"])
def test_the_other_attacks_run_and_stay_in_their_balls(embedded_predictor, tiny_repo, dataset, attack):
    from audit.runner import audit_model

    config = _config(tiny_repo, attack=attack, noise_check=False)
    result = audit_model(embedded_predictor, tiny_repo.attention, dataset, config).result
    assert result.attack == attack
    assert {c.name: c.passed for c in result.sanity}["perturbations_bounded"]
    robust = [p.robust_accuracy for p in result.points]
    assert robust == sorted(robust, reverse=True) and robust[0] == result.clean_accuracy


@pytest.mark.slow  # ~30 s; the quick tier runs the ensemble on the sanity fixtures and against ART
def test_the_ensemble_through_tf_serving_is_never_weaker_than_pgd(tfserving_predictor, tiny_repo, dataset):
    """AutoAttack's order on the survivors, each example verified as served; fooled_by adds up to what fell."""
    from audit.attacks import stages
    from audit.runner import audit_model
    from audit.sweep import NEVER

    model = tiny_repo.attention
    pgd = audit_model(tfserving_predictor, model, dataset, _config(tiny_repo), attack="linf_pgd")
    # APGD's schedule needs room: at 5 iterations it is weaker than 5 PGD steps here, at 20 far stronger.
    config = _config(tiny_repo, attack="ensemble", steps=APGD_STEPS)
    ensemble = audit_model(tfserving_predictor, model, dataset, config, attack="ensemble")
    result, sweep = ensemble.result, ensemble.sweep
    assert result.attack == "ensemble" and result.steps == APGD_STEPS and result.backend == "tfserving"
    assert result.audit_set.fingerprint == pgd.result.audit_set.fingerprint
    for mine, theirs in zip(result.points, pgd.result.points):
        assert mine.robust_accuracy <= theirs.robust_accuracy, f"the ensemble is weaker than PGD at {mine.epsilon}"
    fooled = np.flatnonzero((sweep.fooled_at != NEVER) & (sweep.fooled_at > 0) & sweep.correct)
    assert result.stages == stages("ensemble", len(result.audit_set.class_names))  # AutoAttack's four, in order
    assert set(result.fooled_by) <= set(result.stages) and sum(result.fooled_by.values()) == len(fooled)
    assert result.to_json()["fooled_by"] == result.fooled_by
    served = tfserving_predictor.predict(model, sweep.adversarial[fooled], version=1).class_id
    assert np.all(served != sweep.labels[fooled])
    for i in fooled:
        assert np.abs(sweep.adversarial[i] - ensemble.images[i]).max() <= float(EPSILONS[sweep.fooled_at[i]]) + 1e-6


def test_a_model_without_vjp_fails_with_a_clear_error(tiny_repo, tmp_path):
    import json
    import shutil

    from audit.foolbox_model import AuditError, ServedModel
    from service.embedded import EmbeddedPredictor

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo.path / tiny_repo.baseline, repo / tiny_repo.baseline)
    card_path = repo / tiny_repo.baseline / "1" / "assets.extra" / "model_card.json"
    card = json.loads(card_path.read_text())
    del card["signatures"]["vjp"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(AuditError, match="expected a 'vjp' signature to attack the served model"):
        ServedModel(EmbeddedPredictor(repo), tiny_repo.baseline, 1)
