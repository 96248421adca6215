"""The MLP on a table: the encoded columns through a stack of dense layers.

Tables are small and their signal is in a few features, so the defaults are a narrow net
with dropout, more epochs than for images and small batches (a few hundred rows make only a
few steps per epoch). No augmentation: there is no neutral way to perturb a table's row.
"""

from __future__ import annotations

import dataclasses

import keras

from tfpipeline.models.space import options
from tfpipeline.models.table.encoder import BODY, assemble


@dataclasses.dataclass
class Hyperparams:
    units: int = 128
    layers: int = 2
    dropout: float = 0.1
    normalization: str = "none"  # "batch", "layer" or "none"
    learning_rate: float = 3e-3
    ema_momentum: float = 0.0  # the images' weight averaging does not pay on a few steps per epoch
    epochs: int = 60
    batch_size: int = 32


def body(width: int, num_classes: int, hp: Hyperparams) -> keras.Model:
    features = keras.Input(shape=(width,), name="features")
    x = features
    for i in range(hp.layers):
        x = keras.layers.Dense(hp.units, use_bias=hp.normalization == "none", name=f"dense_{i}")(x)
        if hp.normalization == "batch":
            x = keras.layers.BatchNormalization(name=f"norm_{i}")(x)
        elif hp.normalization == "layer":
            x = keras.layers.LayerNormalization(name=f"norm_{i}")(x)
        x = keras.layers.Activation("relu", name=f"relu_{i}")(x)
        if hp.dropout:
            x = keras.layers.Dropout(hp.dropout, name=f"dropout_{i}")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(features, logits, name=BODY)


def build(table, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    """`table`: the `TableInput` (its `features` columns)."""
    hp = hp or Hyperparams()
    width = sum(c.width for c in table.features)
    return assemble(table.features, body(width, num_classes, hp), name="table_mlp")


def search_space(hp, input_shape=None) -> Hyperparams:
    """Tunables for the search; each default is the dataclass default."""
    d = Hyperparams()
    return Hyperparams(
        learning_rate=hp.Float("learning_rate", 3e-4, 1e-2, sampling="log", default=d.learning_rate),
        units=hp.Choice("units", options(32, 64, d.units, 256), default=d.units),
        layers=hp.Int("layers", 1, 3, default=d.layers),
        dropout=hp.Float("dropout", 0.0, 0.5, step=0.1, default=d.dropout),
        normalization=hp.Choice("normalization", options(d.normalization, "batch", "layer"), default=d.normalization),
    )
