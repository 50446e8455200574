"""The embedded backend: hot swap of new versions under load, thread safety, the cap on loaded models."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.embedded import EmbeddedPredictor

X = np.full((1, 64, 64, 3), 0.5, np.float32)


def _publish_copy(repo, model: str, version: int) -> None:
    """A new version the way export publishes one: written beside, renamed into place."""
    staged = repo / f".staging-{version}"
    shutil.copytree(repo / model / "1", staged)
    staged.rename(repo / model / str(version))


@pytest.fixture
def counting_loads(monkeypatch):
    import tensorflow as tf

    calls: list[str] = []
    real = tf.saved_model.load

    def load(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tf.saved_model, "load", load)
    return calls


@pytest.mark.slow  # requests under load through a swap: ~20 s
def test_background_polling_swaps_in_a_new_version_without_failing_requests(copy_repo, tiny_repo, counting_loads):
    repo = copy_repo()
    p = EmbeddedPredictor(repo, poll_seconds=0.2)
    p.start_polling()
    try:
        assert p.predict(tiny_repo.baseline, X).version == 1
        stop = threading.Event()
        answered: list[int] = []
        failures: list[BaseException] = []

        def client() -> None:
            while not stop.is_set():
                try:
                    answered.append(p.predict(tiny_repo.baseline, X).version)
                except BaseException as exc:  # any failure during the swap is the bug under test
                    failures.append(exc)

        with ThreadPoolExecutor(3) as pool:
            for _ in range(3):
                pool.submit(client)
            time.sleep(0.3)
            _publish_copy(repo, tiny_repo.baseline, 2)
            deadline = time.monotonic() + 60
            while (not answered or answered[-1] != 2) and time.monotonic() < deadline:
                time.sleep(0.1)
            stop.set()
        assert not failures
        assert answered[0] == 1 and answered[-1] == 2
        first_two = answered.index(2)
        assert set(answered[first_two:]) == {2}  # no request goes back to the old version
        assert p.model_info(tiny_repo.baseline).versions == (1, 2)
        assert p.loaded_count() == 1  # version 1 left the cache once 2 took over
        assert p.predict(tiny_repo.baseline, X, version=1).version == 1  # but stays reachable pinned
    finally:
        p.close()


def test_concurrent_first_requests_load_a_version_once(tiny_repo, counting_loads):
    p = EmbeddedPredictor(tiny_repo.path, poll_seconds=3600)
    try:
        with ThreadPoolExecutor(6) as pool:
            versions = list(pool.map(lambda _: p.gradcam(tiny_repo.attention, X).version, range(6)))
        assert versions == [1] * 6
        assert len(counting_loads) == 1
    finally:
        p.close()


def test_max_loaded_evicts_least_recently_used(tiny_repo, counting_loads):
    p = EmbeddedPredictor(tiny_repo.path, max_loaded=1, poll_seconds=3600)
    try:
        p.predict(tiny_repo.baseline, X)
        p.predict(tiny_repo.attention, X)
        assert p.loaded_count() == 1
        p.predict(tiny_repo.baseline, X)
        assert len(counting_loads) == 3  # the baseline was evicted and loaded again
    finally:
        p.close()


def test_lazy_refresh_notices_new_versions_without_the_poller(copy_repo, tiny_repo):
    repo = copy_repo()
    p = EmbeddedPredictor(repo, poll_seconds=0.05)
    try:
        assert p.model_info(tiny_repo.attention).latest == 1
        _publish_copy(repo, tiny_repo.attention, 2)
        time.sleep(0.1)
        assert p.model_info(tiny_repo.attention).latest == 2
    finally:
        p.close()


def test_rejects_a_cap_below_one(tiny_repo):
    with pytest.raises(ValueError, match="expected max_loaded >= 1, got 0"):
        EmbeddedPredictor(tiny_repo.path, max_loaded=0)
