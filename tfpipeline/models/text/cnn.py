"""CNN on text: parallel 1-D convolutions of several widths over word embeddings, max-pooled.

Kim (2014): each convolution width reads phrases of that many words; the max over the
document keeps, per filter, whether (and how strongly) its phrase occurs anywhere, which is
what a topic or an author's habit shows as.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.models.space import ints, joined, options
from tfpipeline.models.text.stems import classifier, embedded_tokens

if TYPE_CHECKING:
    import keras_tuner

    from tfpipeline.inputs.text import TextInput


@dataclasses.dataclass
class Hyperparams:
    embed_dim: int = 128
    filters: int = 128  # per width
    widths: tuple[int, ...] = (3, 4, 5)
    dropout: float = 0.5
    learning_rate: float = 1e-3
    ema_momentum: float = 0.0
    epochs: int = 10
    batch_size: int = 64


def build(text_input: TextInput, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    text, x = embedded_tokens(text_input, hp.embed_dim)
    pooled = []
    for width in hp.widths:
        h = keras.layers.Conv1D(hp.filters, width, padding="same", activation="relu", name=f"conv_{width}")(x)
        pooled.append(keras.layers.GlobalMaxPooling1D(name=f"max_{width}")(h))
    x = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="phrases")(pooled)
    return classifier(text, x, num_classes, dropout=hp.dropout, name="text_cnn")


def search_space(hp: keras_tuner.HyperParameters, text_input=None) -> Hyperparams:
    """Tunables for the search (`tfpipeline.tuning`); each default is the dataclass default."""
    d = Hyperparams()
    return Hyperparams(
        learning_rate=hp.Float("learning_rate", 3e-4, 3e-3, sampling="log", default=d.learning_rate),
        embed_dim=hp.Choice("embed_dim", options(64, d.embed_dim, 256), default=d.embed_dim),
        filters=hp.Choice("filters", options(64, d.filters, 256), default=d.filters),
        widths=ints(hp.Choice("widths", options(joined(d.widths), "2,3,4", "3,5,7"), default=joined(d.widths))),
        dropout=hp.Float("dropout", 0.2, 0.6, step=0.1, default=d.dropout),
    )
