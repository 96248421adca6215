"""Transformer (ViT-style): a convolutional stem embeds patches, learned positions, pre-norm encoder blocks."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.data.augmentation import Augmentation
from tfpipeline.models.layers import ClassToken, PositionEmbedding, image_inputs, shift_augmentation
from tfpipeline.models.space import options

if TYPE_CHECKING:  # only for the annotation: importing KerasTuner is slow
    import keras_tuner


# Defaults chosen on MNIST on a 2-core CPU (docs/benchmarks.md, "Family defaults"). The
# tokens decide the accuracy more than the depth: 49 tokens for 4x4-pixel patches beat 16 for
# 7x7 ones. A small convolutional stem embeds them better than ViT's linear patchify (it sees
# each patch's neighbourhood and gives the model some of a convolution's sense of locality),
# so that one attention block and 8 epochs reach what two blocks and 12 epochs did not.
# Light random shifts help too; weight averaging (the export's weights) stands in for
# dropout, which slowed the first epochs more than it helped at the end of a short run.
@dataclasses.dataclass
class Hyperparams:
    # The pixels each token stands for: patch_size x patch_size. 0: from the input
    # (`auto_patch_size`), about a 7x7 grid, on MNIST 49 patches of 4x4 pixels.
    patch_size: int = 0
    # Channels of the convolutional stem's hidden layers (`patch_embedding`); 0: ViT's linear
    # patchify instead.
    stem_filters: int = 32
    embed_dim: int = 64
    num_heads: int = 4
    layers: int = 1
    mlp_ratio: int = 2
    dropout: float = 0.0
    pooling: str = "mean"  # "mean" over patches, or "cls" for a class token
    augment: float = 0.05  # max random shift, as a fraction of the image size; 0 disables
    learning_rate: float = 2e-3
    ema_momentum: float = 0.99  # evaluate and export the average of the last ~100 steps' weights
    epochs: int = 8
    batch_size: int = 128


#: The patch grid `auto_patch_size` aims at when `patch_size` is 0.
AUTO_GRID = 7


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


def stem_strides(patch_size: int) -> list[int]:
    """The strides of the embedding's convolutions: one 2 per factor 2 of `patch_size`, then
    the odd remainder if it is not 1 (4 -> [2, 2], 8 -> [2, 2, 2], 7 -> [7], 12 -> [2, 2, 3])."""
    strides = []
    while patch_size % 2 == 0:
        strides.append(2)
        patch_size //= 2
    return strides + ([patch_size] if patch_size > 1 else [])


def patch_embedding(x, hp: Hyperparams):
    """Turn the image into a grid of `embed_dim` tokens, one per patch_size x patch_size patch.

    With `stem_filters` 0, ViT's linear patchify: one convolution whose kernel is its stride,
    cutting patches and projecting them in one step. Otherwise a convolutional stem (Xiao et
    al. 2021, "Early convolutions help transformers see better"): 3x3 convolutions of stride
    2, which overlap their neighbours, halve the image down to the same grid (`stem_strides`;
    an odd remainder, such as all of a patch size 7, is one convolution whose kernel is its
    stride). The last one projects to `embed_dim` without an activation, as the patchify
    does. The stem only embeds patches: the attention blocks still do all the mixing between
    them.
    """
    strides = stem_strides(hp.patch_size) if hp.stem_filters else [hp.patch_size]
    for i, stride in enumerate(strides):
        last = i == len(strides) - 1
        kernel = 3 if stride == 2 else stride
        name = "patchify" if last else f"stem{i}"
        # No normalization in the stem: each block's LayerNormalization follows it anyway.
        x = keras.layers.Conv2D(hp.embed_dim if last else hp.stem_filters, kernel, strides=stride, padding="same",
                                activation=None if last else "relu", name=name)(x)
    return x


def auto_patch_size(height: int, width: int, grid: int = AUTO_GRID) -> int:
    """The common divisor of height and width closest to min(height, width) / grid (the larger
    on a tie): with a 7x7 grid, 4 for 28x28 and 32x32, 8 for 64x64. ValueError when no
    divisor is within a factor 2 of it (e.g. 31x31): choose patch_size or an --image-size such as 32x32."""
    target = min(height, width) / grid
    divisors = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
    best = min(divisors, key=lambda p: (abs(p - target), -p))
    if not target / 2 <= best <= target * 2:
        raise ValueError(f"no patch size divides the image size {height}x{width} into about a "
                         f"{grid}x{grid} grid; set patch_size or choose an image size such as 32x32")
    return best


def build(input_shape, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    height, width, _ = input_shape
    if not hp.patch_size:
        hp = dataclasses.replace(hp, patch_size=auto_patch_size(height, width))
    if height % hp.patch_size or width % hp.patch_size:
        raise ValueError(f"patch_size {hp.patch_size} must divide the image size {height}x{width}.")
    if hp.embed_dim % hp.num_heads:
        raise ValueError(f"embed_dim {hp.embed_dim} must be a multiple of num_heads {hp.num_heads}.")
    if hp.pooling not in ("mean", "cls"):
        raise ValueError(f"Unknown pooling {hp.pooling!r}; use 'mean' or 'cls'.")
    images, x = image_inputs(input_shape)
    x = patch_embedding(x, hp)
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


def augmentation(hp: Hyperparams, seed: int) -> Augmentation:
    """Random shifts of up to `hp.augment` of the image size, in the input pipeline."""
    return shift_augmentation(hp.augment, seed)


def search_space(kt_hp: keras_tuner.HyperParameters, input_shape=(28, 28, 1)) -> Hyperparams:
    """Tunables for `tfpipeline.tuning`; each default is the dataclass default.

    Powers of two for embed_dim and num_heads keep every pair divisible. The patch sizes are
    those of a 7x7 (the default) and a 4x4 grid over the input (4 and 7 on 28x28), so each
    divides it. stem_filters 0 is ViT's linear patchify.
    """
    d = Hyperparams()
    height, width = input_shape[:2]
    try:
        patches = options(auto_patch_size(height, width), auto_patch_size(height, width, grid=4))
    except ValueError:  # no dividing patch size: the trials fail and say why
        patches = [d.patch_size]
    return Hyperparams(
        learning_rate=kt_hp.Float("learning_rate", 5e-4, 5e-3, sampling="log", default=d.learning_rate),
        patch_size=kt_hp.Choice("patch_size", patches, default=patches[0]),
        stem_filters=kt_hp.Choice("stem_filters", options(d.stem_filters, 0, 64), default=d.stem_filters),
        embed_dim=kt_hp.Choice("embed_dim", options(32, d.embed_dim, 128), default=d.embed_dim),
        num_heads=kt_hp.Choice("num_heads", options(2, d.num_heads, 8), default=d.num_heads),
        layers=kt_hp.Int("layers", 1, 4, default=d.layers),
        mlp_ratio=kt_hp.Choice("mlp_ratio", options(d.mlp_ratio, 2, 4), default=d.mlp_ratio),
        dropout=kt_hp.Float("dropout", 0.0, 0.3, step=0.1, default=d.dropout),
        augment=kt_hp.Choice("augment", options(d.augment, 0.0, 0.1), default=d.augment),
    )
