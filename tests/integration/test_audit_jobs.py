"""Jobs carried out on the tiny models (SQLite, quick tier): a transient backend error is retried and
then succeeds, a job that keeps failing is given up, a stopping worker gives its job back, and the
next claim says the run was restarted after an interruption."""

from __future__ import annotations

import threading

import pytest

from training.contract.config import AttackConfig, AuditConfig
from training.contract.errors import BackendUnavailable


class _Flaky:
    """The embedded predictor, whose `vjp` fails `failures` times as an unreachable TF Serving does;
    its first `vjp` sets `attacking` and waits for `resume` (set at once unless the test holds it)."""

    def __init__(self, predictor, failures: int, *, hold: bool = False):
        self._predictor, self.failures, self.attacking = predictor, failures, threading.Event()
        self.resume = threading.Event()
        if not hold:
            self.resume.set()

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def vjp(self, *args, **kwargs):
        self.attacking.set()
        assert self.resume.wait(120), "the test never resumed the attack"
        if self.failures:
            self.failures -= 1
            raise BackendUnavailable("TF Serving at 127.0.0.1:8500 did not answer: UNAVAILABLE")
        return self._predictor.vjp(*args, **kwargs)


@pytest.fixture
def jobs(tiny_repo, embedded_predictor, tmp_path):
    """(config, store, make_runner(predictor)) over a fresh SQLite store; max two attempts."""
    from audit.runner import AuditRunner
    from audit.store import AuditStore

    config = AuditConfig(
        model_repo=tiny_repo.path, dataset=tiny_repo.dataset_spec, samples=4, progress=False, max_attempts=2,
        database_url=f"sqlite:///{tmp_path / 'audits.sqlite'}", artefacts_dir=tmp_path / "artefacts",
        attack=AttackConfig(epsilons=("0", "0.01"), steps=1, batch_size=4, noise_check=False),
    )
    store = AuditStore(config.database_url)

    def make_runner(predictor):
        return AuditRunner(config, predictor, store, retry_delay_seconds=0)

    yield config, store, make_runner
    store.close()


def _queue(store, runner, model: str) -> int:
    return store.enqueue(model=model, version=1, card={"task": "demo"}, backend="embedded", attack="linf_pgd",
                         config=runner.run_config(), max_attempts=2).run_id


def test_a_transient_backend_error_is_retried_and_the_retry_succeeds(jobs, tiny_repo, embedded_predictor):
    _config, store, make_runner = jobs
    runner = make_runner(_Flaky(embedded_predictor, failures=1))
    run_id = _queue(store, runner, tiny_repo.baseline)
    first = runner.carry_out(store.claim(60))
    assert (first.run_id, first.status) == (run_id, "queued")
    error = store.get_run(run_id).error
    assert error.startswith("queued again: AuditError:") and "TF Serving at 127.0.0.1:8500 did not answer" in error
    second = runner.carry_out(store.claim(60))
    assert second.status == "succeeded"
    run = store.get_run(run_id)
    assert (run.status, run.attempt, run.error, run.note) == ("succeeded", 2, None, "restarted after interruption (attempt 2)")
    assert run.to_json()["progress"]["fraction"] == 1.0


def test_a_job_that_keeps_failing_is_given_up_with_the_reason(jobs, tiny_repo, embedded_predictor):
    _config, store, make_runner = jobs
    runner = make_runner(_Flaky(embedded_predictor, failures=10))
    run_id = _queue(store, runner, tiny_repo.baseline)
    assert [runner.carry_out(store.claim(60)).status for _ in range(2)] == ["queued", "failed"]
    assert store.claim(60) is None
    run = store.get_run(run_id)
    assert run.status == "failed" and run.error.startswith("gave up after 2 attempts; the last: AuditError:")
    assert "did not answer: UNAVAILABLE" in run.error
    assert store.run_counts() == {(tiny_repo.baseline, "failed"): 1}  # one run, counted once


def test_a_permanent_error_fails_at_the_first_attempt(jobs, tiny_repo, embedded_predictor):
    _config, store, make_runner = jobs
    runner = make_runner(embedded_predictor)
    run_id = store.enqueue(model=tiny_repo.baseline, version=1, card={}, backend="embedded", attack="linf_pgd",
                           config=runner.run_config(dataset="folder:/nowhere")).run_id  # a dataset that is not there
    outcome = runner.carry_out(store.claim(60))
    assert outcome.status == "failed" and store.get_run(run_id).attempt == 1


def test_a_stopping_worker_gives_its_job_back_and_the_next_claim_restarts_it(jobs, tiny_repo, embedded_predictor):
    _config, store, make_runner = jobs
    flaky = _Flaky(embedded_predictor, failures=0, hold=True)
    runner = make_runner(flaky)
    run_id = _queue(store, runner, tiny_repo.attention)
    stop = threading.Event()
    job = store.claim(60)
    result = {}
    thread = threading.Thread(target=lambda: result.update(outcome=runner.carry_out(job, stop=stop)))
    thread.start()
    assert flaky.attacking.wait(120)
    stop.set()  # SIGTERM: the worker's loop sets this
    flaky.resume.set()
    thread.join(120)
    assert result["outcome"].status == "queued"
    run = store.get_run(run_id)
    assert run.status == "queued" and "the worker stopped" in run.error and run.points == ()
    assert make_runner(embedded_predictor).carry_out(store.claim(60)).status == "succeeded"
    assert store.get_run(run_id).note == "restarted after interruption (attempt 2)"
