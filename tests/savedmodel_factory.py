"""Build tiny SavedModels with the export contract's signature, for serving tests and benches.

The contract (see tfpipeline/export.py): signature `serving_default` takes `images` uint8
[None, H, W, C] and returns `probabilities` float32 [None, classes] and `classes` int64 [None].
These models are untrained; the tests only need deterministic outputs to compare the server
against an in-process call, so no project model code is involved.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import tensorflow as tf


def build_model(arch: str = "dense", shape=(28, 28, 1), classes: int = 10, seed: int = 0):
    """A functional Keras model on raw uint8 pixels; `convnet` has the MNIST baseline's cost."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=shape, dtype="uint8", name="images")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    if arch == "convnet":
        # Same layer sizes as the canonical Keras MNIST convnet, so a benchmark against it
        # spends roughly the compute a trained project model would.
        x = keras.layers.Conv2D(32, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(64, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    elif arch != "dense":
        raise ValueError(f"unknown arch {arch!r}")
    x = keras.layers.Flatten()(x)
    logits = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, logits)


def export(model, path: os.PathLike) -> Path:
    """Write `model` as a SavedModel at `path` with the contract's serving signature."""
    shape = [None, *model.input_shape[1:]]
    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8, name="images")])
    def serve(images):
        logits = model(images, training=False)
        return {"probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, -1)}

    archive.add_endpoint("serving_default", serve)
    archive.write_out(str(path), verbose=False)
    return Path(path)


def export_version(base: os.PathLike, version: int, arch: str = "dense", seed: int = 0) -> Path:
    """Export into `<base>/<version>` atomically (temp dir + rename), as the real export does.

    The temp name is not an integer, so a polling server never sees a half-written version.
    """
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{version}"
    export(build_model(arch, seed=seed), tmp)
    final = base / str(version)
    os.rename(tmp, final)
    return final
