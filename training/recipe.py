"""The paper's training recipe.

Adam (learning rate 0.01, epsilon 0.1), categorical cross-entropy on logits, class weights by
inverse frequency, up to 300 epochs with early stopping (patience 40, min delta 0.001) restoring
the best weights, an optional per-epoch fraction of the training set; seeded; checkpoints and
resumption through Keras' BackupAndRestore.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from training.dataset_types import Dataset, Split
from training.metrics import classification_metrics


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters; the defaults are the paper's."""

    epochs: int = 300
    learning_rate: float = 0.01
    adam_epsilon: float = 0.1
    batch_size: int = 32
    patience: int = 40
    min_delta: float = 0.001
    epoch_fraction: float = 1.0
    class_weights: bool = True
    seed: int = 0
    # None keeps Keras' 0.99. A run of a few dozen steps needs less: at 0.99 the moving statistics
    # are still mostly their initial values when it ends, and evaluation (which uses them) is at chance.
    batchnorm_momentum: float | None = None

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"expected epochs >= 1, got {self.epochs}")
        if not 0.0 < self.epoch_fraction <= 1.0:
            raise ValueError(f"expected an epoch fraction in (0, 1], got {self.epoch_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {self.batch_size}")
        if self.batchnorm_momentum is not None and not 0.0 <= self.batchnorm_momentum < 1.0:
            raise ValueError(f"expected a batch-norm momentum in [0, 1), got {self.batchnorm_momentum}")


@dataclass(frozen=True)
class TrainResult:
    model: keras.Model
    epochs_trained: int
    best_epoch: int
    seconds: float
    images_per_second: float
    history: dict[str, list[float]] = field(repr=False)
    metrics: dict[str, Any] = field(repr=False)


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """n / (K * n_c) per class present (absent classes get 1.0: they never appear in a batch)."""
    counts = np.bincount(labels, minlength=num_classes)
    total = counts.sum()
    return {c: float(total / (num_classes * n)) if n else 1.0 for c, n in enumerate(counts)}


def limit_split(split: Split, limit: int | None, seed: int) -> Split:
    """A seeded random subset of at most `limit` samples (all of them when None)."""
    if limit is None or limit >= len(split):
        return split
    if limit < 1:
        raise ValueError(f"expected --limit >= 1, got {limit}")
    rng = np.random.default_rng(seed)
    return split.subset(np.sort(rng.permutation(len(split))[:limit]))


def compile_for_training(model: keras.Model, recipe: Recipe) -> None:
    """Compile `model` with the recipe's optimiser and loss (the benchmark compiles the same way)."""
    if recipe.batchnorm_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = recipe.batchnorm_momentum
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=recipe.learning_rate, epsilon=recipe.adam_epsilon),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def evaluate(model: keras.Model, split: Split, *, image_size: int, class_names, batch_size: int = 64) -> dict[str, Any]:
    """Metrics of `model` on a split (probabilities from the model's logits)."""
    from training.pipeline import evaluation_dataset

    if len(split) == 0:
        return {"n": 0}
    data = evaluation_dataset(split, image_size=image_size, num_classes=len(class_names), batch_size=batch_size)
    logits = model.predict(data.map(lambda x, y: x), verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    return classification_metrics(split.labels, probabilities, class_names)


def train(
    model: keras.Model,
    dataset: Dataset,
    *,
    recipe: Recipe = Recipe(),
    limit: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    verbose: int | str = "auto",
    label: str | None = None,
) -> TrainResult:
    """Train `model` on `dataset`'s train split, validate on val; metrics on val and test.

    Progress goes to stderr (training.progress, headed `label`, default the model's name) unless
    `verbose` is 0 or False; Keras' own output is always off.
    """
    import math

    from training.pipeline import evaluation_dataset, training_dataset
    from training.progress import TrainingProgress

    keras.utils.set_random_seed(recipe.seed)
    image_size = int(model.input_shape[1])
    k = len(dataset.class_names)
    train_split = limit_split(dataset.train, limit, recipe.seed)
    if len(train_split) == 0:
        raise ValueError(f"{dataset.source}: the training split is empty")
    compile_for_training(model, recipe)
    train_data = training_dataset(
        train_split, image_size=image_size, num_classes=k, batch_size=recipe.batch_size,
        seed=recipe.seed, fraction=recipe.epoch_fraction,
    )
    has_val = len(dataset.val) > 0
    val_data = (
        evaluation_dataset(dataset.val, image_size=image_size, num_classes=k, batch_size=max(64, recipe.batch_size))
        if has_val
        else None
    )
    monitor = "val_loss" if has_val else "loss"
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=recipe.patience, min_delta=recipe.min_delta, restore_best_weights=True
        )
    ]
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        backup = checkpoint_dir / "backup"
        if not resume and backup.exists():
            shutil.rmtree(backup)  # a fresh run must not silently continue an old one
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        callbacks += [
            keras.callbacks.BackupAndRestore(str(backup)),
            keras.callbacks.ModelCheckpoint(str(checkpoint_dir / "best.keras"), monitor=monitor, save_best_only=True),
        ]
    if verbose:
        per_epoch = len(train_split) if recipe.epoch_fraction == 1.0 else max(1, math.ceil(recipe.epoch_fraction * len(train_split)))
        callbacks.append(TrainingProgress(
            label=label or model.name, epochs=recipe.epochs, images_per_epoch=per_epoch, batch_size=recipe.batch_size,
        ))
    weights = inverse_frequency_weights(train_split.labels, k) if recipe.class_weights else None
    started = time.perf_counter()
    history = model.fit(
        train_data, validation_data=val_data, epochs=recipe.epochs, class_weight=weights,
        callbacks=callbacks, verbose=0,
        shuffle=False,  # the pipeline shuffles; Keras warns that its own default is ignored for a tf.data.Dataset
    )
    seconds = time.perf_counter() - started
    hist = {key: [float(v) for v in values] for key, values in history.history.items()}
    epochs_trained = len(hist.get("loss", []))
    seen = epochs_trained * max(1, round(len(train_split) * recipe.epoch_fraction))
    best = int(np.argmin(hist[monitor])) + 1 if hist.get(monitor) else epochs_trained
    metrics = {
        "val": evaluate(model, dataset.val, image_size=image_size, class_names=dataset.class_names),
        "test": evaluate(model, dataset.test, image_size=image_size, class_names=dataset.class_names),
        "epochs_trained": epochs_trained,
        "best_epoch": best,
    }
    return TrainResult(model, epochs_trained, best, seconds, seen / seconds if seconds else 0.0, hist, metrics)


def recipe_card(recipe: Recipe, *, limit: int | None, train_size: int) -> dict[str, Any]:
    """The recipe as recorded in the model card."""
    return {**asdict(recipe), "optimizer": "adam", "loss": "categorical_crossentropy", "limit": limit, "train_images": train_size}
