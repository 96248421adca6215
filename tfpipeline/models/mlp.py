"""MLP: the flattened image through a stack of dense layers."""

from __future__ import annotations

import dataclasses

import keras

from tfpipeline.models.layers import image_inputs, normalization


@dataclasses.dataclass
class Hyperparams:
    units: int = 512
    layers: int = 2
    dropout: float = 0.2
    normalization: str = "none"  # "batch", "layer" or "none"
    # Training settings that suit this family.
    learning_rate: float = 2e-3
    epochs: int = 12
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
