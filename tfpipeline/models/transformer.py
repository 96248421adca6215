"""Transformer (ViT-style): patch embedding, learned positions, pre-norm encoder blocks."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.models.layers import ClassToken, PositionEmbedding, image_inputs
from tfpipeline.models.space import options

if TYPE_CHECKING:  # only for the annotation: importing KerasTuner is slow
    import keras_tuner


@dataclasses.dataclass
class Hyperparams:
    # MNIST: 4x4 = 16 patches of 7x7 pixels. 4-pixel patches (49 of them) cost about 3x more
    # per image on a 2-core CPU for no accuracy we could measure within a default run.
    patch_size: int = 7
    embed_dim: int = 64
    num_heads: int = 4
    layers: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.1
    pooling: str = "mean"  # "mean" over patches, or "cls" for a class token
    learning_rate: float = 2e-3
    epochs: int = 12
    batch_size: int = 128


def encoder_block(x, hp: Hyperparams, name: str):
    """Pre-norm block: x + MHA(LN(x)), then x + MLP(LN(x)); norm first keeps training stable."""
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    h = keras.layers.MultiHeadAttention(
        hp.num_heads, hp.embed_dim // hp.num_heads, dropout=hp.dropout, name=f"{name}_mha"
    )(h, h)
    x = keras.layers.Add(name=f"{name}_add1")([x, h])
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    h = keras.layers.Dense(hp.embed_dim * hp.mlp_ratio, activation="gelu", name=f"{name}_mlp1")(h)
    h = keras.layers.Dropout(hp.dropout, name=f"{name}_drop")(h)
    h = keras.layers.Dense(hp.embed_dim, name=f"{name}_mlp2")(h)
    return keras.layers.Add(name=f"{name}_add2")([x, h])


def build(input_shape, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    height, width, _ = input_shape
    if height % hp.patch_size or width % hp.patch_size:
        raise ValueError(f"patch_size {hp.patch_size} must divide the image size {height}x{width}.")
    if hp.embed_dim % hp.num_heads:
        raise ValueError(f"embed_dim {hp.embed_dim} must be a multiple of num_heads {hp.num_heads}.")
    if hp.pooling not in ("mean", "cls"):
        raise ValueError(f"Unknown pooling {hp.pooling!r}; use 'mean' or 'cls'.")
    images, x = image_inputs(input_shape)
    # A strided convolution is the usual way to cut patches and project them in one step.
    x = keras.layers.Conv2D(hp.embed_dim, hp.patch_size, strides=hp.patch_size, name="patchify")(x)
    num_patches = (height // hp.patch_size) * (width // hp.patch_size)
    x = keras.layers.Reshape((num_patches, hp.embed_dim), name="patches")(x)
    if hp.pooling == "cls":
        x = ClassToken(name="cls_token")(x)
    x = PositionEmbedding(name="positions")(x)
    x = keras.layers.Dropout(hp.dropout, name="embed_dropout")(x)
    for i in range(hp.layers):
        x = encoder_block(x, hp, name=f"block{i}")
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    if hp.pooling == "cls":
        # Keep only the class token: crop the patch positions away, then drop the length axis.
        x = keras.layers.Cropping1D((0, num_patches), name="take_cls")(x)
        x = keras.layers.Reshape((hp.embed_dim,), name="cls")(x)
    else:
        x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(images, logits, name="transformer")


def search_space(hp: keras_tuner.HyperParameters) -> Hyperparams:
    """Tunables for `tfpipeline.tuning`; each default is the dataclass default.

    Powers of two for embed_dim and num_heads keep every pair divisible. Patch sizes 4 and
    7 divide 28 (MNIST, Fashion-MNIST); on other image sizes a non-dividing patch size makes
    that trial fail, and the search goes on with the next one.
    """
    d = Hyperparams()
    return Hyperparams(
        learning_rate=hp.Float("learning_rate", 5e-4, 5e-3, sampling="log", default=d.learning_rate),
        patch_size=hp.Choice("patch_size", options(d.patch_size, 4, 7), default=d.patch_size),
        embed_dim=hp.Choice("embed_dim", options(32, d.embed_dim, 128), default=d.embed_dim),
        num_heads=hp.Choice("num_heads", options(2, d.num_heads, 8), default=d.num_heads),
        layers=hp.Int("layers", 2, 6, step=2, default=d.layers),
        mlp_ratio=hp.Choice("mlp_ratio", options(d.mlp_ratio, 2, 4), default=d.mlp_ratio),
        dropout=hp.Float("dropout", 0.0, 0.3, step=0.1, default=d.dropout),
    )
