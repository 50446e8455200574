"""Training progress on the terminal: which model of how many, the epoch, images per second, ETA.

On a terminal (stderr a TTY) one tqdm bar per model, over all its epochs' images, so its rate is
images/s and its ETA the model's, with a line per epoch above it; elsewhere (a log file, CI, a
pipe) only the line per epoch, never a redrawn bar, so logs stay readable.
"""

from __future__ import annotations

import io
import os
import sys
import time
from typing import IO, Any

import keras
from tqdm import tqdm

# What an epoch line reports of Keras' logs, in this order (the rest, e.g. the learning rate, is noise here).
_SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy")


def _metrics(logs: dict[str, Any] | None) -> str:
    return ", ".join(f"{key} {float(logs[key]):.3f}" for key in _SHOWN if logs and key in logs)


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _columns(stream: IO[str]) -> int | None:
    """None (the bar follows the terminal's width), or 80 where the terminal reports no width (some
    pseudo-terminals say 0 columns, and tqdm then draws nothing at all)."""
    try:
        return None if os.get_terminal_size(stream.fileno()).columns else 80
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 80


class TrainingProgress(keras.callbacks.Callback):
    """A Keras callback that replaces `fit`'s own output (run `fit` with verbose=0 beside it)."""

    def __init__(
        self,
        *,
        label: str,
        epochs: int,
        images_per_epoch: int,
        batch_size: int,
        stream: IO[str] | None = None,
        interactive: bool | None = None,
    ):
        super().__init__()
        if epochs < 1 or images_per_epoch < 1 or batch_size < 1:
            raise ValueError(
                f"expected epochs, images_per_epoch and batch_size >= 1, got {epochs}, {images_per_epoch}, {batch_size}"
            )
        self.label = label
        self.epochs = epochs
        self.images = images_per_epoch
        self.batch_size = batch_size
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty()) if interactive is None else interactive
        self._bar: tqdm | None = None
        self._started = self._epoch_started = 0.0
        self._epoch = 0
        self._seen = 0

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def on_train_begin(self, logs=None) -> None:
        self._started = time.perf_counter()
        # The first batch also traces and optimises the training graph: say so, or it looks hung.
        self._write(
            f"{self.label}: {self.epochs} epoch(s) of {self.images} images, batch {self.batch_size}; "
            "the first batch also builds the training graph"
        )
        if self.interactive:
            columns = _columns(self.stream)
            self._bar = tqdm(
                total=self.epochs * self.images, unit="img", file=self.stream, ncols=columns,
                dynamic_ncols=columns is None, desc=f"{self.label} epoch 1/{self.epochs}", smoothing=0.1,
            )

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch, self._seen = epoch, 0
        self._epoch_started = time.perf_counter()
        if self._bar is not None:
            self._bar.set_description(f"{self.label} epoch {epoch + 1}/{self.epochs}", refresh=False)
            resumed = epoch * self.images - self._bar.n  # BackupAndRestore started past epoch 1
            if resumed > 0:
                self._bar.update(resumed)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        seen = min((batch + 1) * self.batch_size, self.images)
        if self._bar is not None:
            self._bar.set_postfix_str(_metrics(logs), refresh=False)
            self._bar.update(seen - self._seen)
        self._seen = seen

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        now = time.perf_counter()
        seconds = now - self._epoch_started
        done = epoch + 1
        # The latest epoch is the best guess for the next ones (the first also built the graph);
        # early stopping can only make the rest shorter.
        remaining = seconds * (self.epochs - done)
        if self._bar is not None:
            self._bar.set_postfix_str(_metrics(logs))
        self._write(
            f"{self.label} epoch {done}/{self.epochs}: {self._seen} images in {seconds:.1f} s "
            f"({self._seen / seconds if seconds else 0.0:.1f} img/s), {_metrics(logs)}; "
            f"elapsed {_clock(now - self._started)}, ETA {_clock(remaining)}"
        )

    def on_train_end(self, logs=None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._write(f"{self.label}: trained in {_clock(time.perf_counter() - self._started)}")
