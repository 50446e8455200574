"""Benchmark: medrobust's audit against the same nested epsilon sweep run without it.

`python -m bench.audit` trains one small ResNet-50 (synthetic data, offline), exports it, loads it
in the embedded backend, then measures three things on the same audit images:

PGD (linf_pgd): the sweep over the paper's grid, nested on every side (an image fooled at one
epsilon is not attacked at the next), same steps, step size 2.5 eps / steps and random start:
  medrobust      `audit.sweep.run_sweep`: Foolbox LinfPGD on the served model (forward through
                 `serving_default`, gradient through `vjp`), every candidate verified as served;
  Foolbox-Keras  Foolbox LinfPGD on the Keras model, as the paper ran it;
  tf.function    a compiled PGD loop on the Keras model: the reference.
APGD (apgd_ce), nested the same way:
  medrobust      `run_sweep` with `apgd_ce`: `audit.apgd.apgd`, a Python loop making per iteration
                 one `vjp` call (K = 2) or a `serving_default` call then a `vjp` at the same point
                 (K > 2: the cross-entropy's exact gradient);
  tf.function    a compiled loop doing the same model work per image-iteration (logits and the
                 input gradient of the cross-entropy) with APGD's start, step, momentum and early
                 stop: the reference.
Exact against stale loss gradients (skip with --exactness-steps 0): `audit.apgd.apgd` nested over
the grid, with APGD-CE and APGD-DLR (the margin for K = 2) at each of --exactness-steps, once
exact (a forward then `vjp` at each iterate where one `vjp` call cannot be exact) and once stale
(one `vjp` per iteration with the previous iterate's cotangent, as the audit ran before): the
ratio of wall time, of calls and of served images, and the robust accuracy each finds.
Ensemble (`attack="ensemble"`): the wall time of `run_sweep` over the grid (skip with --no-ensemble).

Nesting saves image-attacks; it does not make an attack step cheaper. So the two are printed
apart: P (pruning) = image-attack-steps of the un-nested sweep / those actually run, and
I (cost) = seconds per image-attack-step of a side / of the reference. A side's wall time over
the reference's is I times its own work over the reference's work.

Repeated timings alternate the sides (A B, B A, ...) so that drift in the machine's load hits all
of them. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides the tables

# training.contract.config is light (no TensorFlow, no NumPy): --help and bad flags answer at once.
from training.contract.attacks import attack_spec, budget_label
from training.contract.config import PAPER_EPSILONS, AttackConfig

APGD_GOAL = 1.3  # the bar: medrobust's apgd_ce may cost at most 1.3x the compiled loop per image-iteration
AUDIT_QUERIES = AttackConfig().queries  # Square's budget per image in an audit
AUDIT_APGD_STEPS = attack_spec("ensemble").steps  # APGD's iterations in an audit (Croce & Hein's 100)
EPSILONS = PAPER_EPSILONS
EPSILON_VALUES = tuple(float(e) for e in EPSILONS)
REFERENCE = "tf_function"
_ONEDNN = {True: "on", False: "off"}
LABELS = {"medrobust": "medrobust", "foolbox_keras": "Foolbox-Keras", "tf_function": "tf.function", "exact": "exact",
          "stale": "stale"}
EXACTNESS_LOSSES = ("ce", "dlr")


@dataclass(frozen=True)
class Settings:
    """What one run measures; the defaults took about 15 minutes on 2 shared CPU cores before the exact-against-
    stale comparison was added (not timed since)."""

    samples: int = 128  # audit images: the ensemble's; the comparisons take the first compare_samples
    compare_samples: int = 32
    image_size: int = 64
    steps: int = 20  # PGD's, the paper's protocol
    apgd_steps: int = 100  # in the APGD comparison
    ensemble_steps: int = 20  # APGD-CE's and APGD-T's iterations in the ensemble
    queries: int = 200  # Square's budget per image in the ensemble
    repeats: int = 2
    batch_size: int = 64
    ensemble: bool = True
    compiled: bool = True  # the PGD and APGD comparisons with the compiled loops
    exactness_steps: tuple[int, ...] = (25,)  # APGD budgets of the exact-against-stale comparison; () skips it
    exactness_losses: tuple[str, ...] = EXACTNESS_LOSSES
    exactness_epsilons: tuple[str, ...] = EPSILONS  # its grid (nested); "0" is the clean row
    train_images: int = 256
    epochs: int = 2  # 0: untrained weights (the timings depend on the architecture, hardly on the weights)
    dataset: str = "synthetic:900"  # its test split holds 135 images, enough for 128 audit images
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "samples", "compare_samples", "steps", "apgd_steps", "ensemble_steps", "queries", "repeats", "batch_size",
            "train_images",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(self, name)}")
        if any(steps < 1 for steps in self.exactness_steps):
            raise ValueError(f"--exactness-steps: expected budgets of at least 1 iteration, got {self.exactness_steps}")
        unknown = sorted(set(self.exactness_losses) - set(EXACTNESS_LOSSES))
        if unknown or not self.exactness_losses:
            raise ValueError(f"--exactness-losses: expected some of {','.join(EXACTNESS_LOSSES)}, got {unknown or 'none'}")
        if not self.exactness_epsilons or any(e not in EPSILONS for e in self.exactness_epsilons):
            raise ValueError(f"--exactness-epsilons: expected some of the paper's grid {','.join(EPSILONS)}, "
                             f"got {','.join(self.exactness_epsilons) or 'none'}")
        if self.epochs < 0:
            raise ValueError(f"--epochs: expected at least 0, got {self.epochs}")
        if self.image_size < 32:
            raise ValueError(f"--image-size: expected at least 32 (ResNet-50's minimum), got {self.image_size}")


@dataclass
class Side:
    """One side's timed runs: seconds per run, the work each run did, what it found."""

    name: str
    seconds: list[float] = field(default_factory=list)
    work: list[int] = field(default_factory=list)  # image-attack-steps (PGD) or image-iterations (APGD)
    image_attacks: list[int] = field(default_factory=list)  # (image, epsilon) pairs attacked
    robust: list[float] = field(default_factory=list)  # robust accuracy per epsilon (the last run's)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, run: Run) -> None:
        self.seconds.append(run.seconds)
        self.work.append(run.work)
        self.image_attacks.append(run.image_attacks)
        self.robust = list(run.robust)
        self.extra.update(run.extra)

    @property
    def per_step(self) -> float | None:
        """Seconds per unit of work over all runs (summed seconds / summed work); None without work."""
        return sum(self.seconds) / sum(self.work) if sum(self.work) else None


@dataclass(frozen=True)
class Run:
    """One timed nested sweep of one side."""

    seconds: float
    work: int
    image_attacks: int
    robust: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    d = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m bench.audit",
        description="medrobust's nested audit sweep (PGD, APGD-CE) against Foolbox on Keras and compiled tf.function "
        "loops run nested the same way, and the ensemble's wall time.",
    )
    parser.add_argument("--samples", type=int, default=d.samples,
                        help=f"audit images, all attacked by the ensemble (default {d.samples})")
    parser.add_argument("--compare-samples", type=int, default=d.compare_samples,
                        help=f"the first N audit images, attacked by every side of the PGD and APGD comparisons (default {d.compare_samples})")
    parser.add_argument("--image-size", type=int, default=d.image_size, help=f"model input side (default {d.image_size})")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"PGD steps (default {d.steps}, the paper's)")
    parser.add_argument("--apgd-steps", type=int, default=d.apgd_steps,
                        help=f"APGD-CE iterations in the APGD comparison (default {d.apgd_steps})")
    parser.add_argument("--ensemble-steps", type=int, default=d.ensemble_steps,
                        help=f"APGD-CE and APGD-T iterations in the ensemble (default {d.ensemble_steps}; an audit runs {AUDIT_APGD_STEPS})")
    parser.add_argument("--queries", type=int, default=d.queries,
                        help=f"Square's queries per image in the ensemble (default {d.queries}; an audit runs {AUDIT_QUERIES})")
    parser.add_argument("--repeats", type=int, default=d.repeats, help=f"timed runs per side, alternated (default {d.repeats})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per model call on every side (default {d.batch_size})")
    parser.add_argument("--no-ensemble", dest="ensemble", action="store_false",
                        help="skip the ensemble (the default runs it: the longest part of the run)")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="skip the PGD and APGD comparisons with Foolbox and the compiled loops")
    parser.add_argument("--exactness-steps", type=_ints, default=d.exactness_steps,
                        help="APGD budgets of the exact-against-stale gradient comparison, comma-separated, 0 to skip "
                        f"(default {','.join(map(str, d.exactness_steps))})")
    parser.add_argument("--exactness-losses", type=_words, default=d.exactness_losses,
                        help=f"its losses among {','.join(EXACTNESS_LOSSES)} (dlr is the margin for K = 2; default all)")
    parser.add_argument("--exactness-epsilons", type=_words, default=d.exactness_epsilons,
                        help="its epsilons, some of the paper's grid, comma-separated (default the whole grid)")
    parser.add_argument("--train-images", type=int, default=d.train_images, help=f"default {d.train_images}")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs, 0 for untrained weights (default {d.epochs})")
    parser.add_argument("--dataset", default=d.dataset, help=f"KIND:PATH as for medrobust train (default {d.dataset})")
    parser.add_argument("--seed", type=int, default=d.seed)
    args = parser.parse_args(argv)
    try:
        return Settings(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def _ints(text: str) -> tuple[int, ...]:
    """'25,100' -> (25, 100); '0' -> () (skip)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    return () if values == (0,) else values


def _words(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def alternate(runs: dict[str, Callable[[], Run]], repeats: int, *, unit: str = "") -> dict[str, Side]:
    """Each side `repeats` times, in the order A B C, C B A, A B C, ...: load drift hits every side.

    With `unit`, each run is reported as it ends (the runs are long).
    """
    sides = {name: Side(name) for name in runs}
    order = list(runs)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            run = runs[name]()
            sides[name].add(run)
            if unit:
                print(f"  run {r + 1} {LABELS[name]}: {run.seconds:.1f} s, {run.work} {unit}s, "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
    return sides


def nested(
    classify: Callable[[Any], Any], attack: Callable[[Any, Any, float], tuple[Any, int]], images, labels,
    epsilons: Sequence[float], batch_size: int,
) -> Run:
    """The nested sweep of a side without medrobust: at each epsilon, attack only the images still standing.

    `attack(x, y, eps)` returns (fooled mask, work done). Timed here, clean predictions included.
    """
    import numpy as np

    start = time.perf_counter()
    standing = np.concatenate([classify(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]) == labels
    robust, work, image_attacks = [], 0, 0
    for eps in epsilons:
        idx = np.flatnonzero(standing)
        if eps > 0:
            image_attacks += len(idx)
            for i in range(0, len(idx), batch_size):
                batch = idx[i : i + batch_size]
                fooled, done = attack(images[batch], labels[batch], eps)
                standing[batch[fooled]] = False
                work += done
        robust.append(float(standing.mean()))
    return Run(time.perf_counter() - start, work, image_attacks, tuple(robust))


def compiled_functions(keras_model, image_size: int, steps: int, step_ratio: float, apgd_steps: int):
    """The reference sides' compiled functions: classify, PGD, and an APGD-like loop (work counted inside)."""
    import tensorflow as tf

    image = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
    label = tf.TensorSpec([None], tf.int64)
    scalar = tf.TensorSpec([], tf.float32)

    def logits_and_gradient(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = keras_model(x, training=False)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        return logits, tape.gradient(loss, x)

    @tf.function(input_signature=[image])
    def classify(x):
        return tf.argmax(keras_model(x, training=False), axis=-1, output_type=tf.int64)

    @tf.function(input_signature=[image, label, scalar])
    def pgd(x0, y, eps):
        """Foolbox LinfPGD's algorithm: uniform start in the ball, sign steps, projection; fooled at the end."""
        step = step_ratio / steps * eps
        lo, hi = tf.maximum(x0 - eps, 0.0), tf.minimum(x0 + eps, 1.0)
        x = tf.clip_by_value(x0 + tf.random.uniform(tf.shape(x0), -eps, eps), 0.0, 1.0)
        for _ in tf.range(steps):
            x = tf.clip_by_value(x + step * tf.sign(logits_and_gradient(x, y)[1]), lo, hi)
        return classify(x) != y

    @tf.function(input_signature=[image, label, scalar])
    def apgd_like(x0, y, eps):
        """APGD's model work: start on the ball's surface, then per iteration one forward and backward of
        the cross-entropy on the images not yet fooled, sign step 2 eps with momentum 0.75.

        Leaves out APGD's step-size checkpoints and best-point bookkeeping: elementwise work next to a
        ResNet-50's forward and backward. Returns (fooled, image-iterations including the start).
        """
        n = tf.shape(x0)[0]
        lo, hi = tf.maximum(x0 - eps, 0.0), tf.minimum(x0 + eps, 1.0)
        noise = tf.random.uniform(tf.shape(x0), -1.0, 1.0)
        noise /= tf.reduce_max(tf.abs(noise), axis=[1, 2, 3], keepdims=True) + 1e-12
        x = tf.clip_by_value(x0 + eps * noise, lo, hi)
        logits, grad = logits_and_gradient(x, y)
        fooled = tf.argmax(logits, axis=-1, output_type=tf.int64) != y
        previous = x
        work = n
        for i in tf.range(apgd_steps):
            active = tf.where(~fooled)[:, 0]
            if tf.size(active) == 0:
                break
            here, lo_a, hi_a = tf.gather(x, active), tf.gather(lo, active), tf.gather(hi, active)
            pull = tf.where(i == 0, 1.0, 0.75)  # no momentum on the first step, as APGD
            stepped = tf.clip_by_value(here + 2.0 * eps * tf.sign(tf.gather(grad, active)), lo_a, hi_a)
            moved = tf.clip_by_value(here + pull * (stepped - here) + (1.0 - pull) * (here - tf.gather(previous, active)), lo_a, hi_a)
            logits_a, grad_a = logits_and_gradient(moved, tf.gather(y, active))
            rows = active[:, None]
            previous = tf.tensor_scatter_nd_update(previous, rows, here)
            x = tf.tensor_scatter_nd_update(x, rows, moved)
            grad = tf.tensor_scatter_nd_update(grad, rows, grad_a)
            hit = tf.argmax(logits_a, axis=-1, output_type=tf.int64) != tf.gather(y, active)
            fooled = tf.tensor_scatter_nd_update(fooled, rows, hit)
            work += tf.size(active)
        return fooled, work

    return classify, pgd, apgd_like


def _ratios(sides: dict[str, Side], full_work: int) -> dict[str, dict[str, Any]]:
    """Per side: times, work, P = un-nested work / nested work, and I = cost per unit of work over the reference's.

    A side that did no work (every image misclassified clean) has no cost per unit: None.
    """
    ref = sides[REFERENCE].per_step
    out = {}
    for name, side in sides.items():
        runs, work, per_step = len(side.work), sum(side.work), side.per_step
        out[name] = {
            "seconds": [round(x, 4) for x in side.seconds],
            "seconds_total": round(sum(side.seconds), 4),
            "work_per_run": side.work[-1],
            "work_total": work,
            "image_attacks_per_run": side.image_attacks[-1],
            "full_work_per_run": full_work,
            "pruning_factor": round(full_work * runs / work, 3) if work else None,
            "ms_per_unit": None if per_step is None else round(1000 * per_step, 4),
            "cost_ratio": None if per_step is None or not ref else round(per_step / ref, 3),
            "robust_accuracy": [round(r, 4) for r in side.robust],
            **side.extra,
        }
    return out


def run(s: Settings) -> dict[str, Any]:
    """Train and export the model, time every side, and return the result that `main` prints as JSON."""
    import numpy as np

    from training.datasets import load_dataset
    from training.export import export_model
    from training.models import build_model
    from training.recipe import Recipe, train
    from training.workflow import dataset_card

    wall = time.perf_counter()
    load_before = os.getloadavg()
    dataset = load_dataset(s.dataset, seed=s.seed)
    trained = "untrained" if s.epochs == 0 else f"trained {s.epochs} epoch(s) on {s.train_images} images"
    print(f"set-up: a ResNet-50 baseline at {s.image_size}x{s.image_size} on {s.dataset} ({trained}), exported, "
          f"loaded in the embedded backend", flush=True)
    started = time.perf_counter()
    keras_model = build_model("resnet50", attention=False, num_classes=dataset.num_classes, image_size=s.image_size)
    if s.epochs:
        keras_model = train(keras_model, dataset, recipe=Recipe(epochs=s.epochs, learning_rate=0.001, seed=s.seed),
                            limit=s.train_images, verbose=0).model
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as repo:
        exported = export_model(keras_model, repo, task=dataset.default_task, class_names=dataset.class_names,
                                dataset=dataset_card(dataset))
        bench = _Bench(s, keras_model, repo, exported.model, dataset)
        setup_seconds = time.perf_counter() - started
        n, m = len(bench.images), bench.compare
        if n < s.samples:
            print(f"note: {s.dataset}'s test split holds {n} images, fewer than --samples {s.samples}", flush=True)
        print(f"set-up took {setup_seconds:.0f} s. Grid: the paper's {len(EPSILONS)} epsilons {EPSILONS[0]}..{EPSILONS[-1]}; "
              f"batches of {s.batch_size}; the PGD and APGD comparisons on {m} of the {n} audit images", flush=True)
        pgd = apgd = None
        if s.compiled:
            print(f"PGD: {s.steps} steps of 2.5 eps / {s.steps}, random start, nested on every side; "
                  f"{s.repeats} timed run(s) per side, alternated", flush=True)
            pgd = alternate(bench.pgd_runs(), s.repeats, unit="image-attack-step")
            print(f"APGD-CE: {s.apgd_steps} iterations, nested on both sides; {s.repeats} timed run(s) per side, "
                  f"alternated", flush=True)
            apgd = alternate(bench.apgd_runs(), s.repeats, unit="image-iteration")
        exactness = bench.exactness() if s.exactness_steps else None
        load_mid = os.getloadavg()
        ensemble = None
        if s.ensemble:
            targets = min(9, dataset.num_classes - 1)
            second = "APGD-T" if targets > 1 else "APGD on the margin (K = 2: APGD-T would repeat APGD-CE)"
            print(f"ensemble: APGD-CE ({s.ensemble_steps} it), {second} ({s.ensemble_steps} it x {targets} targets), "
                  f"FAB-T ({s.ensemble_steps} it x {targets} targets), Square ({s.queries} queries), each on the images "
                  f"the previous left standing, nested over the grid; "
                  f"{n} images at {s.image_size} px; one timed run (--no-ensemble skips it)", flush=True)
            if (s.ensemble_steps, s.queries) != (AUDIT_APGD_STEPS, AUDIT_QUERIES):
                print(f"  a REDUCED budget: an audit's ensemble runs {AUDIT_APGD_STEPS} iterations and {AUDIT_QUERIES} "
                      f"queries (--ensemble-steps {AUDIT_APGD_STEPS} --queries {AUDIT_QUERIES})", flush=True)
            ensemble = bench.ensemble()
        bench.predictor.close()
    load_after = os.getloadavg()

    steps_full = m * (len(EPSILONS) - 1)  # image x non-zero epsilon: the un-nested sweep's image-attacks
    pgd_result = None if pgd is None else _ratios(pgd, steps_full * s.steps)
    apgd_result = None if apgd is None else _ratios(apgd, steps_full * (s.apgd_steps + 1))  # the start is one too
    apgd_ratio = None if apgd_result is None else apgd_result["medrobust"]["cost_ratio"]
    return {
        "benchmark": "audit",
        "settings": asdict(s),
        "dataset": {"source": s.dataset, "classes": dataset.num_classes},
        "images": n,
        "compare_images": m,
        "clean_accuracy": round(float(np.mean(bench.clean_correct)), 4),
        "pgd": None if pgd_result is None else {"unit": "image-attack-step", "reference": REFERENCE, "sides": pgd_result},
        "apgd_ce": None if apgd_result is None else {"unit": "image-iteration", "reference": REFERENCE, "sides": apgd_result},
        "exactness": exactness,
        "ensemble": ensemble,
        "apgd_ce_cost_ratio": apgd_ratio,
        "goals_met": {"apgd_ce_within_1.3x_compiled": None if apgd_ratio is None else apgd_ratio <= APGD_GOAL},
        "setup_seconds": round(setup_seconds, 1),
        "total_seconds": round(time.perf_counter() - wall, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "onednn": _onednn(),
            "load_average_1m": [round(load_before[0], 2), round(load_mid[0], 2), round(load_after[0], 2)],
        },
    }


class _Bench:
    """The sides' runs over one exported model, its Keras original and one audit set."""

    def __init__(self, s: Settings, keras_model, repo: str, model: str, dataset):
        import foolbox as fb
        import numpy as np

        from audit.auditset import draw_audit_set
        from service.embedded import EmbeddedPredictor
        from training.contract.config import AttackConfig

        self.s, self.keras_model, self.model = s, keras_model, model
        self.predictor = EmbeddedPredictor(repo)
        self.version = self.predictor.model_info(model).latest
        audit_set, self.images = draw_audit_set(dataset, n=s.samples, seed=s.seed, image_size=s.image_size)
        self.labels = np.asarray(audit_set.labels, np.int64)
        self.compare = min(s.compare_samples, len(self.images))  # the first N images
        self.num_classes = dataset.num_classes
        self.clean_logits = self.served().logits(self.images)
        self.clean_correct = self.served().classes(self.images) == self.labels
        self.pgd_config = AttackConfig(attack="linf_pgd", steps=s.steps, batch_size=s.batch_size, noise_check=False, seed=s.seed)
        self.apgd_config = replace(self.pgd_config, attack="apgd_ce", steps=s.apgd_steps)
        if s.compiled:
            self.classify, self.pgd, self.apgd_like = compiled_functions(
                keras_model, s.image_size, s.steps, self.pgd_config.step_ratio, s.apgd_steps
            )
            self.fmodel = fb.TensorFlowModel(keras_model, bounds=(0.0, 1.0), device="/CPU:0")
            self.foolbox_pgd = fb.attacks.LinfPGD(rel_stepsize=self.pgd_config.step_ratio / s.steps, steps=s.steps,
                                                  random_start=True)
            # Trace outside the timing, as a warm compiled loop is.
            for fn in (self.classify, self.pgd, self.apgd_like):
                fn.get_concrete_function()
        # Load outside the timing, as a running server is: the served model's `serving_default` was called
        # above (clean_correct), its `vjp` is called here.
        self.served().logits_and_gradient(self.images[:2], np.ones((2, dataset.num_classes), np.float32))

    def served(self):
        from audit.foolbox_model import ServedModel

        return ServedModel(self.predictor, self.model, self.version, batch_size=self.s.batch_size)

    # -- one batch at one epsilon: (fooled mask, work) ---------------------------------------------------
    def foolbox_attack(self, x, y, eps):
        import tensorflow as tf

        _, _, success = self.foolbox_pgd(self.fmodel, tf.constant(x), tf.constant(y), epsilons=eps)
        return success.numpy(), len(x) * self.s.steps

    def compiled_pgd(self, x, y, eps):
        import tensorflow as tf

        return self.pgd(tf.constant(x), tf.constant(y), tf.constant(eps, tf.float32)).numpy(), len(x) * self.s.steps

    def compiled_apgd(self, x, y, eps):
        import tensorflow as tf

        fooled, work = self.apgd_like(tf.constant(x), tf.constant(y), tf.constant(eps, tf.float32))
        return fooled.numpy(), int(work)

    def keras_classes(self, x):
        import numpy as np
        import tensorflow as tf

        return np.argmax(self.keras_model(tf.constant(x), training=False).numpy(), axis=1)

    def compiled_classes(self, x):
        import tensorflow as tf

        return self.classify(tf.constant(x)).numpy()

    # -- the sides ------------------------------------------------------------------------------------
    def seeded(self, run: Callable[[], Run]) -> Callable[[], Run]:
        def again() -> Run:
            import tensorflow as tf

            tf.random.set_seed(self.s.seed)  # every side's random starts draw from TensorFlow's seed
            return run()

        return again

    def medrobust(self, config, work_of: Callable[[Any, Any], int]) -> Callable[[], Run]:
        """`run_sweep` through the embedded backend on the comparison images; work counted by `work_of(sweep, served)`."""
        from audit.sweep import run_sweep

        def run() -> Run:
            served = self.served()
            t = time.perf_counter()
            sweep = run_sweep(served, self.images[: self.compare], self.labels[: self.compare], config)
            seconds = time.perf_counter() - t
            robust = tuple(float(sweep.robust_mask(i).mean()) for i in range(len(EPSILONS)))
            calls = {"served_forward_images": served.counts.forward, "served_vjp_images": served.counts.vjp}
            return Run(seconds, work_of(sweep, served), _image_attacks(sweep.attacked), robust, calls)

        return self.seeded(run)

    def nested(self, classify, attack) -> Callable[[], Run]:
        x, y = self.images[: self.compare], self.labels[: self.compare]
        return self.seeded(lambda: nested(classify, attack, x, y, EPSILON_VALUES, self.s.batch_size))

    def pgd_runs(self) -> dict[str, Callable[[], Run]]:
        steps = self.s.steps
        return {
            "medrobust": self.medrobust(self.pgd_config, lambda sweep, _: steps * _image_attacks(sweep.attacked)),
            "foolbox_keras": self.nested(self.keras_classes, self.foolbox_attack),
            "tf_function": self.nested(self.compiled_classes, self.compiled_pgd),
        }

    def apgd_runs(self) -> dict[str, Callable[[], Run]]:
        return {
            "medrobust": self.medrobust(self.apgd_config, self.apgd_image_iterations),
            "tf_function": self.nested(self.compiled_classes, self.compiled_apgd),
        }

    def apgd_image_iterations(self, sweep, served) -> int:
        """Iterates APGD evaluated in a `run_sweep`: each takes one `vjp` (K = 2) or one forward (K > 2, where a
        `vjp` follows except for the last iterate and a fooled one). The sweep's own forwards are the clean
        logits and classes (2 per image) and one verification per image-attack (one restart, no noise check)."""
        attack_forwards = served.counts.forward - 2 * self.compare - _image_attacks(sweep.attacked)
        return max(served.counts.vjp, attack_forwards)

    def direct_apgd(self, loss: str, steps: int, *, stale: bool) -> Callable[[], Run]:
        """`audit.apgd.apgd` on the comparison images, nested over --exactness-epsilons; exact or stale gradients.

        Work is image-iterations: every iterate evaluated takes one forward (exact, where a `vjp` follows)
        or one `vjp` (stale, or wherever one call is exact)."""
        import numpy as np

        from audit.apgd import apgd

        x, y, z = self.images[: self.compare], self.labels[: self.compare], self.clean_logits[: self.compare]
        epsilons = [float(e) for e in self.s.exactness_epsilons]

        def run() -> Run:
            served, rng = self.served(), np.random.default_rng(self.s.seed)
            standing = z.argmax(axis=1) == y
            robust, standing_at, calls, image_attacks = [], [], 0, 0
            t = time.perf_counter()
            for eps in epsilons:
                idx = np.flatnonzero(standing)
                if eps > 0:
                    image_attacks += len(idx)
                    for start in range(0, len(idx), self.s.batch_size):
                        batch = idx[start : start + self.s.batch_size]
                        found = apgd(served.logits_and_gradient, x[batch], y[batch], eps, clean_logits=z[batch],
                                     loss=loss, iterations=steps, rng=rng, forward=served.logits, _stale=stale)
                        standing[batch[found.fooled]] = False
                        calls += found.calls
                robust.append(float(standing.mean()))
                standing_at.append(standing.copy())
            seconds = time.perf_counter() - t
            extra = {"calls": calls, "served_forward_images": served.counts.forward,
                     "served_vjp_images": served.counts.vjp, "standing": standing_at}
            return Run(seconds, max(served.counts.forward, served.counts.vjp), image_attacks, tuple(robust), extra)

        return run

    def exactness(self) -> dict[str, Any]:
        """Exact against stale loss gradients, per loss and budget: alternated timed runs of both."""
        from audit.apgd import one_call_is_exact

        k, m, s = self.num_classes, self.compare, self.s
        comparisons = []
        for wanted in s.exactness_losses:
            loss = "cw" if wanted == "dlr" and k < 3 else wanted
            exact_in_one = one_call_is_exact(loss, k)
            for steps in s.exactness_steps:
                print(f"APGD-{loss.upper()}, {steps} iterations, exact against stale gradients on {m} images, nested "
                      f"over {','.join(s.exactness_epsilons)}; {s.repeats} timed run(s) per side, alternated"
                      f"{' (K = 2: one vjp call is exact, the sides run the same)' if exact_in_one else ''}", flush=True)
                sides = alternate({"exact": self.direct_apgd(loss, steps, stale=False),
                                   "stale": self.direct_apgd(loss, steps, stale=True)}, s.repeats, unit="image-iteration")
                c = _exactness(loss, steps, exact_in_one, sides)
                comparisons.append(c)
                print(f"  exact/stale: seconds {c['ratios']['seconds']}x, calls {c['ratios']['calls']}x; robust accuracy "
                      f"exact {c['sides']['exact']['robust_accuracy']}, stale {c['sides']['stale']['robust_accuracy']}; "
                      f"verdicts differing {c['verdicts_differ']}", flush=True)
        return {"classes": k, "images": m, "epsilons": list(s.exactness_epsilons), "comparisons": comparisons}

    def ensemble(self) -> dict[str, Any]:
        """One timed `run_sweep` of the ensemble over every audit image."""
        from audit.sweep import run_sweep

        config = replace(self.apgd_config, attack="ensemble", steps=self.s.ensemble_steps, queries=self.s.queries)
        served = self.served()
        t = time.perf_counter()
        sweep = run_sweep(served, self.images, self.labels, config, progress=sys.stderr.isatty())
        seconds = time.perf_counter() - t
        return {
            "seconds": round(seconds, 2),
            "image_size": self.s.image_size,
            "images": len(self.images),
            "apgd_iterations": self.s.ensemble_steps,
            "square_queries": self.s.queries,
            "audit_budget": (self.s.ensemble_steps, self.s.queries) == (AUDIT_APGD_STEPS, AUDIT_QUERIES),
            "budget_label": budget_label("ensemble", config.budget()),
            "stages": list(sweep.stages),
            "image_attacks_per_epsilon": list(sweep.attacked),
            "served_vjp_images": served.counts.vjp,
            "served_forward_images": served.counts.forward,
            "fooled_by": sweep.fooled_by_counts(),
            "robust_accuracy": [round(float(sweep.robust_mask(i).mean()), 4) for i in range(len(EPSILONS))],
        }


def _exactness(loss: str, steps: int, exact_in_one_call: bool, sides: dict[str, Side]) -> dict[str, Any]:
    """One exact-against-stale comparison: each side's figures, then exact / stale for time, calls and images."""
    out: dict[str, Any] = {"loss": loss, "iterations": steps, "one_call_exact": exact_in_one_call, "sides": {}}
    standing = {}
    for name, side in sides.items():
        extra = dict(side.extra)
        standing[name] = extra.pop("standing")
        per = side.per_step
        out["sides"][name] = {
            "seconds": [round(x, 4) for x in side.seconds],
            "seconds_total": round(sum(side.seconds), 4),
            "image_iterations_per_run": side.work[-1],
            "image_attacks_per_run": side.image_attacks[-1],
            "ms_per_image_iteration": None if per is None else round(1000 * per, 4),
            "robust_accuracy": [round(r, 4) for r in side.robust],
            **extra,
        }
    exact, stale = out["sides"]["exact"], out["sides"]["stale"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 3)

    out["ratios"] = {
        "seconds": ratio(exact["seconds_total"], stale["seconds_total"]),
        "ms_per_image_iteration": ratio(exact["ms_per_image_iteration"], stale["ms_per_image_iteration"]),
        "calls": ratio(exact["calls"], stale["calls"]),
        "served_images": ratio(exact["served_forward_images"] + exact["served_vjp_images"],
                               stale["served_forward_images"] + stale["served_vjp_images"]),
    }
    # Images robust on one side and fooled on the other, per epsilon (the last runs').
    out["verdicts_differ"] = [int((a != b).sum()) for a, b in zip(standing["exact"], standing["stale"])]
    return out


def _onednn() -> bool | None:
    """Whether TensorFlow runs its CPU kernels through oneDNN (TF_ENABLE_ONEDNN_OPTS; off by default on CPUs
    without AVX-512 VNNI), which makes the input gradient many times cheaper; None when it cannot tell."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def _image_attacks(attacked: Sequence[int]) -> int:
    """(image, epsilon) pairs a nested sweep attacked, epsilon 0 (the clean image) left out."""
    return sum(a for a, e in zip(attacked, EPSILON_VALUES) if e > 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables, then one JSON line; 0 whatever the ratios (it is a measurement)."""
    settings = parse_args(argv)
    result = run(settings)
    print()
    print(table(result))
    print(json.dumps(result), flush=True)
    return 0


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(result: dict[str, Any]) -> str:
    """The result as side-by-side tables a person reads."""
    m, s = result["machine"], result["settings"]
    load = m["load_average_1m"]
    lines = [
        (f"load average (1 min) on {m['cpus']} CPUs: {load[0]} at the start, {load[1]} after the comparisons, "
         f"{load[2]} at the end; set-up {result['setup_seconds']:.0f} s, whole run {result['total_seconds']:.0f} s"),
        (f"TensorFlow's oneDNN kernels: {_ONEDNN.get(m['onednn'], 'unknown')} (TF_ENABLE_ONEDNN_OPTS); "
         f"clean accuracy of the audit images: {result['clean_accuracy']:.3f}"),
        "",
    ]
    for key, title, unit in (
        ("pgd", f"PGD, {s['steps']} steps, on {result['compare_images']} images", "image-attack-step"),
        ("apgd_ce", f"APGD-CE, {s['apgd_steps']} iterations, on {result['compare_images']} images", "image-iteration"),
    ):
        if result[key] is None:
            continue
        sides = result[key]["sides"]
        names = list(sides)
        lines.append(f"{title + ', nested':<48}" + "".join(f"{LABELS[x]:>15}" for x in names))

        def row(label: str, values: list[str]) -> None:
            lines.append(f"  {label:<46}" + "".join(f"{v:>15}" for v in values))

        full = sides[names[0]]["full_work_per_run"]
        row(f"seconds ({s['repeats']} alternated runs)", [f"{sides[x]['seconds_total']:.1f}" for x in names])
        row("image-attacks (image x epsilon) per run", [str(sides[x]["image_attacks_per_run"]) for x in names])
        row(f"{unit}s per run", [str(sides[x]["work_per_run"]) for x in names])
        row(f"P pruning = {full} un-nested / run", [_fmt(sides[x]["pruning_factor"], ".2f") for x in names])
        row(f"ms per {unit}", [_fmt(sides[x]["ms_per_unit"], ".1f") for x in names])
        row(f"I cost per {unit} / tf.function's", [_fmt(sides[x]["cost_ratio"], ".2f", "x") for x in names])
        row("robustness score (mean over the grid)", [f"{sum(sides[x]['robust_accuracy']) / len(EPSILONS):.3f}" for x in names])
        for i, eps in enumerate(EPSILONS):
            row(f"robust accuracy @ {eps}", [f"{sides[x]['robust_accuracy'][i]:.3f}" for x in names])
        lines.append("")
    if result["exactness"] is not None:
        lines += exactness_table(result["exactness"], s["repeats"])
    if result["pgd"] is not None:
        lines += [
            "P is work saved by nesting (and, for APGD, by stopping once an image is fooled), not speed; I is speed:",
            "a side's seconds / the reference's = I x (its work / the reference's work).",
            "",
        ]
    if result["apgd_ce"] is None:
        lines.append("PGD and APGD-CE against the compiled loops: skipped (--no-compiled)")
    else:
        verdict = "met" if result["goals_met"]["apgd_ce_within_1.3x_compiled"] else "NOT met"
        lines.append(f"apgd_ce through the served signatures costs {_fmt(result['apgd_ce_cost_ratio'], '.2f', 'x')} the "
                     f"compiled loop per image-iteration (goal <= {APGD_GOAL}x: {verdict})")
    e = result["ensemble"]
    if e is None:
        lines.append("ensemble: skipped (--no-ensemble)")
    else:
        lines += [
            (f"ensemble (APGD-CE and APGD-T {e['apgd_iterations']} iterations, Square {e['square_queries']} queries"
             f"{'' if e['audit_budget'] else ': a reduced budget'}) on {e['images']} images at {e['image_size']} px "
             f"over the paper's grid: {e['seconds']:.1f} s"),
            (f"  image-attacks per epsilon {e['image_attacks_per_epsilon']}; served images through vjp "
             f"{e['served_vjp_images']}, through serving_default {e['served_forward_images']}"),
            f"  fooled by {e['fooled_by']}; robust accuracy {e['robust_accuracy']}",
        ]
    return "\n".join(lines)


def exactness_table(section: dict[str, Any], repeats: int) -> list[str]:
    """Exact against stale gradients, one block per loss and budget, exact / stale in the last column."""
    lines = []
    epsilons = section["epsilons"]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"  {label:<46}" + "".join(f"{v:>13}" for v in values))

    for c in section["comparisons"]:
        exact, stale, ratios = c["sides"]["exact"], c["sides"]["stale"], c["ratios"]
        title = (f"APGD-{c['loss'].upper()}, {c['iterations']} iterations, on {section['images']} images, "
                 f"K = {section['classes']}{': one call is exact' if c['one_call_exact'] else ''}")
        lines.append(f"{title:<48}" + "".join(f"{x:>13}" for x in ("exact", "stale", "exact/stale")))
        row(f"seconds ({repeats} alternated runs)",
            [f"{exact['seconds_total']:.1f}", f"{stale['seconds_total']:.1f}", _fmt(ratios["seconds"], ".2f", "x")])
        row("model calls per run", [str(exact["calls"]), str(stale["calls"]), _fmt(ratios["calls"], ".2f", "x")])
        row("served images: serving_default + vjp",
            [f"{exact['served_forward_images']}+{exact['served_vjp_images']}",
             f"{stale['served_forward_images']}+{stale['served_vjp_images']}", _fmt(ratios["served_images"], ".2f", "x")])
        row("image-iterations per run", [str(exact["image_iterations_per_run"]), str(stale["image_iterations_per_run"]), ""])
        row("ms per image-iteration", [_fmt(exact["ms_per_image_iteration"], ".1f"), _fmt(stale["ms_per_image_iteration"], ".1f"),
                                       _fmt(ratios["ms_per_image_iteration"], ".2f", "x")])
        for i, eps in enumerate(epsilons):
            row(f"robust accuracy @ {eps} (verdicts differing)",
                [f"{exact['robust_accuracy'][i]:.3f}", f"{stale['robust_accuracy'][i]:.3f}", str(c["verdicts_differ"][i])])
        lines.append("")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
