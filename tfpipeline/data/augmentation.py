"""Training augmentation as a stage of the input pipeline, switched on from a given epoch.

A family's augmentation is a Keras preprocessing layer (`models.augmentation`). Keras's advice
for preprocessing layers on a CPU is to run them in the `tf.data` pipeline: there the random
shifts of the next batches are computed while the model trains on this one, instead of being
a serial part of every training step, and the exported model never contains them.

`start_epoch` lets the first epochs train on the images as they are: the CNN's first
learning-rate cycle is one epoch, meant to give a settled model at once, and shifted digits
are harder to learn from than the centred test digits (docs/benchmarks.md measures both).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass
class Augmentation:
    """A preprocessing layer for training batches, active from epoch `start_epoch` (0-based).

    Args:
        layer: the Keras preprocessing layer, or None for no augmentation.
        start_epoch: the first epoch whose batches it transforms.
    """

    layer: keras.layers.Layer | None = None
    start_epoch: int = 0

    def __post_init__(self):
        # Read by the pipeline's map, set by `callbacks()` at each epoch's start: the
        # pipeline itself does not know which epoch the model is in.
        self._active = tf.Variable(self.start_epoch == 0, trainable=False, name="augmentation_active")

    def apply(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """The batched training `dataset` with the augmentation in its own stage (unchanged
        without a layer). One call at a time keeps the seeded random stream in a fixed order."""
        if self.layer is None:
            return dataset
        layer, active = self.layer, self._active

        def augment(images, labels):
            shifted = tf.cond(active, lambda: tf.cast(layer(images, training=True), images.dtype), lambda: images)
            return shifted, labels

        return dataset.map(augment, num_parallel_calls=1, deterministic=True).prefetch(tf.data.AUTOTUNE)

    def per_batch(self, seed: int):
        """For `make_pipeline(..., per_batch=...)`: the augmentation of one batch, decided from
        its epoch inside the pipeline (no variable set from outside, which a prefetching
        pipeline reads ahead of the model), with the layer's random stream set from (seed,
        epoch, step) first, so each batch's shifts are fixed by where it is in the run. A
        resumed run shifts the batches of its remaining epochs as an uninterrupted one does."""
        layer, start = self.layer, self.start_epoch
        if layer is None:
            return lambda images, labels, epoch, step: (images, labels)
        generator = layer.generator

        def augment(images, labels, epoch, step):
            position = (tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)) * 1_000_003 + step
            generator.state.assign(tf.cast(tf.stack([position % 2**31, 0]), generator.state.dtype))
            shifted = tf.cond(epoch >= start, lambda: tf.cast(layer(images, training=True), images.dtype),
                              lambda: images)
            return shifted, labels

        return augment

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """For the training loop: switches the augmentation on at `start_epoch`."""
        if self.layer is None or self.start_epoch == 0:
            return []
        return [_Switch(self._active, self.start_epoch)]


class _Switch(keras.callbacks.Callback):
    def __init__(self, active: tf.Variable, start_epoch: int):
        super().__init__()
        self.active, self.start_epoch = active, start_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.active.assign(epoch >= self.start_epoch)  # epochs count from 0, resumed runs too
