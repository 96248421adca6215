"""The day's train rate: how fast this machine trains a small convnet today, as one number.

A run's wall time means little on its own: on this project's shared machines the speed of a
small training step moves 2-4x from one day to the next. So each run measures, once, before it
trains, the images per second of the keras.io "Simple MNIST convnet" (Conv32-Pool-Conv64-Pool-
Flatten-Dropout-Dense10, Adam, sparse cross-entropy, batch 128) trained with `train_on_batch` on
one fixed batch of random data, and records it beside its stage times (metadata.json's
`timing.train_rate`, the printed summary). A wall time then compares across days as
`seconds x images_per_s` (the work, in images of that convnet), or scaled by
`reference_rate / images_per_s`.

It is the procedure of the project's benchmark reference (`../shared/tools/train_rate.py`: 20
warm-up steps, then the best of 3 x 150 steps), shortened to 10 warm-up steps and the best of
2 x 40: a few seconds (building and tracing the model, then 90 x 128 images at the day's rate)
where the reference takes ten or more. How close the two read is measured, with the dates, in
docs/benchmarks.md; re-check by alternating `python ../shared/tools/train_rate.py` and
`python -c "from tfpipeline.report import trainrate; print(trainrate.measure())"` on a quiet
machine.

`TFPIPELINE_TRAIN_RATE=0` skips the measurement (the tests set it; a run records that it was
skipped). It runs on the chief only: a multi-worker run's other workers and a distributed
search's workers skip it.
"""

from __future__ import annotations

import os
import time

ENV_TRAIN_RATE = "TFPIPELINE_TRAIN_RATE"
MODEL = "keras.io MNIST convnet, batch 128"
BATCH = 128
WARMUP_STEPS = 10
STEPS = 40
REPEATS = 2


def enabled() -> bool:
    """False when `TFPIPELINE_TRAIN_RATE` is 0 (or false, no, off)."""
    return os.environ.get(ENV_TRAIN_RATE, "1").strip().lower() not in ("0", "false", "no", "off")


def _convnet():
    """The keras.io MNIST convnet, its layers named so that building it takes none of Keras's
    automatic names (the pipeline's own layers keep theirs, with or without the measurement)."""
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1), name="train_rate_images"),
        layers.Conv2D(32, 3, activation="relu", name="train_rate_conv1"),
        layers.MaxPooling2D(2, name="train_rate_pool1"),
        layers.Conv2D(64, 3, activation="relu", name="train_rate_conv2"),
        layers.MaxPooling2D(2, name="train_rate_pool2"),
        layers.Flatten(name="train_rate_flatten"),
        layers.Dropout(0.5, name="train_rate_dropout"),
        layers.Dense(10, activation="softmax", name="train_rate_dense"),
    ], name="train_rate_convnet")
    model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.Adam(name="train_rate_adam"))
    return model


def measure(*, steps: int = STEPS, repeats: int = REPEATS, warmup: int = WARMUP_STEPS) -> dict:
    """Train the convnet on one random batch and return the best images/s of `repeats` timed
    runs of `steps` steps each, after `warmup` untimed steps.

    Returns:
        {"images_per_s": N, "model": MODEL, "steps": "...", "seconds": the measurement's cost}
    """
    import numpy as np

    started = time.perf_counter()
    model = _convnet()
    rng = np.random.default_rng(0)  # its own generator: the run's seeded streams are not touched
    x = rng.random((BATCH, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        best = max(best, steps * BATCH / (time.perf_counter() - start))
    return {"images_per_s": round(best), "model": MODEL,
            "steps": f"{warmup} warm-up, then the best of {repeats} x {steps}",
            "seconds": round(time.perf_counter() - started, 2)}
