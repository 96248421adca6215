"""Transformer on text: word embeddings plus learned position embeddings, pre-norm encoder
blocks, mean-pooled over the words.

The encoder block is the image family's (`models.transformer.encoder_block`): one definition
of the block for both inputs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.models.layers import PositionEmbedding
from tfpipeline.models.space import options
from tfpipeline.models.text.stems import classifier, embedded_tokens
from tfpipeline.models.transformer import encoder_block

if TYPE_CHECKING:
    import keras_tuner

    from tfpipeline.inputs.text import TextInput


@dataclasses.dataclass
class Hyperparams:
    embed_dim: int = 64
    num_heads: int = 4
    layers: int = 1
    mlp_ratio: int = 2
    dropout: float = 0.1  # inside the blocks (attention and MLP)
    head_dropout: float = 0.5  # on the pooled document vector
    learning_rate: float = 1e-3
    ema_momentum: float = 0.0
    epochs: int = 10
    batch_size: int = 64


def build(text_input: TextInput, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    text, x = embedded_tokens(text_input, hp.embed_dim)
    x = PositionEmbedding(name="positions")(x)
    for i in range(hp.layers):
        x = encoder_block(x, hp, f"block_{i}")
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D(name="mean")(x)
    return classifier(text, x, num_classes, dropout=hp.head_dropout, name="text_transformer")


def search_space(hp: keras_tuner.HyperParameters, text_input=None) -> Hyperparams:
    """Tunables for the search (`tfpipeline.tuning`); each default is the dataclass default."""
    d = Hyperparams()
    return Hyperparams(
        learning_rate=hp.Float("learning_rate", 3e-4, 3e-3, sampling="log", default=d.learning_rate),
        embed_dim=hp.Choice("embed_dim", options(d.embed_dim, 128), default=d.embed_dim),
        num_heads=hp.Choice("num_heads", options(2, d.num_heads), default=d.num_heads),
        layers=hp.Int("layers", 1, 2, default=d.layers),
        dropout=hp.Float("dropout", 0.0, 0.3, step=0.1, default=d.dropout),
        head_dropout=hp.Float("head_dropout", 0.2, 0.6, step=0.1, default=d.head_dropout),
    )
