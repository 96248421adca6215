"""RNN: an LSTM or GRU reading the image row by row (MNIST: 28 steps of 28 features)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.data.augmentation import Augmentation
from tfpipeline.models.layers import image_inputs, shift_augmentation
from tfpipeline.models.space import options

if TYPE_CHECKING:  # only for the annotation: importing KerasTuner is slow
    import keras_tuner

CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


# Defaults chosen on MNIST on a 2-core CPU (docs/benchmarks.md, "Family defaults"). Read
# row by row, a digit's lower half decides as much as its upper half: reading the rows in both
# directions lets the last states see both ends. A GRU learned faster than an LSTM of the same
# width here. Light random shifts, dropout on the last state and weight averaging keep the
# validation loss falling to the end (it overfit otherwise, and early stopping keeps the
# epoch of the lowest validation loss).
@dataclasses.dataclass
class Hyperparams:
    cell: str = "gru"  # "lstm" or "gru"
    units: int = 128
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.2
    augment: float = 0.1  # max random shift, as a fraction of the image size; 0 disables
    learning_rate: float = 2e-3
    ema_momentum: float = 0.99  # evaluate and export the average of the last ~100 steps' weights
    epochs: int = 12
    batch_size: int = 128


def build(input_shape, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    if hp.cell not in CELLS:
        raise ValueError(f"Unknown RNN cell {hp.cell!r}; use one of {sorted(CELLS)}.")
    height, width, channels = input_shape
    images, x = image_inputs(input_shape)
    # Each image row is one time step whose features are the row's pixels (and channels).
    x = keras.layers.Reshape((height, width * channels), name="rows")(x)
    for i in range(hp.layers):
        rnn = CELLS[hp.cell](hp.units, return_sequences=i < hp.layers - 1, name=f"{hp.cell}_{i}")
        if hp.bidirectional:
            rnn = keras.layers.Bidirectional(rnn, name=f"bi_{hp.cell}_{i}")
        x = rnn(x)
    if hp.dropout:
        x = keras.layers.Dropout(hp.dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(images, logits, name="rnn")


def augmentation(hp: Hyperparams, seed: int) -> Augmentation:
    """Random shifts of up to `hp.augment` of the image size, in the input pipeline."""
    return shift_augmentation(hp.augment, seed)


def search_space(kt_hp: keras_tuner.HyperParameters, input_shape=(28, 28, 1)) -> Hyperparams:
    """Tunables for `tfpipeline.tuning`; each default is the dataclass default.

    Taller images (more time steps, each with more pixels) also try 384 units.
    """
    d = Hyperparams()
    tall = input_shape[0] > 32
    return Hyperparams(
        learning_rate=kt_hp.Float("learning_rate", 5e-4, 1e-2, sampling="log", default=d.learning_rate),
        cell=kt_hp.Choice("cell", options(d.cell, *CELLS), default=d.cell),
        units=kt_hp.Choice("units", options(64, d.units, 256, *([384] if tall else [])), default=d.units),
        layers=kt_hp.Int("layers", 1, 2, default=d.layers),
        bidirectional=kt_hp.Boolean("bidirectional", default=d.bidirectional),
        dropout=kt_hp.Float("dropout", 0.0, 0.3, step=0.1, default=d.dropout),
        augment=kt_hp.Choice("augment", options(d.augment, 0.0, 0.05), default=d.augment),
    )
