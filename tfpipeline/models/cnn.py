"""CNN: conv blocks (conv, pooling, batch norm, activation), dropout and a dense head."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras

from tfpipeline.data.augmentation import Augmentation
from tfpipeline.models.layers import CosineFilters, FusedBatchNorm, image_inputs, shift_augmentation
from tfpipeline.models.space import ints, joined, options

if TYPE_CHECKING:  # only for the annotation: importing KerasTuner is slow
    import keras_tuner


# Defaults chosen on MNIST on a 2-core CPU (docs/benchmarks.md, "What we tried"). The aim
# is a good model after one epoch and a better one at the end, at the least compute per
# image. The recipe follows tuomaso/train_mnist_fast: narrow 5x5 convs, pooling before
# batch norm and ReLU, no dropout, Adam with short memories (betas 0.7, 0.9). Its batch of
# 256 at 0.01 becomes 512 at 0.015: on this CPU the larger batch trains more images per
# second, for the same final accuracy. On top: a first learning-rate cycle of one epoch
# that decays to zero, so the model is settled after epoch 1, then a warm restart and one
# long cycle; an average of the recent weights, which is what is evaluated and exported;
# label smoothing; random shifts of up to 10%, computed in the input pipeline, from the
# second cycle on; a first conv of fixed cosine patterns that trains only from the second
# cycle on.
@dataclasses.dataclass
class Hyperparams:
    # One conv block per entry, each halving the resolution. Multiples of 16: oneDNN's fast
    # convolutions on this AVX-512 CPU work on blocks of 16 channels, so 16 first filters train
    # much faster per image than tuomaso's 24, for the same accuracy (docs/benchmarks.md).
    filters: tuple[int, ...] = (16, 32)
    convs_per_block: int = 1
    kernel_size: int = 5
    padding: str = "valid"  # "valid" shrinks each map by kernel_size-1: less compute than "same"
    batch_norm: bool = True
    # Keras's default (0.99) averages the batch statistics over ~100 steps: the moving
    # statistics then lag weights that are still changing fast, and a model evaluated after
    # a short run (a search trial, the first epochs) scores far below its training accuracy
    # (docs/benchmarks.md). 0.9 tracks them within about ten steps.
    batch_norm_momentum: float = 0.9
    dropout: float = 0.0  # the weight average and the shifts regularize instead
    dense_units: int = 256  # 0: straight from the last block to the logits
    augment: float = 0.1  # max random shift, as a fraction of the image size; 0 disables
    augment_from_epoch: int = 1  # 0-based: the one-epoch first cycle sees the digits as they are
    # The first conv starts as fixed cosine patterns at every orientation (`CosineFilters`)
    # and, with its batch norm, does not train for this many epochs (the first learning-rate
    # cycle): the backward pass then stops at the second conv, whose input gradient is the
    # step's most expensive op, and that cycle trains much faster per image, as accurately
    # (docs/benchmarks.md); then the whole network trains. 0: the first conv trains from the
    # start, from Keras's default initialization.
    frozen_stem_epochs: int = 1
    learning_rate: float = 1.5e-2
    beta_1: float = 0.7
    beta_2: float = 0.9
    warmup_fraction: float = 0.015  # of the run: an eighth of the first epoch (a fifth in a tuned run's 15)
    first_cycle_epochs: int = 1  # learning-rate cycles of 1 and 7 epochs (1 and 14 in a tuned run)
    label_smoothing: float = 0.1
    ema_momentum: float = 0.99  # evaluate and export the average of the recent weights
    # 8 fits `--no-tune` in about a minute on a 6,000 images/s day, and scored on validation
    # as 10 and 15 did (docs/benchmarks.md); a tuned run's final model trains the 15 epochs its
    # search's schedule spans.
    epochs: int = 8
    batch_size: int = 512


    @property
    def frozen_layers(self) -> tuple[str, ...]:
        """The layers `frozen_stem_epochs` keeps from training: the first conv, its batch norm."""
        if not self.frozen_stem_epochs:
            return ()
        return ("conv0_0", "bn0_0") if self.batch_norm else ("conv0_0",)


#: Blocks are added (each with twice the last block's filters) until the map is this small.
MAX_HEAD_SIDE = 8


def block_filters(input_shape, hp: Hyperparams) -> tuple[int, ...]:
    """The filters of each conv block: `hp.filters`, then more blocks until the last map's
    longer side is at most MAX_HEAD_SIDE. 28x28 (MNIST) keeps its two blocks; 64x64 gets a
    third, so the dense head sees 6x6 maps, not 14x14."""
    side = max(input_shape[:2])
    filters = list(hp.filters)

    def after(side: int) -> int:
        if hp.padding == "valid":
            side -= (hp.kernel_size - 1) * hp.convs_per_block
        return side // 2

    for _ in filters:
        side = after(side)
    while side > MAX_HEAD_SIDE and after(side) >= 2:
        filters.append(min(2 * filters[-1], 256))
        side = after(side)
    return tuple(filters)


def build(input_shape, num_classes: int, hp: Hyperparams | None = None) -> keras.Model:
    hp = hp or Hyperparams()
    images, x = image_inputs(input_shape)
    for b, filters in enumerate(block_filters(input_shape, hp)):
        for c in range(hp.convs_per_block):
            # No bias before batch norm: its shift makes the bias redundant.
            stem = b == 0 and c == 0 and hp.frozen_stem_epochs > 0
            x = keras.layers.Conv2D(
                filters, hp.kernel_size, padding=hp.padding, use_bias=not hp.batch_norm, name=f"conv{b}_{c}",
                kernel_initializer=CosineFilters() if stem else "glorot_uniform",
            )(x)
            if c == hp.convs_per_block - 1:
                # The block's last conv is pooled *before* batch norm and ReLU: both act per
                # value, so they then touch a quarter of the values. On CPU these unfused
                # elementwise ops, not the small convolutions, are most of the cost.
                x = keras.layers.MaxPooling2D(name=f"pool{b}")(x)
            if hp.batch_norm:
                x = FusedBatchNorm(momentum=hp.batch_norm_momentum, name=f"bn{b}_{c}")(x)
            x = keras.layers.Activation("relu", name=f"relu{b}_{c}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if hp.dropout:
        x = keras.layers.Dropout(hp.dropout, name="dropout")(x)
    if hp.dense_units:
        x = keras.layers.Dense(hp.dense_units, use_bias=not hp.batch_norm, name="dense")(x)
        if hp.batch_norm:
            x = FusedBatchNorm(momentum=hp.batch_norm_momentum, name="dense_bn")(x)
        x = keras.layers.Activation("relu", name="dense_relu")(x)
        if hp.dropout:
            x = keras.layers.Dropout(hp.dropout, name="dense_dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(images, logits, name="cnn")


def augmentation(hp: Hyperparams, seed: int) -> Augmentation:
    """Random shifts of up to `hp.augment` of the image size (whole pixels, zeros shifted in)
    from epoch `hp.augment_from_epoch` on, in the input pipeline, not the model."""
    return shift_augmentation(hp.augment, seed, start_epoch=hp.augment_from_epoch, interpolation="nearest")


def search_space(kt_hp: keras_tuner.HyperParameters, input_shape=(28, 28, 1)) -> Hyperparams:
    """Tunables for `tfpipeline.tuning`; each default is the dataclass default.

    Widths are multiples of 16 (see `Hyperparams.filters`) and stop at 32,64: wider blocks
    cost ~2x per epoch for no gain on 28x28 digits. Larger or colour inputs also try three
    blocks from the start (`block_filters` adds blocks anyway until the maps are small).
    """
    d = Hyperparams()
    larger = max(input_shape[:2]) > 32 or input_shape[2] > 1
    return Hyperparams(
        learning_rate=kt_hp.Float("learning_rate", 2e-3, 2e-2, sampling="log", default=d.learning_rate),
        filters=ints(kt_hp.Choice("filters", options(joined(d.filters), "16,16", "16,48", "32,64",
                                                  *(["16,32,64", "32,64,128"] if larger else [])),
                               default=joined(d.filters))),
        dense_units=kt_hp.Choice("dense_units", options(0, 64, 128, d.dense_units), default=d.dense_units),
        kernel_size=kt_hp.Choice("kernel_size", options(d.kernel_size, 3), default=d.kernel_size),
        dropout=kt_hp.Float("dropout", 0.0, 0.4, step=0.1, default=d.dropout),
        batch_norm=kt_hp.Boolean("batch_norm", default=d.batch_norm),
        # Light random shifts: the regularizer that pays off most on digits.
        augment=kt_hp.Choice("augment", options(d.augment, 0.05, 0.15), default=d.augment),
    )
