"""RNN on text: a bidirectional GRU or LSTM over word embeddings, max-pooled over the words.

Pooling over every step instead of taking the last state makes the padding that fills short
documents harmless (no mask is needed, so integrated gradients can start from the embeddings),
and lets a word anywhere in a long document count as much as one near its end.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.models.space import options
from tfpipeline.models.text.stems import classifier, embedded_tokens

if TYPE_CHECKING:
    import keras_tuner

    from tfpipeline.inputs.text import TextInput

CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


@dataclasses.dataclass
class Hyperparams:
    cell: str = "gru"
    embed_dim: int = 128
    units: int = 64
    layers: int = 1
    dropout: float = 0.5
    learning_rate: float = 1e-3
    ema_momentum: float = 0.0
    epochs: int = 10
    batch_size: int = 64


def build(text_input: TextInput, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    if hp.cell not in CELLS:
        raise ValueError(f"Unknown RNN cell {hp.cell!r}; use one of {sorted(CELLS)}.")
    text, x = embedded_tokens(text_input, hp.embed_dim)
    for i in range(hp.layers):
        rnn = CELLS[hp.cell](hp.units, return_sequences=True, name=f"{hp.cell}_{i}")
        x = keras.layers.Bidirectional(rnn, name=f"bi_{hp.cell}_{i}")(x)
    x = keras.layers.GlobalMaxPooling1D(name="max")(x)
    return classifier(text, x, num_classes, dropout=hp.dropout, name="text_rnn")


def search_space(hp: keras_tuner.HyperParameters, text_input=None) -> Hyperparams:
    """Tunables for the search (`tfpipeline.tuning`); each default is the dataclass default."""
    d = Hyperparams()
    return Hyperparams(
        learning_rate=hp.Float("learning_rate", 3e-4, 3e-3, sampling="log", default=d.learning_rate),
        cell=hp.Choice("cell", options(d.cell, *CELLS), default=d.cell),
        embed_dim=hp.Choice("embed_dim", options(64, d.embed_dim), default=d.embed_dim),
        units=hp.Choice("units", options(32, d.units, 128), default=d.units),
        layers=hp.Int("layers", 1, 2, default=d.layers),
        dropout=hp.Float("dropout", 0.2, 0.6, step=0.1, default=d.dropout),
    )
