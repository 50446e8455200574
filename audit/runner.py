"""One audit run from start to stored result, and the lock that keeps runs of one model apart."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.auditset import draw_audit_set
from training.contract.config import AuditConfig
from audit.foolbox_model import AuditError, ServedModel
from audit.results import AuditResult, EpsilonPoint, SampleOutcome
from audit.attacks import Attacker
from audit.sanity import run_checks
from audit.sweep import NEVER, Sweep, run_sweep
from service.predictor import Predictor
from training.contract.errors import HttpError

log = logging.getLogger(__name__)
EXAMPLES = 4


class AuditInProgress(HttpError):
    """A run of this model is already under way (the API answers 409)."""

    code = "audit_in_progress"
    http_status = 409


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


def _accuracy(mask: np.ndarray, labels: np.ndarray, class_names) -> tuple[float, float, dict[str, float]]:
    """(accuracy, balanced accuracy, per-class accuracy) of a correct-mask; classes absent from `labels` are left out."""
    per_class = {
        class_names[c]: float(mask[labels == c].mean()) for c in range(len(class_names)) if (labels == c).any()
    }
    balanced = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return float(mask.mean()) if len(mask) else 0.0, balanced, per_class


def audit_model(
    predictor: Predictor, model: str, dataset, config: AuditConfig, *, version: int | None = None,
    attack: str | None = None,
) -> Audit:
    """Attack one served model version with one attack (the first configured unless named) over the grid,
    on its audit set; nothing is stored here."""
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
    labels = np.asarray(audit_set.labels, np.int64)
    served.check_vjp(images)
    sweep = run_sweep(served, images, labels, config.attack, progress=config.progress)
    sanity = run_checks(
        served, Attacker(served, config.attack), sweep, images, labels, config.attack, clean_logits=served.logits(images)
    )
    names = audit_set.class_names
    clean, balanced_clean, _ = _accuracy(sweep.correct, labels, names)
    points = []
    for i, eps in enumerate(config.attack.epsilons):
        robust, balanced, per_class = _accuracy(sweep.robust_mask(i), labels, names)
        noise = sweep.noise_robust_mask(i)
        points.append(
            EpsilonPoint(
                epsilon=eps, robust_accuracy=robust, balanced_robust_accuracy=balanced, per_class=per_class,
                attacked=sweep.attacked[i], fooled=sweep.fooled[i],
                noise_robust_accuracy=None if noise is None else float(noise.mean()), samples=len(labels),
            )
        )
    points = tuple(points)
    samples = tuple(
        SampleOutcome(
            sample_id=sid, label=int(labels[i]), clean_class=int(sweep.clean_class[i]),
            fooled_at=None if sweep.fooled_at[i] == NEVER else config.attack.epsilons[sweep.fooled_at[i]],
            adversarial_class=None if sweep.fooled_at[i] == NEVER else int(sweep.adversarial_class[i]),
        )
        for i, sid in enumerate(audit_set.sample_ids)
    )
    result = AuditResult(
        model=model, version=served.version, task=str(card.get("task", "")), backbone=str(card.get("backbone", "")),
        attention=bool(card.get("attention", False)), backend=predictor.backend_name, attack=config.attack.attack,
        steps=config.attack.iterations, restarts=config.attack.restarts, audit_set=audit_set, clean_accuracy=clean,
        balanced_clean_accuracy=balanced_clean, points=points, samples=samples,
        sanity=sanity, seconds=time.perf_counter() - started, seed=config.attack.seed,
        fooled_by=sweep.fooled_by_counts(),
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
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


class AuditRunner:
    """Runs audits into a store (the metrics read it at each scrape), never two of one model at once."""

    def __init__(
        self, config: AuditConfig, predictor: Predictor, store, load_dataset: Callable | None = None,
        audit_set_for: Callable[[Mapping[str, Any]], str | None] | None = None,
    ):
        self.config = config
        self.predictor = predictor
        self.store = store
        # card -> the dataset spec of its task's audit set (None: unauditable); default: --dataset for every model.
        self._audit_set_for = audit_set_for or (lambda card: config.dataset)
        self._load_dataset = load_dataset
        self._datasets: dict[str, object] = {}
        self._lock = threading.Lock()  # guards the active runs only: held for microseconds
        self._dataset_lock = threading.Lock()  # a dataset loads once, without blocking submits meanwhile
        self._active: dict[str, int] = {}
        self._threads: list[threading.Thread] = []

    def audit_set_for(self, model: str, card: Mapping[str, Any]) -> str:
        """The dataset spec `model` (with this card) is audited on; NoAuditSet when its task has none."""
        spec = self._audit_set_for(card)
        if not spec:
            raise NoAuditSet(
                f"model {model!r}: expected an audit set for its task {card.get('task')!r} (an entry in the audit-sets "
                "file, --dataset, or training data readable here), got none"
            )
        return spec

    def dataset(self, spec: str | None = None):
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

    def active(self) -> dict[str, int]:
        """Models being audited now, with their run ids."""
        with self._lock:
            return dict(self._active)

    def start(
        self, model: str, *, trigger: str = "manual", version: int | None = None, attack: str | None = None
    ) -> int:
        """Reserve `model` and record one run (the first configured attack unless named) as running;
        raises AuditInProgress if it is reserved."""
        return self._start(model, trigger=trigger, version=version, attacks=(attack or self.config.attacks[0],))[0]

    def _start(self, model: str, *, trigger: str, version: int | None, attacks: tuple[str, ...]) -> list[int]:
        """Reserve `model` once and record a running row per attack, all pinned to the same version."""
        with self._lock:
            if model in self._active:
                raise AuditInProgress(f"model {model!r} is already being audited (run {self._active[model]})")
            self._active[model] = -1
        try:
            info = self.predictor.model_info(model)
            pinned = info.latest if version is None else int(version)
            card = self.predictor.model_card(model, pinned)
            dataset = self.audit_set_for(model, card)
            run_ids = [
                self.store.start_run(
                    model=model, version=pinned, card=card, backend=self.predictor.backend_name,
                    attack=self.config.attack_config(name).attack, config=self.run_config(name, dataset), trigger=trigger,
                )
                for name in attacks
            ]
        except BaseException:
            with self._lock:
                self._active.pop(model, None)
            raise
        with self._lock:
            self._active[model] = run_ids[0]
        return run_ids

    def run_config(self, attack: str | None = None, dataset: str | None = None) -> dict:
        config = self.config.attack_config(attack)
        doc = asdict(config)
        doc["epsilons"] = list(config.epsilons)
        doc["steps"] = config.iterations
        return {"dataset": dataset or self.config.dataset, "samples": self.config.samples, **doc, "seed": self.config.seed}

    def execute(self, run_id: int, *, release: bool = True) -> Audit | None:
        """Carry out a started run; its outcome goes to the store. Returns the audit or None.

        `release=False` keeps the model reserved for the next of several runs started together.
        """
        try:
            record = self.store.get_run(run_id)
        except BaseException:
            # A store error before the run's own try must not leave its model reserved (answering
            # 409 until the process restarts).
            if release:
                with self._lock:
                    for model in [m for m, active in self._active.items() if active == run_id]:
                        self._active.pop(model)
            raise
        started = time.perf_counter()
        log.info("audit run %s: %s version %s, %s (%s)", run_id, record.model, record.version, record.attack, record.trigger)
        with self._lock:
            self._active[record.model] = run_id
        try:
            dataset = self.dataset(record.config.get("dataset") or self.config.dataset)
            audit = audit_model(
                self.predictor, record.model, dataset, self.config, version=record.version, attack=record.attack
            )
            artefacts = self.config.artefacts_dir / str(run_id)
            try:
                save_examples(audit, self.predictor, artefacts)
            except OSError as exc:  # e.g. a read-only filesystem: the figures matter more than the pictures
                log.warning("run %s: examples not saved to %s: %s", run_id, artefacts, exc)
                artefacts = None
            self.store.finish_run(run_id, audit.result, artefacts=None if artefacts is None else str(artefacts))
        except Exception as exc:
            seconds = time.perf_counter() - started
            log.error("audit run %s of %s failed: %s", run_id, record.model, exc)
            log.debug("%s", traceback.format_exc())
            self.store.fail_run(run_id, f"{type(exc).__name__}: {exc}", duration_seconds=seconds)
            return None
        finally:
            if release:
                with self._lock:
                    self._active.pop(record.model, None)
        result = audit.result
        log.info(
            "audit run %s: %s version %s clean %.3f, robustness score %.3f, sanity %s, %.0f s", run_id, record.model,
            record.version, result.clean_accuracy, result.robustness_score, "passed" if result.sanity_passed else "FAILED",
            result.seconds,
        )
        self._draw_report(run_id)
        return audit

    def _draw_report(self, run_id: int) -> None:
        """The run's report, drawn once, here, when it ends (never on a page request)."""
        from audit.report import write_report

        try:
            write_report(self.store, run_id, artefacts_root=self.config.artefacts_dir)
        except Exception as exc:  # the figures are stored; a picture that cannot be drawn is not a failed run
            log.warning("run %s: report not drawn: %s: %s", run_id, type(exc).__name__, exc)

    def run(
        self, model: str, *, trigger: str = "manual", version: int | None = None, attack: str | None = None
    ) -> tuple[int, Audit | None]:
        """Start and carry out one run in this thread."""
        run_id = self.start(model, trigger=trigger, version=version, attack=attack)
        return run_id, self.execute(run_id)

    def submit(self, model: str, *, trigger: str = "manual") -> int:
        """Start one run per configured attack and carry them out in turn in a background thread;
        returns the first run's id at once."""
        run_ids = self._start(model, trigger=trigger, version=None, attacks=self.config.attacks)

        def carry_out() -> None:
            try:
                for number, run_id in enumerate(run_ids):
                    self.execute(run_id, release=number == len(run_ids) - 1)
            finally:
                with self._lock:
                    self._active.pop(model, None)

        thread = threading.Thread(target=carry_out, name=f"audit-{model}-{run_ids[0]}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return run_ids[0]

    def join(self, timeout: float | None = None) -> None:
        """Wait for background runs (tests, shutdown)."""
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)
