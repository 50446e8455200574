"""The Predictor protocol, one suite run against both backends on the tiny exported models."""

from __future__ import annotations

import numpy as np
import pytest

from service.predictor import Predictor
from training.contract.errors import InvalidInput, ModelNotFound


def _batch(n: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def test_is_a_predictor(predictor):
    assert isinstance(predictor, Predictor)
    assert predictor.ready()


def test_model_states_name_every_model_and_one_is_available(predictor, tiny_repo):
    states = predictor.model_states()
    assert set(states) == set(tiny_repo.models) and "AVAILABLE" in states.values()
    assert set(states.values()) <= {"AVAILABLE", "START"}  # START: embedded, in the repository, loaded on first use


def test_lists_models_with_cards(predictor, tiny_repo):
    models = {m.name: m for m in predictor.list_models()}
    assert set(models) == set(tiny_repo.models)
    info = predictor.model_info(tiny_repo.attention)
    assert info.versions == (1,) and info.latest == 1 and info.state == "AVAILABLE"
    assert info.card["attention"] is True and info.card["input_size"] == [64, 64]
    assert predictor.model_card(tiny_repo.baseline, 1)["name"] == tiny_repo.baseline


def test_signatures_answer_the_contract(predictor, tiny_repo):
    x = _batch()
    p = predictor.predict(tiny_repo.baseline, x)
    assert p.version == 1 and p.probabilities.shape == (2, 3) and p.class_id.dtype == np.int64
    np.testing.assert_allclose(p.probabilities.sum(axis=1), 1.0, atol=1e-5)
    g = predictor.gradcam(tiny_repo.attention, x)
    assert g.heatmap.shape == (2, 64, 64) and g.attention_map.shape == (2, 64, 64)
    assert 0.0 <= g.heatmap.min() and g.heatmap.max() <= 1.0 + 1e-6
    assert predictor.gradcam(tiny_repo.baseline, x).attention_map is None
    v = predictor.vjp(tiny_repo.baseline, x, np.eye(3, dtype=np.float32)[[0, 1]])
    assert v.gradient.shape == (2, 64, 64, 3) and np.abs(v.gradient).sum() > 0


def test_backends_agree(embedded_predictor, tfserving_predictor, tiny_repo):
    x = _batch(seed=3)
    a = embedded_predictor.gradcam(tiny_repo.attention, x)
    b = tfserving_predictor.gradcam(tiny_repo.attention, x)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)
    # The gradient the audit's attacks follow: the same through either backend, so an attack
    # checked against an independent PGD on one backend is checked on both.
    cotangent = np.random.default_rng(4).normal(size=a.probabilities.shape).astype(np.float32)
    u = embedded_predictor.vjp(tiny_repo.attention, x, cotangent)
    v = tfserving_predictor.vjp(tiny_repo.attention, x, cotangent)
    np.testing.assert_allclose(u.logits, v.logits, atol=1e-4)
    np.testing.assert_allclose(u.gradient, v.gradient, rtol=1e-3, atol=1e-5)
    assert np.abs(u.gradient).max() > 0


@pytest.mark.parametrize("version", [1, "1", None, "latest"])
def test_version_forms(predictor, tiny_repo, version):
    assert predictor.predict(tiny_repo.baseline, _batch(1), version=version).version == 1


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p, m: p.predict("nope-resnet50-baseline", _batch(1)), ModelNotFound),
        (lambda p, m: p.model_info("../../etc"), ModelNotFound),
        (lambda p, m: p.predict(m, _batch(1), version=7), ModelNotFound),
        (lambda p, m: p.predict(m, _batch(1), version="canary"), ModelNotFound),
        (lambda p, m: p.predict(m, _batch(1, size=32)), InvalidInput),
        (lambda p, m: p.predict(m, np.zeros((0, 64, 64, 3), np.float32)), InvalidInput),
        (lambda p, m: p.vjp(m, _batch(2), np.ones((2, 5), np.float32)), InvalidInput),
    ],
    ids=["unknown model", "path-like name", "unknown version", "unknown label", "wrong size", "empty batch", "bad cotangent"],
)
def test_errors(predictor, tiny_repo, call, error):
    with pytest.raises(error) as caught:
        call(predictor, tiny_repo.baseline)
    assert caught.value.message and caught.value.http_status in (400, 404)
