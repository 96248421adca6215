"""Measuring training the way the benchmark reports it: training seconds, images/s, time to 99%."""

from __future__ import annotations

import time

import keras
import numpy as np


class TimeToAccuracy(keras.callbacks.Callback):
    """Times each epoch's training, then evaluates on the test set with the clock stopped.

    `seconds_to_target` is the training time (evaluation excluded) at the end of the first
    epoch whose test accuracy reaches `target`; None if no epoch did.
    """

    def __init__(self, test_images: np.ndarray, test_labels: np.ndarray, target: float = 0.99):
        super().__init__()
        self.test_images, self.test_labels, self.target = test_images, test_labels, target
        self.train_seconds = 0.0
        self.images_seen = 0
        self.epochs: list[dict] = []
        self.seconds_to_target: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self._start
        # Keras runs validation inside the epoch; its time is not training time.
        elapsed -= getattr(self, "_val_seconds", 0.0)
        self._val_seconds = 0.0
        self.train_seconds += elapsed
        logits = self.model.predict(self.test_images, batch_size=1000, verbose=0)
        accuracy = float((np.asarray(logits).argmax(-1) == self.test_labels).mean())
        self.epochs.append({"epoch": epoch + 1, "train_seconds": round(self.train_seconds, 2),
                            "test_accuracy": accuracy})
        if self.seconds_to_target is None and accuracy >= self.target:
            self.seconds_to_target = round(self.train_seconds, 2)
        print(f"    epoch {epoch + 1}: {self.train_seconds:6.1f} s of training, test accuracy {accuracy:.2%}",
              flush=True)

    def on_test_begin(self, logs=None):
        self._val_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self._val_seconds = getattr(self, "_val_seconds", 0.0) + time.perf_counter() - self._val_start

    @property
    def final_accuracy(self) -> float | None:
        return self.epochs[-1]["test_accuracy"] if self.epochs else None

    def results(self, images_per_epoch: int) -> dict:
        """The figures the benchmark reports for one model, as in its JSON."""
        return {
            "seconds_to_99": self.seconds_to_target,
            "final_test_accuracy": self.final_accuracy,
            "images_per_second": round(images_per_epoch * len(self.epochs) / self.train_seconds, 1),
            "train_seconds": round(self.train_seconds, 2),
            "epochs": self.epochs,
        }

