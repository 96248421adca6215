"""The feature-tokenizer transformer on a table (Gorishniy et al. 2021, "Revisiting deep
learning models for tabular data"): each column becomes one token, attention mixes them.

A number's token is its standardized value (and missing indicator) times a learned vector
plus a learned bias; a category's is a learned embedding of its value, which on the encoder's
one-hot vector is the same thing: one dense projection per column (`ColumnTokens`). A class
token is prepended, the image transformer's pre-norm blocks mix the tokens, and the class
token's final state gives the logits.
"""

from __future__ import annotations

import dataclasses

import keras

from tfpipeline.models.layers import ClassToken
from tfpipeline.models.space import options
from tfpipeline.models.table.encoder import BODY, assemble
from tfpipeline.models.transformer import encoder_block


@dataclasses.dataclass
class Hyperparams:
    embed_dim: int = 32
    num_heads: int = 4
    layers: int = 2
    mlp_ratio: int = 2
    dropout: float = 0.1
    learning_rate: float = 1e-3
    ema_momentum: float = 0.0
    epochs: int = 60
    batch_size: int = 32


@keras.saving.register_keras_serializable(package="tfpipeline")
class ColumnTokens(keras.layers.Layer):
    """`[n, sum(widths)]` encoded columns → `[n, len(widths), dim]` tokens, one projection each.

    Args:
        widths: each column's number of encoded floats, in order.
        dim: the token size.
    """

    def __init__(self, widths, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.widths, self.dim = [int(w) for w in widths], int(dim)

    def build(self, input_shape):
        self.kernels = [self.add_weight(name=f"kernel_{i}", shape=(w, self.dim), initializer="glorot_uniform")
                        for i, w in enumerate(self.widths)]
        self.biases = [self.add_weight(name=f"bias_{i}", shape=(self.dim,), initializer="zeros")
                       for i in range(len(self.widths))]

    def call(self, inputs):
        tokens, start = [], 0
        for kernel, bias, width in zip(self.kernels, self.biases, self.widths):
            tokens.append(keras.ops.matmul(inputs[:, start:start + width], kernel) + bias)
            start += width
        return keras.ops.stack(tokens, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.widths), self.dim)

    def get_config(self):
        return {**super().get_config(), "widths": self.widths, "dim": self.dim}


def body(widths: list[int], num_classes: int, hp: Hyperparams) -> keras.Model:
    if hp.embed_dim % hp.num_heads:
        raise ValueError(f"embed_dim {hp.embed_dim} must be a multiple of num_heads {hp.num_heads}.")
    features = keras.Input(shape=(sum(widths),), name="features")
    x = ColumnTokens(widths, hp.embed_dim, name="column_tokens")(features)
    x = ClassToken(name="cls_token")(x)
    for i in range(hp.layers):
        x = encoder_block(x, hp, name=f"block{i}")
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = keras.layers.Cropping1D((0, len(widths)), name="take_cls")(x)
    x = keras.layers.Reshape((hp.embed_dim,), name="cls")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(features, logits, name=BODY)


def build(table, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    """`table`: the `TableInput` (its `features` columns)."""
    hp = hp or Hyperparams()
    return assemble(table.features, body([c.width for c in table.features], num_classes, hp), "table_transformer")


def search_space(hp, input_shape=None) -> Hyperparams:
    """Tunables for the search; each default is the dataclass default."""
    d = Hyperparams()
    return Hyperparams(
        learning_rate=hp.Float("learning_rate", 3e-4, 3e-3, sampling="log", default=d.learning_rate),
        embed_dim=hp.Choice("embed_dim", options(16, d.embed_dim, 64), default=d.embed_dim),
        num_heads=hp.Choice("num_heads", options(2, d.num_heads), default=d.num_heads),
        layers=hp.Int("layers", 1, 3, default=d.layers),
        dropout=hp.Float("dropout", 0.0, 0.3, step=0.1, default=d.dropout),
    )
