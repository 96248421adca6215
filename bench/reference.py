"""The plain-Keras reference: the canonical Keras MNIST convnet, trained the canonical way.

Conv32-Pool-Conv64-Pool-Dropout0.5-Dense10, Adam at its default rate, batch 128,
validation_split 0.1, 15 epochs, on NumPy arrays in memory scaled to [0, 1]. The arrays come
from TFDS (`keras.datasets.mnist` would try to download); everything else is plain Keras.
"""

from __future__ import annotations

import keras
import numpy as np

from bench.timing import TimeToAccuracy


def build() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def train(x_train, y_train, x_test, y_test, epochs: int = 15, seed: int = 0) -> dict:
    """Train the reference; x_* are raw uint8 images, y_* integer labels."""
    keras.utils.set_random_seed(seed)
    x_train = x_train.astype("float32") / 255.0
    x_test = x_test.astype("float32") / 255.0
    model = build()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    timer = TimeToAccuracy(x_test, y_test)
    model.fit(
        x_train,
        keras.utils.to_categorical(y_train, 10),
        batch_size=128,
        epochs=epochs,
        validation_split=0.1,
        callbacks=[timer],
        verbose=0,
    )
    return timer.results(images_per_epoch=int(len(x_train) * 0.9))


def as_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset.batch(10_000)))
    return np.concatenate(images), np.concatenate(labels)
