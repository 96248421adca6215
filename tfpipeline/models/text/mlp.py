"""MLP on text: TF-IDF vectors of words and word pairs through dense layers.

A bag of n-grams with TF-IDF weights is the classic strong baseline for topic and authorship
classification; the dense layers on top learn the feature combinations a linear model cannot.
The vectors are L2-normalized (`UnitNormalization`) so a long document and a short one on the
same subject give inputs of the same scale, as scikit-learn's TfidfVectorizer does by default.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.models.space import options

if TYPE_CHECKING:
    import keras_tuner

    from tfpipeline.inputs.text import TextInput


@dataclasses.dataclass
class Hyperparams:
    units: int = 256
    layers: int = 1
    dropout: float = 0.5  # on the (sparse, very wide) input and after each dense layer
    learning_rate: float = 1e-3
    ema_momentum: float = 0.0  # weight averaging: off (a few epochs converge already)
    epochs: int = 10
    batch_size: int = 64


def build(text_input: TextInput, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    text = keras.Input(shape=(), dtype="string", name="text")
    x = text_input.vectorizer("tf_idf")(text)
    x = keras.layers.UnitNormalization(name="l2_normalize")(x)
    if hp.dropout:
        x = keras.layers.Dropout(hp.dropout, name="input_dropout")(x)
    for i in range(hp.layers):
        x = keras.layers.Dense(hp.units, activation="relu", name=f"dense_{i}")(x)
        if hp.dropout:
            x = keras.layers.Dropout(hp.dropout, name=f"dropout_{i}")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(text, logits, name="text_mlp")


def search_space(hp: keras_tuner.HyperParameters, text_input=None) -> Hyperparams:
    """Tunables for the search (`tfpipeline.tuning`); each default is the dataclass default."""
    d = Hyperparams()
    return Hyperparams(
        learning_rate=hp.Float("learning_rate", 3e-4, 3e-3, sampling="log", default=d.learning_rate),
        units=hp.Choice("units", options(d.units, 128, 512), default=d.units),
        layers=hp.Int("layers", 1, 2, default=d.layers),
        dropout=hp.Float("dropout", 0.2, 0.6, step=0.1, default=d.dropout),
    )
