"""MLP: the flattened image through a stack of dense layers."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.data.augmentation import Augmentation
from tfpipeline.models.layers import image_inputs, normalization, shift_augmentation
from tfpipeline.models.space import options

if TYPE_CHECKING:  # only for the annotation: importing KerasTuner is slow
    import keras_tuner


# Defaults chosen on MNIST on a 2-core CPU (docs/benchmarks.md, "Family defaults"). A
# dense net has no built-in notion of where a stroke is, so it overfits the training pixels
# (training loss near 0 while test accuracy stalls): random shifts of a few pixels are the
# regularizer that pays off, and they need more epochs, which this family can afford since
# an epoch costs a few seconds. Averaging the weights smooths the end of the run.
@dataclasses.dataclass
class Hyperparams:
    units: int = 512
    layers: int = 2
    dropout: float = 0.2
    normalization: str = "none"  # "batch", "layer" or "none"
    augment: float = 0.1  # max random shift, as a fraction of the image size; 0 disables
    # Training settings that suit this family.
    learning_rate: float = 2e-3
    ema_momentum: float = 0.99  # evaluate and export the average of the last ~100 steps' weights
    epochs: int = 20
    batch_size: int = 256


def build(input_shape, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    images, x = image_inputs(input_shape)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in range(hp.layers):
        x = keras.layers.Dense(hp.units, use_bias=hp.normalization == "none", name=f"dense_{i}")(x)
        norm = normalization(hp.normalization, f"norm_{i}")
        if norm is not None:
            x = norm(x)
        x = keras.layers.Activation("relu", name=f"relu_{i}")(x)
        if hp.dropout:
            x = keras.layers.Dropout(hp.dropout, name=f"dropout_{i}")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(images, logits, name="mlp")


def augmentation(hp: Hyperparams, seed: int) -> Augmentation:
    """Random shifts of up to `hp.augment` of the image size, in the input pipeline."""
    return shift_augmentation(hp.augment, seed)


def search_space(kt_hp: keras_tuner.HyperParameters, input_shape=(28, 28, 1)) -> Hyperparams:
    """Tunables for `tfpipeline.tuning`; each default is the dataclass default.

    Larger inputs (more than MNIST's 784 values) also try 2048 units: the first layer then
    still narrows the input at most ~6x.
    """
    d = Hyperparams()
    size = input_shape[0] * input_shape[1] * input_shape[2]
    return Hyperparams(
        learning_rate=kt_hp.Float("learning_rate", 3e-4, 1e-2, sampling="log", default=d.learning_rate),
        units=kt_hp.Choice("units", options(128, 256, d.units, 1024, *([2048] if size > 28 * 28 else [])),
                           default=d.units),
        layers=kt_hp.Int("layers", 1, 3, default=d.layers),
        dropout=kt_hp.Float("dropout", 0.0, 0.5, step=0.1, default=d.dropout),
        normalization=kt_hp.Choice("normalization", options(d.normalization, "batch", "layer"),
                                   default=d.normalization),
        augment=kt_hp.Choice("augment", options(d.augment, 0.0, 0.05, 0.15), default=d.augment),
    )
