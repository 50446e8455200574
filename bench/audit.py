"""Benchmark: medrobust's audit against the two ways of running the same epsilon sweep without it.

`python -m bench.audit` trains one small ResNet-50 (synthetic data, offline), exports it, then runs
the same sweep (same images, the paper's grid, same steps and step size, random start) three ways:

  (a) medrobust's audit through the embedded backend: Foolbox on the served `vjp`, nested
      epsilons (only images still standing are attacked), every example verified as served,
      plus the uniform-noise reference and the sanity checks;
  (b) Foolbox LinfPGD as the paper used it: the Keras model, every epsilon over every image;
  (c) a compiled `tf.function` PGD loop on the Keras model, every epsilon over every image: the
      hardware limit for a sweep without pruning.

Prints a side-by-side table, and last one JSON line with the times and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _robust(correct, fooled_by_eps):
    return [float((correct & ~f).mean()) for f in fooled_by_eps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataset", default="synthetic:600")
    args = parser.parse_args(argv)

    import foolbox as fb
    import numpy as np
    import tensorflow as tf

    from audit.auditset import draw_audit_set
    from audit.config import PAPER_EPSILONS, AttackConfig, AuditConfig
    from audit.runner import audit_model
    from service.embedded import EmbeddedPredictor
    from training.datasets import load_dataset
    from training.export import export_model
    from training.models import build_model
    from training.recipe import Recipe, train
    from training.workflow import dataset_card

    epsilons = [float(e) for e in PAPER_EPSILONS]
    attacked_eps = [e for e in epsilons if e > 0]
    dataset = load_dataset(args.dataset, seed=0)
    print(f"setup: training a ResNet-50 baseline on {args.dataset} ({args.image_size}x{args.image_size}, "
          f"{args.train_images} images, {args.epochs} epochs)", flush=True)
    model = build_model("resnet50", attention=False, num_classes=dataset.num_classes, image_size=args.image_size)
    trained = train(model, dataset, recipe=Recipe(epochs=args.epochs, learning_rate=0.001, seed=0), limit=args.train_images, verbose=0)
    keras_model = trained.model
    repo = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    exported = export_model(keras_model, repo, task=dataset.default_task, class_names=dataset.class_names, dataset=dataset_card(dataset))
    config = AuditConfig(
        dataset=args.dataset, samples=args.samples, progress=False,
        attack=AttackConfig(epsilons=PAPER_EPSILONS, steps=args.steps, batch_size=64),
    )
    audit_set, images = draw_audit_set(dataset, n=args.samples, seed=0, image_size=args.image_size)
    labels = np.asarray(audit_set.labels, np.int64)
    step_ratio = config.attack.step_ratio / args.steps
    print(f"sweep: {len(images)} images, {len(epsilons)} epsilons {PAPER_EPSILONS[0]}..{PAPER_EPSILONS[-1]}, "
          f"{args.steps} steps, step = 2.5 eps / steps, random start", flush=True)

    # (a) medrobust's audit, embedded backend (the model is loaded once before timing, as a server would).
    predictor = EmbeddedPredictor(repo)
    predictor.predict(exported.model, images[:1])
    tf.random.set_seed(0)
    t = time.perf_counter()
    audit = audit_model(predictor, exported.model, dataset, config)
    a_seconds = time.perf_counter() - t
    a_robust = [p.robust_accuracy for p in audit.result.points]
    a_attacked = sum(p.attacked for p in audit.result.points if float(p.epsilon) > 0)

    # (b) Foolbox LinfPGD on the Keras model, every epsilon over every image.
    x = tf.constant(images)
    y = tf.constant(labels, tf.int64)
    clean_pred = np.argmax(keras_model(x, training=False).numpy(), axis=1)
    correct = clean_pred == labels
    fmodel = fb.TensorFlowModel(keras_model, bounds=(0.0, 1.0), device="/CPU:0")
    attack = fb.attacks.LinfPGD(rel_stepsize=step_ratio, steps=args.steps, random_start=True)
    tf.random.set_seed(0)
    t = time.perf_counter()
    _, _, success = attack(fmodel, x, y, epsilons=attacked_eps)
    b_seconds = time.perf_counter() - t
    b_robust = [float(correct.mean())] + _robust(correct, [s.numpy() for s in success])

    # (c) a compiled tf.function PGD loop, every epsilon over every image.
    @tf.function(reduce_retracing=True)
    def pgd(x0, y, eps):
        step = step_ratio * eps
        xa = tf.clip_by_value(x0 + tf.random.uniform(tf.shape(x0), -eps, eps), 0.0, 1.0)
        for _ in tf.range(args.steps):
            with tf.GradientTape() as tape:
                tape.watch(xa)
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, keras_model(xa, training=False)))
            xa = xa + step * tf.sign(tape.gradient(loss, xa))
            xa = tf.clip_by_value(tf.clip_by_value(xa, x0 - eps, x0 + eps), 0.0, 1.0)
        return tf.argmax(keras_model(xa, training=False), axis=-1, output_type=tf.int64)

    pgd(x[:2], y[:2], tf.constant(0.01))  # trace once outside the timing, as a warm compiled loop
    tf.random.set_seed(0)
    t = time.perf_counter()
    c_fooled = [pgd(x, y, tf.constant(e)).numpy() != labels for e in attacked_eps]
    c_seconds = time.perf_counter() - t
    c_robust = [float(correct.mean())] + _robust(correct, c_fooled)

    full_work = len(images) * len(attacked_eps)
    print()
    print(f"{'':34} {'(a) medrobust':>14} {'(b) Foolbox':>12} {'(c) tf.function':>16}")
    print(f"{'seconds':34} {a_seconds:14.1f} {b_seconds:12.1f} {c_seconds:16.1f}")
    print(f"{'image-attacks (image x epsilon)':34} {a_attacked:14d} {full_work:12d} {full_work:16d}")
    print(f"{'robustness score':34} {np.mean(a_robust):14.3f} {np.mean(b_robust):12.3f} {np.mean(c_robust):16.3f}")
    for i, eps in enumerate(PAPER_EPSILONS):
        print(f"{'robust accuracy @ ' + eps:34} {a_robust[i]:14.3f} {b_robust[i]:12.3f} {c_robust[i]:16.3f}")
    print(f"{'sanity checks':34} {'passed' if audit.result.sanity_passed else 'FAILED':>14}")
    summary = {
        "images": len(images), "epsilons": len(epsilons), "steps": args.steps, "image_size": args.image_size,
        "a_medrobust_seconds": round(a_seconds, 2), "b_foolbox_keras_seconds": round(b_seconds, 2),
        "c_tf_function_seconds": round(c_seconds, 2),
        "speedup_vs_foolbox": round(b_seconds / a_seconds, 2), "speedup_vs_tf_function": round(c_seconds / a_seconds, 2),
        "a_image_attacks": a_attacked, "full_image_attacks": full_work,
        "robustness_score": {"a": round(float(np.mean(a_robust)), 4), "b": round(float(np.mean(b_robust)), 4), "c": round(float(np.mean(c_robust)), 4)},
        "goals_met": {"3x_faster_than_foolbox": b_seconds / a_seconds >= 3, "faster_than_tf_function": c_seconds > a_seconds},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
