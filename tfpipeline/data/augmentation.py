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

    def per_batch(self, seed: int):
        """For `make_pipeline(..., per_batch=...)`: the augmentation of one batch, decided from
        its epoch inside the pipeline (not from a variable the training loop sets at each
        epoch's start: a prefetching pipeline reads batches ahead of the model), with the
        layer's random stream set from (seed, epoch, step) first, so each batch's shifts are
        fixed by where it is in the run. A resumed run shifts the batches of its remaining
        epochs as an uninterrupted one does.

        Args:
            seed: the run's (or ensemble member's) seed.

        Returns:
            `augment(images, labels, epoch, step) -> (images, labels)`, for `tf.data`'s map.
        """
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
