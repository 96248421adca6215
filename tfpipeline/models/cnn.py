"""CNN: conv blocks (conv, batch norm, activation, pooling), dropout and a dense head."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.models.layers import image_inputs
from tfpipeline.models.space import ints, joined, options

if TYPE_CHECKING:  # only for the annotation: importing KerasTuner is slow
    import keras_tuner


# Defaults measured on MNIST on a 2-core CPU (README, "Results"): batch norm and a small
# dense head buy ~0.3 points of test accuracy over the plain Keras convnet for ~1.5x the
# compute per image; "valid" padding keeps the maps small. Padding "same", bfloat16 and
# XLA were all slower here.
@dataclasses.dataclass
class Hyperparams:
    filters: tuple[int, ...] = (32, 64)  # one conv block per entry, each halving the resolution
    convs_per_block: int = 1
    kernel_size: int = 3
    padding: str = "valid"  # "valid" shrinks each map by kernel_size-1: less compute than "same"
    batch_norm: bool = True
    dropout: float = 0.3
    dense_units: int = 128  # 0: straight from the last block to the logits
    augment: float = 0.0  # max random shift, as a fraction of the image size; 0 disables
    learning_rate: float = 3e-3
    epochs: int = 8
    batch_size: int = 128


def build(input_shape, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    images, x = image_inputs(input_shape)
    if hp.augment:
        # Active only in training; the exported model sees the image unchanged.
        x = keras.layers.RandomTranslation(hp.augment, hp.augment, fill_mode="constant", name="shift")(x)
    for b, filters in enumerate(hp.filters):
        for c in range(hp.convs_per_block):
            # No bias before batch norm: its shift makes the bias redundant.
            x = keras.layers.Conv2D(
                filters, hp.kernel_size, padding=hp.padding, use_bias=not hp.batch_norm, name=f"conv{b}_{c}"
            )(x)
            if hp.batch_norm:
                x = keras.layers.BatchNormalization(name=f"bn{b}_{c}")(x)
            x = keras.layers.Activation("relu", name=f"relu{b}_{c}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{b}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if hp.dropout:
        x = keras.layers.Dropout(hp.dropout, name="dropout")(x)
    if hp.dense_units:
        x = keras.layers.Dense(hp.dense_units, activation="relu", name="dense")(x)
        if hp.dropout:
            x = keras.layers.Dropout(hp.dropout, name="dense_dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(images, logits, name="cnn")


def search_space(hp: keras_tuner.HyperParameters) -> Hyperparams:
    """Tunables for `tfpipeline.tuning`; each default is the dataclass default.

    Widths stop at 48,96: wider blocks cost ~2x per epoch for no gain on 28x28 digits.
    """
    d = Hyperparams()
    return Hyperparams(
        learning_rate=hp.Float("learning_rate", 1e-3, 1e-2, sampling="log", default=d.learning_rate),
        filters=ints(hp.Choice("filters", options("16,32", joined(d.filters), "48,96"), default=joined(d.filters))),
        dense_units=hp.Choice("dense_units", options(0, 64, d.dense_units, 256), default=d.dense_units),
        dropout=hp.Float("dropout", 0.1, 0.5, step=0.1, default=d.dropout),
        batch_norm=hp.Boolean("batch_norm", default=d.batch_norm),
        # Light random shifts: the regularizer that pays off most on digits.
        augment=hp.Choice("augment", options(d.augment, 0.05, 0.1), default=d.augment),
    )
