"""Training images/s: medrobust's tf.data pipeline against ``keras.Model.fit`` on in-memory arrays.

Both sides train the same model (fresh, identical weights; compiled as ``training.recipe.train``
compiles it, with the same class weights) on the same images. The pipeline side feeds
``training.pipeline.training_dataset`` to ``fit`` exactly as ``train()`` does, so with a dataset of
files on disk (HAM10000 from ``../shared/data`` by default) every image goes through the shared
file-decoding path. The in-memory side gets those images already decoded, as float32 numpy arrays,
which is as fast as input can be: the ratio of the two says whether the pipeline is the bottleneck.

Each side first trains one warm-up epoch (tracing, compilation and the pipeline's decode-and-cache
pass); the measured epochs then alternate in the order A B B A A B ..., so that drift in the load
of a shared machine falls on both sides alike. The last line printed is one JSON object.

    python -m bench.training [--images N] [--image-size N] [--batch-size N] [--epochs N] [--dataset SPEC]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GOAL = 0.9  # the bar: the pipeline may cost at most 10% of the in-memory speed
SHARED_HAM10000 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ham10000"


@dataclass(frozen=True)
class Settings:
    """What one run measures; the defaults finish in about 2-3 minutes on 2 CPU cores."""

    dataset: str
    images: int = 256
    image_size: int = 64
    batch_size: int = 32
    epochs: int = 4
    backbone: str = "resnet50"
    attention: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images", "image_size", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Epoch:
    """One epoch of one side: wall and process CPU seconds, and each step's (images, wall seconds)."""

    seconds: float
    cpu_seconds: float
    steps: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Side:
    """One side's warm-up epoch and measured epochs."""

    name: str
    images_per_epoch: int
    warmup: Epoch
    epochs: tuple[Epoch, ...]

    @property
    def images_per_second(self) -> float:
        """Measured images over measured wall seconds (not a mean of per-epoch rates)."""
        return self.images_per_epoch * len(self.epochs) / sum(e.seconds for e in self.epochs)

    @property
    def cpu_ms_per_image(self) -> float:
        """Process CPU time per measured image: what the side costs, whatever else the machine runs."""
        return 1000 * sum(e.cpu_seconds for e in self.epochs) / (self.images_per_epoch * len(self.epochs))

    @property
    def median_step_images_per_second(self) -> float:
        """The median step's rate (fetching its batch included): robust to bursts of load from others."""
        return statistics.median(n / s for e in self.epochs for n, s in e.steps)

    def summary(self) -> dict[str, Any]:
        return {
            "warmup_seconds": round(self.warmup.seconds, 2),
            "epoch_seconds": [round(e.seconds, 2) for e in self.epochs],
            "images_per_second": round(self.images_per_second, 2),
            "median_step_images_per_second": round(self.median_step_images_per_second, 2),
            "cpu_ms_per_image": round(self.cpu_ms_per_image, 1),
        }


def default_dataset() -> str:
    """HAM10000 JPEGs from ../shared/data when present (the file-decoding path), else synthetic."""
    return f"ham10000:{SHARED_HAM10000}" if (SHARED_HAM10000 / "HAM10000_metadata.csv").is_file() else "synthetic:600"


def parse_args(argv: list[str] | None = None) -> Settings:
    defaults = Settings(dataset="")
    parser = argparse.ArgumentParser(
        prog="python -m bench.training",
        description="Training images/s of medrobust's tf.data pipeline against keras.Model.fit on in-memory arrays.",
    )
    parser.add_argument("--images", type=int, default=defaults.images, help=f"training images (a seeded subset; default {defaults.images})")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help=f"model input side (default {defaults.image_size})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"default {defaults.batch_size}, the recipe's")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help=f"measured epochs per side, after one warm-up epoch each (default {defaults.epochs})")
    parser.add_argument("--dataset", default=None,
                        help="KIND:PATH as for medrobust train (default: ham10000 in ../shared/data if present, else synthetic:600)")
    parser.add_argument("--backbone", choices=("resnet50", "inception_resnet_v2"), default=defaults.backbone)
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--attention", dest="attention", action="store_true", default=defaults.attention, help="with soft attention")
    variant.add_argument("--baseline", dest="attention", action="store_false", help="without soft attention (default)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    try:
        return Settings(
            dataset=args.dataset or default_dataset(), images=args.images, image_size=args.image_size,
            batch_size=args.batch_size, epochs=args.epochs, backbone=args.backbone,
            attention=args.attention, seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def run(settings: Settings) -> dict[str, Any]:
    """Train both sides, alternating epochs; return the result that ``main`` prints as JSON."""
    import keras
    import numpy as np

    from training.datasets import load_dataset, load_images
    from training.models import build_model
    from training.pipeline import training_dataset
    from training.recipe import Recipe, compile_for_training, inverse_frequency_weights, limit_split

    recipe = Recipe(batch_size=settings.batch_size, seed=settings.seed)
    dataset = load_dataset(settings.dataset, seed=settings.seed)
    split = limit_split(dataset.train, settings.images, settings.seed)
    k = dataset.num_classes
    weights = inverse_frequency_weights(split.labels, k)

    # The same pixels for both sides: the pipeline's output is bit-identical to load_images.
    x = load_images(split, settings.image_size)
    y = np.eye(k, dtype=np.float32)[split.labels]
    data = training_dataset(
        split, image_size=settings.image_size, num_classes=k, batch_size=recipe.batch_size, seed=recipe.seed,
        fraction=recipe.epoch_fraction,
    )

    keras.utils.set_random_seed(settings.seed)
    models = [
        build_model(settings.backbone, attention=settings.attention, num_classes=k, image_size=settings.image_size)
        for _ in range(2)
    ]
    models[1].set_weights(models[0].get_weights())
    for model in models:
        compile_for_training(model, recipe)

    fits = {
        "pipeline": lambda timer: models[0].fit(data, epochs=1, class_weight=weights, callbacks=[timer], verbose=0),
        "in-memory": lambda timer: models[1].fit(
            x, y, batch_size=recipe.batch_size, epochs=1, shuffle=True, class_weight=weights, callbacks=[timer], verbose=0
        ),
    }
    EpochTimer = _epoch_timer_class()
    epochs: dict[str, list[Epoch]] = {name: [] for name in fits}
    load_before = os.getloadavg()
    for name, fit in fits.items():  # warm-up: tracing, compilation, the pipeline's decode-and-cache pass
        fit(timer := EpochTimer())
        epochs[name].append(timer.result(len(split), settings.batch_size))
    order = list(fits)
    for epoch in range(settings.epochs):
        for name in order if epoch % 2 == 0 else order[::-1]:  # A B, B A, A B, ...
            fits[name](timer := EpochTimer())
            epochs[name].append(timer.result(len(split), settings.batch_size))
    load_after = os.getloadavg()

    pipeline, in_memory = sides = [Side(name, len(split), e[0], tuple(e[1:])) for name, e in epochs.items()]
    ratio = pipeline.images_per_second / in_memory.images_per_second
    return {
        "benchmark": "training",
        "ratio": round(ratio, 3),
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
        "pipeline_images_per_second": round(pipeline.images_per_second, 2),
        "in_memory_images_per_second": round(in_memory.images_per_second, 2),
        "median_step_ratio": round(pipeline.median_step_images_per_second / in_memory.median_step_images_per_second, 3),
        "cpu_ratio": round(in_memory.cpu_ms_per_image / pipeline.cpu_ms_per_image, 3),
        "sides": {side.name: side.summary() for side in sides},
        "data": {
            "spec": settings.dataset,
            "kind": dataset.kind,
            "synthetic": dataset.synthetic,
            "source": "files decoded from disk" if split.paths is not None else "in-memory arrays",
            "train_images": len(split),
            "classes": k,
        },
        "settings": asdict(settings),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_before": round(load_before[0], 2),
            "load_average_1m_after": round(load_after[0], 2),
        },
    }


def _epoch_timer_class():
    """A keras Callback class, made on demand so that importing this module (or --help) stays fast."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """The one epoch of a fit: wall and process CPU seconds, and each step's wall seconds.

        A step (batch begin to batch end) includes fetching its batch, which happens inside
        Keras' train function; fit's own set-up before the epoch is excluded.
        """

        def __init__(self):
            super().__init__()
            self.seconds = self.cpu_seconds = float("nan")
            self.steps: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._started, self._cpu = time.perf_counter(), time.process_time()

        def on_train_batch_begin(self, batch, logs=None):
            self._step = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append(time.perf_counter() - self._step)

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self._started
            self.cpu_seconds = time.process_time() - self._cpu

        def result(self, images: int, batch_size: int) -> Epoch:
            sizes = [min(batch_size, images - i * batch_size) for i in range(len(self.steps))]
            return Epoch(self.seconds, self.cpu_seconds, tuple(zip(sizes, self.steps)))

    return EpochTimer


def table(result: dict[str, Any]) -> str:
    """The result as a small table a person reads."""
    s, d, m = result["settings"], result["data"], result["machine"]
    what = "SYNTHETIC stand-in" if d["synthetic"] else "real images"
    lines = [
        f"training throughput: {s['backbone']} {'attention' if s['attention'] else 'baseline'} at "
        f"{s['image_size']}x{s['image_size']}, batch {s['batch_size']}, {d['train_images']} images, "
        f"{s['epochs']} measured epoch(s) per side after 1 warm-up",
        f"data: {what}, {d['spec']} ({d['source']})",
        f"load average (1 min) on {m['cpus']} CPUs: {m['load_average_1m_before']} before, {m['load_average_1m_after']} after",
        "",
        f"{'side':<11}{'warm-up s':>10}  {'measured epochs, s':<26}{'images/s':>9}{'median step':>13}{'CPU ms/image':>14}",
    ]
    for name, side in result["sides"].items():
        epochs = " ".join(f"{v:.1f}" for v in side["epoch_seconds"])
        lines.append(
            f"{name:<11}{side['warmup_seconds']:>10.1f}  {epochs:<26}{side['images_per_second']:>9.1f}"
            f"{side['median_step_images_per_second']:>13.1f}{side['cpu_ms_per_image']:>14.1f}"
        )
    verdict = "meets" if result["meets_goal"] else "MISSES"
    lines += [
        "",
        f"ratio pipeline / in-memory: {result['ratio']:.3f} ({verdict} the goal >= {result['goal']})",
        f"  cross-checks less sensitive to other processes: median step {result['median_step_ratio']:.3f}, "
        f"CPU per image (in-memory / pipeline) {result['cpu_ratio']:.3f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, then one JSON line; 0 whatever the ratio (it is a measurement)."""
    settings = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides the table
    with warnings.catch_warnings():
        # fit's default shuffle=True is ignored for a tf.data.Dataset, which shuffles itself.
        warnings.filterwarnings("ignore", message="`shuffle=True` was passed", category=UserWarning)
        result = run(settings)
    print(table(result))
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
