"""One audit job from its claim to its stored outcome: the attack, its progress, its lease's heartbeat.

`audit_model` attacks one served model version and stores nothing. `AuditRunner.carry_out` does
one job a worker has claimed: it renews the job's lease while the audit runs, writes the run's
progress at a bounded rate, stops at the next checkpoint when the job is cancelled or the worker
stops, and writes the outcome (retrying for a while when the database is away: a lease that runs
out meanwhile is how another worker gets the job instead).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from audit.auditset import draw_audit_set
from training.contract.config import AttackConfig, AuditConfig
from audit.foolbox_model import AuditError, ServedModel
from audit.results import AuditResult, EpsilonPoint, SampleOutcome, class_counts, rates, standing
from audit.attacks import Attacker
from audit.sanity import preflight, run_checks
from audit.store import AuditStore, ClaimedJob, LeaseLost
from audit.sweep import NEVER, Sweep, run_sweep, sweep_work
from service.predictor import Predictor
from training.contract.errors import HttpError

if TYPE_CHECKING:
    from training.dataset_types import Dataset

log = logging.getLogger(__name__)
EXAMPLES = 4
PROGRESS_EVERY_SECONDS = 2.0  # the most often a run's progress row is written
OUTCOME_RETRY_SECONDS = 600.0  # how long a finished audit keeps trying to reach the database
RETRY_DELAY_SECONDS = 5.0  # before a job that met a transient error is claimed again (doubling per attempt)


class AuditStopped(Exception):
    """The audit was stopped at a checkpoint: cancelled, its lease lost, or its worker stopping."""


def transient(exc: BaseException) -> bool:
    """An error worth another attempt: the model server or the database was unreachable or too slow.

    Anything else (a model that does not fit its dataset, an unreadable dataset) fails the same way
    each time, so the job fails at once with it. The cause counts too: the audit words a server's
    failure in its own terms (`raise AuditError(...) from exc`)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (ConnectionError, TimeoutError, sa.exc.OperationalError)):
            return True
        if isinstance(cause, HttpError) and cause.http_status in (502, 503, 504):
            return True
        cause = cause.__cause__
    return False


class NoAuditSet(HttpError):
    """The model's task has no audit set: auditing it on another task's data would mean nothing (409)."""

    code = "no_audit_set"
    http_status = 409


@dataclass(frozen=True)
class Audit:
    """A finished audit: the result, and the arrays the report's pictures are drawn from."""

    result: AuditResult
    sweep: Sweep
    images: np.ndarray


def audit_model(
    predictor: Predictor, model: str, dataset: Dataset, config: AuditConfig, *, version: int | None = None,
    attack: str | None = None, progress: Callable[[int, int], None] | None = None,
) -> Audit:
    """Attack one served model version with one attack (the first configured unless named) over the grid,
    on its audit set; nothing is stored here. `progress(done, total)` counts images x epsilons and
    is the audit's checkpoint: raising from it stops the audit."""
    started = time.perf_counter()
    config = config.with_(attack=config.attack_config(attack))
    info = predictor.model_info(model)
    served = ServedModel(predictor, model, info.latest if version is None else version, batch_size=config.attack.batch_size)
    card = served.card
    if int(card["num_classes"]) != dataset.num_classes:
        raise AuditError(
            f"{model} version {served.version}: expected a dataset with its {card['num_classes']} classes, "
            f"got {dataset.source} with {dataset.num_classes}"
        )
    # An equal count is not the same task: the classes must be the card's, in its order.
    classes = tuple(card.get("class_names") or ())
    if classes and classes != tuple(dataset.class_names):
        raise AuditError(
            f"{model} version {served.version}: expected an audit set of task {card.get('task')!r} with classes "
            f"{list(classes)}, got {dataset.source} with {list(dataset.class_names)}"
        )
    trained_on = (card.get("dataset") or {}).get("fingerprint")
    if trained_on and trained_on != dataset.fingerprint:
        log.warning("%s version %s was trained on dataset %s, auditing on %s", model, served.version, trained_on[:12], dataset.fingerprint[:12])
    audit_set, images = draw_audit_set(dataset, n=config.samples, seed=config.seed, image_size=int(card["input_size"][0]))
    if len(audit_set) < config.samples:
        log.warning("%s version %s: %d images asked, %d in the test split of %s: auditing on %d", model, served.version,
                    config.samples, len(audit_set), dataset.source, len(audit_set))
    labels = np.asarray(audit_set.labels, np.int64)
    served.check_vjp(images)
    # A served gradient that is not the forward's would make every gradient attack, and the checks
    # after it, measure nothing: checked first, and the attack made query-only when it fails.
    before = preflight(served, images, labels, config.attack)
    tick = None
    if progress is not None:
        total, done = sweep_work(len(labels), config.attack), [0]
        progress(0, total)

        def tick(images_done: int) -> None:
            done[0] = min(total, done[0] + images_done)
            progress(done[0], total)

    # A caller counting progress shows it its own way (the worker's rows, `audit run`'s bar); else
    # the sweep's own bar per epsilon (`reproduce`).
    sweep = run_sweep(served, images, labels, before.config, progress=config.progress and progress is None, tick=tick)
    sanity = before.checks + run_checks(
        served, Attacker(served, before.config), sweep, images, labels, before.config, clean_logits=served.logits(images)
    )
    samples = tuple(
        SampleOutcome(
            sample_id=sid, label=int(labels[i]), clean_class=int(sweep.clean_class[i]),
            fooled_at=None if sweep.fooled_at[i] == NEVER else config.attack.epsilons[sweep.fooled_at[i]],
            adversarial_class=None if sweep.fooled_at[i] == NEVER else int(sweep.adversarial_class[i]),
        )
        for i, sid in enumerate(audit_set.sample_ids)
    )
    # Every figure is counted from the per-image outcomes the store keeps, class by class, so the
    # mean, the balanced figure, each class and their intervals are one count read several ways.
    names = audit_set.class_names
    points: list[EpsilonPoint] = []
    for i, eps in enumerate(config.attack.epsilons):
        noise = sweep.noise_robust_mask(i)
        points.append(EpsilonPoint.counted(
            eps, class_counts(standing(samples, eps), labels.tolist(), names), attacked=sweep.attacked[i],
            fooled=sweep.fooled[i], noise_robust_accuracy=None if noise is None else float(noise.mean()),
        ))
    clean, balanced_clean, _ = rates(class_counts(sweep.correct.tolist(), labels.tolist(), names))
    result = AuditResult(
        model=model, version=served.version, task=str(card.get("task", "")), backbone=str(card.get("backbone", "")),
        attention=bool(card.get("attention", False)), backend=predictor.backend_name, attack=config.attack.attack,
        steps=config.attack.iterations, restarts=config.attack.restarts, audit_set=audit_set,
        clean_accuracy=clean, balanced_clean_accuracy=balanced_clean, points=tuple(points), samples=samples,
        sanity=sanity, seconds=time.perf_counter() - started, seed=config.attack.seed,
        fooled_by=sweep.fooled_by_counts(), budget=config.attack.budget(), stages=sweep.stages,
    )
    return Audit(result, sweep, images)


def save_examples(audit: Audit, predictor: Predictor, directory: Path) -> Path:
    """A few verified adversarial examples with their Grad-CAM, clean and adversarial, for the report."""
    sweep, result = audit.sweep, audit.result
    fooled = np.flatnonzero((sweep.fooled_at != NEVER) & (sweep.fooled_at > 0) & sweep.correct)
    order = fooled[np.argsort(sweep.fooled_at[fooled], kind="stable")]
    pick = order[np.linspace(0, len(order) - 1, min(EXAMPLES, len(order))).astype(int)] if len(order) else order
    directory.mkdir(parents=True, exist_ok=True)
    clean, adversarial = audit.images[pick], sweep.adversarial[pick]
    arrays = {
        "index": pick, "clean": clean, "adversarial": adversarial, "labels": sweep.labels[pick],
        "clean_class": sweep.clean_class[pick], "adversarial_class": sweep.adversarial_class[pick],
        "epsilon": np.array([result.points[i].epsilon for i in sweep.fooled_at[pick]], dtype=str),
        "sample_ids": np.array([result.audit_set.sample_ids[i] for i in pick], dtype=str),
    }
    if len(pick):
        for key, batch in (("clean", clean), ("adversarial", adversarial)):
            cam = predictor.gradcam(result.model, batch, version=result.version)
            arrays[f"{key}_heatmap"] = cam.heatmap
    path = directory / "examples.npz"
    tmp = directory / "examples.tmp.npz"
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub matches the names to allow_pickle too
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class RunProgress:
    """How far a run is: images x epsilons `done` of `total`, and the time left at the pace so far."""

    run_id: int
    done: int
    total: int
    eta_seconds: float | None


@dataclass(frozen=True)
class Outcome:
    """What became of a claimed job: `succeeded`, `failed`, `cancelled`, `queued` (given back to be
    tried again) or `lost` (another worker has it now; nothing was written)."""

    run_id: int
    status: str
    audit: Audit | None = None
    error: str | None = None


def attack_config_of(run_config: Mapping[str, Any]) -> AttackConfig:
    """The attack and budget a job was queued with (its run's stored config)."""
    names = {f.name for f in fields(AttackConfig)}
    values = {k: v for k, v in run_config.items() if k in names}
    values["epsilons"] = tuple(values.get("epsilons", ()))
    return AttackConfig(**values)


class _Heartbeat:
    """Renews a job's lease every third of it in a thread; `stop_reason` says why the audit must stop."""

    def __init__(self, store: AuditStore, job: ClaimedJob, lease_seconds: float) -> None:
        self.store, self.job, self.lease_seconds = store, job, lease_seconds
        self.stop_reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job.run_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self.lease_seconds / 3):
            try:
                state = self.store.renew(self.job.job_id, self.lease_seconds)
            except sa.exc.DBAPIError as exc:  # the database is away: keep working, the lease may still hold
                log.warning("run %s: lease not renewed, the database did not answer: %s", self.job.run_id, exc.orig)
                continue
            if state != "held":
                self.stop_reason = state
                return


class AuditRunner:
    """Carries out claimed jobs against a predictor, into a store."""

    def __init__(self, config: AuditConfig, predictor: Predictor, store: AuditStore, *,
                 load_dataset: Callable[[str], Dataset] | None = None, outcome_retry_seconds: float = OUTCOME_RETRY_SECONDS,
                 retry_delay_seconds: float = RETRY_DELAY_SECONDS) -> None:
        self.config = config
        self.predictor = predictor
        self.store = store
        self._load_dataset = load_dataset
        self.outcome_retry_seconds = outcome_retry_seconds
        self.retry_delay_seconds = retry_delay_seconds
        self._datasets: dict[str, Dataset] = {}
        self._dataset_lock = threading.Lock()  # a dataset loads once, however many jobs ask for it

    def dataset(self, spec: str | None = None) -> Dataset:
        spec = spec or self.config.dataset
        if not spec:
            raise AuditError("expected a dataset to draw the audit set from (--dataset or MEDROBUST_AUDIT_DATASET), got none")
        with self._dataset_lock:
            if spec not in self._datasets:
                if self._load_dataset is None:
                    from training.datasets import load_dataset

                    self._datasets[spec] = load_dataset(spec, seed=self.config.seed)
                else:
                    self._datasets[spec] = self._load_dataset(spec)
            return self._datasets[spec]

    def run_config(self, attack: str | None = None, dataset: str | None = None) -> dict[str, Any]:
        """What a job of `attack` on `dataset` (the configured one unless named) is queued with: the
        attack and its budget, the audit set's spec and size, the seed."""
        config = self.config.attack_config(attack)
        doc = asdict(config)
        doc["epsilons"] = list(config.epsilons)
        doc["steps"] = config.iterations
        return {"dataset": dataset or self.config.dataset, "samples": self.config.samples, **doc, "seed": self.config.seed}

    def carry_out(
        self, job: ClaimedJob, *, stop: threading.Event | None = None, show: Callable[[RunProgress], None] | None = None,
    ) -> Outcome:
        """Audit a claimed job and write its outcome; never raises for the audit's own errors.

        `stop` set (the worker is stopping) gives the job back to the queue at the next checkpoint;
        `show` sees every progress step (the terminal of `audit run`).
        """
        lease = self.config.lease_seconds
        log.info("audit run %s (attempt %s): %s version %s, %s (%s)", job.run_id, job.attempt, job.model, job.version,
                 job.attack, job.trigger)
        started = time.monotonic()
        written = [0.0]

        with _Heartbeat(self.store, job, lease) as heartbeat:
            def checkpoint(done: int, total: int) -> None:
                if heartbeat.stop_reason is not None:
                    raise AuditStopped(heartbeat.stop_reason)
                if stop is not None and stop.is_set():
                    raise AuditStopped("stopping")
                elapsed = time.monotonic() - started
                eta = elapsed / done * (total - done) if done else None
                if show is not None:
                    show(RunProgress(job.run_id, done, total, eta))
                now = time.monotonic()
                if now - written[0] >= PROGRESS_EVERY_SECONDS or done == total:
                    written[0] = now
                    try:
                        state = self.store.report_progress(job.run_id, done, total, eta)
                    except sa.exc.DBAPIError as exc:
                        log.warning("run %s: progress not written, the database did not answer: %s", job.run_id, exc.orig)
                    else:
                        if state != "held":  # cancelled, or the job is no longer this worker's
                            raise AuditStopped(state)

            try:
                audit = self._audit(job, checkpoint)
            except AuditStopped as stopped:
                return self._stopped(job, str(stopped), time.monotonic() - started)
            except Exception as exc:
                return self._failed(job, exc, time.monotonic() - started)
            artefacts = self.config.artefacts_dir / str(job.run_id)
            saved: str | None = str(artefacts)
            try:
                save_examples(audit, self.predictor, artefacts)
            except OSError as exc:  # e.g. a read-only filesystem: the figures matter more than the pictures
                log.warning("run %s: examples not saved to %s: %s", job.run_id, artefacts, exc)
                saved = None
            try:
                self._write(job, lambda: self.store.finish_run(job.run_id, audit.result, artefacts=saved))
            except LeaseLost as exc:
                return self._lost(job, exc)
        result = audit.result
        log.info(
            "audit run %s: %s version %s clean %.3f, robustness score %.3f, sanity %s, %.0f s", job.run_id, job.model,
            job.version, result.clean_accuracy, result.robustness_score, "passed" if result.sanity_passed else "FAILED",
            result.seconds,
        )
        self._draw_report(job.run_id)
        return Outcome(job.run_id, "succeeded", audit)

    def _audit(self, job: ClaimedJob, checkpoint: Callable[[int, int], None]) -> Audit:
        """The job's audit with the settings it was queued with (not this worker's flags)."""
        attack = attack_config_of(job.config)
        config = self.config.with_(
            attack=attack, attacks=(attack.attack,), samples=int(job.config.get("samples", self.config.samples)),
            seed=int(job.config.get("seed", self.config.seed)),
        )
        return audit_model(
            self.predictor, job.model, self.dataset(job.config.get("dataset")), config, version=job.version,
            attack=attack.attack, progress=checkpoint,
        )

    def _stopped(self, job: ClaimedJob, reason: str, seconds: float) -> Outcome:
        try:
            if reason == "cancel":
                self._write(job, lambda: self.store.fail_run(job.run_id, "cancelled while running", duration_seconds=seconds,
                                                            status="cancelled"))
                log.info("audit run %s cancelled", job.run_id)
                return Outcome(job.run_id, "cancelled", error="cancelled while running")
            if reason == "stopping":
                error = "interrupted: the worker stopped (SIGTERM or SIGINT) before the run finished"
                status = self._write(job, lambda: self.store.retry_run(job.run_id, error))
                log.warning("audit run %s given back to the queue (%s): the worker is stopping", job.run_id, status)
                return Outcome(job.run_id, status, error=error)
        except LeaseLost as exc:
            return self._lost(job, exc)
        return self._lost(job, LeaseLost(f"the lease of run {job.run_id} is no longer this worker's"))

    def _failed(self, job: ClaimedJob, exc: Exception, seconds: float) -> Outcome:
        error = f"{type(exc).__name__}: {exc}"
        log.error("audit run %s of %s failed: %s", job.run_id, job.model, error)
        log.debug("%s", traceback.format_exc())
        try:
            if transient(exc):
                delay = self.retry_delay_seconds * 2 ** (job.attempt - 1)
                status = self._write(job, lambda: self.store.retry_run(job.run_id, error, delay_seconds=delay))
            else:
                status = "failed"
                self._write(job, lambda: self.store.fail_run(job.run_id, error, duration_seconds=seconds))
        except LeaseLost as lost:
            return self._lost(job, lost)
        return Outcome(job.run_id, status, error=error)

    @staticmethod
    def _lost(job: ClaimedJob, exc: Exception) -> Outcome:
        log.warning("audit run %s: nothing written, %s", job.run_id, exc)
        return Outcome(job.run_id, "lost", error=str(exc))

    def _write(self, job: ClaimedJob, write: Callable[[], Any]) -> Any:
        """`write()`, tried again while the database is unreachable, for up to `outcome_retry_seconds`.

        Once the database is back the write goes through if this worker still holds the job (its
        lease may have run out meanwhile, but nobody else can have taken it while the database was
        away); if another worker has it by then, LeaseLost says so and nothing is written.
        """
        deadline, delay = time.monotonic() + self.outcome_retry_seconds, 0.5
        while True:
            try:
                return write()
            except sa.exc.OperationalError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("run %s: the database did not answer (%s); writing the outcome again in %.1f s",
                            job.run_id, exc.orig, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _draw_report(self, run_id: int) -> None:
        """The run's report, drawn once, here, when it ends (never on a page request)."""
        from audit.report import write_report

        try:
            write_report(self.store, run_id, artefacts_root=self.config.artefacts_dir)
        except Exception as exc:  # the figures are stored; a picture that cannot be drawn is not a failed run
            log.warning("run %s: report not drawn: %s: %s", run_id, type(exc).__name__, exc)
