"""The sanity checks catch a served model whose gradients are masked, and pass an honest one."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from tests.audit_runs import audit_now
from training.contract.config import AttackConfig, AuditConfig


def export_masked(source_dir, target_dir):
    """The tiny model behind an 8-bit input quantiser: predictions as before, input gradient zero.

    Rounding has a zero derivative almost everywhere, so the chain rule through it masks every
    gradient: the classic obfuscated-gradient defence, served with the contract's three signatures.
    """
    import tensorflow as tf

    inner = tf.saved_model.load(str(source_dir))
    card = json.loads((source_dir / "assets.extra" / "model_card.json").read_text())
    h, w = card["input_size"]
    k = card["num_classes"]

    class Masked(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def _logits(self, image):
            quantised = tf.round(image * 255.0) / 255.0
            return self.inner.signatures["serving_default"](image=quantised)["logits"]

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="image")])
        def serve(self, image):
            logits = self._logits(image)
            return {"logits": logits, "probabilities": tf.nn.softmax(logits), "class_id": tf.argmax(logits, -1, output_type=tf.int64)}

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="image")])
        def gradcam(self, image):
            out = self.inner.signatures["gradcam"](image=tf.round(image * 255.0) / 255.0)
            return {key: out[key] for key in ("probabilities", "class_id", "heatmap")}

        @tf.function(input_signature=[
            tf.TensorSpec([None, h, w, 3], tf.float32, name="image"), tf.TensorSpec([None, k], tf.float32, name="cotangent"),
        ])
        def vjp(self, image, cotangent):
            with tf.GradientTape() as tape:
                tape.watch(image)
                logits = self._logits(image)
                total = tf.reduce_sum(logits * cotangent)
            gradient = tape.gradient(total, image, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return {"logits": logits, "gradient": gradient}

    module = Masked()
    tf.saved_model.save(module, str(target_dir), signatures={"serving_default": module.serve, "gradcam": module.gradcam, "vjp": module.vjp})
    (target_dir / "assets.extra").mkdir(exist_ok=True)
    (target_dir / "assets.extra" / "model_card.json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
def masked_repo(tiny_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("masked-repo")
    export_masked(tiny_repo.path / tiny_repo.baseline / "1", repo / tiny_repo.baseline / "1")
    return repo


def _config(tiny_repo):
    return AuditConfig(
        dataset=tiny_repo.dataset_spec, samples=8, progress=False,
        attack=AttackConfig(epsilons=("0", "0.01", "0.08"), steps=3, batch_size=8, queries=20),
    )


@pytest.mark.slow  # exports a model of its own: ~40 s
def test_a_masked_gradient_fails_the_gradient_check_and_is_exported(masked_repo, tiny_repo, tmp_path):
    from audit.metrics import AuditCollector
    from audit.store import AuditStore
    from service.embedded import EmbeddedPredictor

    predictor = EmbeddedPredictor(masked_repo)
    honest = EmbeddedPredictor(tiny_repo.path)
    registry = CollectorRegistry()
    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    config = _config(tiny_repo).with_(artefacts_dir=tmp_path / "art")
    registry.register(AuditCollector(store))
    run_id, audit = audit_now(config, predictor, store, tiny_repo.baseline)
    checks = {c.name: c for c in audit.result.sanity}
    assert not checks["gradients_not_vanishing"].passed
    assert " images have a non-finite margin gradient or one under 0.001 of the logits' scale" in checks["gradients_not_vanishing"].detail
    assert not audit.result.sanity_passed
    # Rounding's zero gradient is not the forward's: the audit is black-box only, and the honest one is not.
    assert not checks["gradient_consistent"].passed and audit.result.black_box_only
    run = store.get_run(run_id)
    assert run.status == "succeeded" and run.sanity_passed is False
    assert {s["check"]: s["passed"] for s in run.sanity}["gradients_not_vanishing"] is False
    assert registry.get_sample_value(
        "medrobust_audit_sanity_check_failed", {"model": tiny_repo.baseline, "check": "gradients_not_vanishing", "attack": "linf_pgd", "version": "1"}
    ) == 1
    # The honest model, same images, passes every check.
    honest_audit = audit_now(config, honest, store, tiny_repo.baseline)[1]
    # Two epochs on 160 images leave the tiny model answering mostly one class, which
    # degenerate_predictions reports (test_audit_sanity_fixtures covers it); every other check passes.
    failed = [c for c in honest_audit.result.sanity if not c.passed and c.name != "degenerate_predictions"]
    assert not failed, failed
    assert not honest_audit.result.black_box_only
    # The masked model's forward pass is the honest one's on 8-bit-rounded input: same predictions, near enough.
    assert (audit.sweep.clean_class == honest_audit.sweep.clean_class).mean() >= 0.75
