"""Training shows which model of how many, the epoch, images/s and an ETA: a bar on a terminal,
one line per epoch in a log. A tiny real Keras model through the project's recipe."""

from __future__ import annotations

import io
import re

import keras
import numpy as np
import pytest

from training.dataset_types import Split, make_dataset
from training.progress import TrainingProgress
from training.recipe import Recipe, train


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _dataset():
    rng = np.random.default_rng(0)
    n = 30
    labels = np.arange(n) % 3
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    ids = tuple(f"i{k}" for k in range(n))
    split = Split(ids=ids, labels=labels.astype(np.int64), groups=ids, images=images)
    return make_dataset(kind="test", source="test", default_task="test", class_names=("a", "b", "c"),
                        train=split.subset(range(20)), val=split.subset(range(20, 25)), test=split.subset(range(25, 30)))


def _model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(x), name="tiny")


def test_a_log_gets_one_line_per_epoch_with_rate_and_eta(capsys):
    train(_model(), _dataset(), recipe=Recipe(epochs=3, batch_size=8, learning_rate=0.01), label="model 1 of 2 tiny")
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == "model 1 of 2 tiny: 3 epoch(s) of 20 images, batch 8; the first batch also builds the training graph"
    epoch = r"model 1 of 2 tiny epoch {}/3: 20 images in [\d.]+ s \([\d.]+ img/s\), loss [\d.]+, accuracy [\d.]+, " \
            r"val_loss [\d.]+, val_accuracy [\d.]+; elapsed \d+:\d\d, ETA \d+:\d\d"
    for number, line in enumerate(lines[1:4], 1):
        assert re.fullmatch(epoch.format(number), line), line
    assert lines[3].endswith("ETA 0:00")
    assert re.fullmatch(r"model 1 of 2 tiny: trained in \d+:\d\d", lines[4]) and len(lines) == 5
    assert "\r" not in err  # no redrawn bar in a log


def test_silent_when_verbose_is_0(capsys):
    train(_model(), _dataset(), recipe=Recipe(epochs=1, batch_size=8), verbose=0)
    captured = capsys.readouterr()
    assert (captured.err, captured.out) == ("", "")


def test_a_terminal_gets_a_bar_in_images_per_second():
    terminal = Terminal()
    data = _dataset().train
    x, y = data.images.astype("float32") / 255, np.eye(3, dtype="float32")[data.labels]
    model = _model()
    model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    progress = TrainingProgress(label="model 2 of 2 tiny", epochs=2, images_per_epoch=20, batch_size=8, stream=terminal)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[progress], shuffle=False)
    shown = terminal.getvalue()
    assert "\r" in shown  # tqdm redraws the bar in place
    assert re.search(r"model 2 of 2 tiny epoch 2/2: 100%\|.*\| 40/40 \[[\d:]+<[\d:]+, +[\d.]+img/s, loss", shown), shown
    assert "model 2 of 2 tiny epoch 1/2: 20 images in" in shown  # the epoch's line, written above the bar


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"images_per_epoch": 0}, {"batch_size": 0}])
def test_bad_progress_arguments(kwargs):
    base = {"label": "m", "epochs": 1, "images_per_epoch": 1, "batch_size": 1}
    with pytest.raises(ValueError, match="expected epochs, images_per_epoch and batch_size >= 1, got"):
        TrainingProgress(**{**base, **kwargs})
