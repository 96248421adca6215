"""The training loss: cross-entropy of logits against integer labels, optionally smoothed."""

from __future__ import annotations

import keras


def for_training(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Keras's sparse cross-entropy on logits; with `label_smoothing`, the smoothed one."""
    if label_smoothing:
        return SparseSmoothedCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@keras.saving.register_keras_serializable(package="tfpipeline")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of logits against integer labels, with label smoothing.

    Keras's `SparseCategoricalCrossentropy` takes no `label_smoothing`; its categorical twin
    does, on one-hot labels. Our pipelines yield integer labels (as TFDS does, and as the
    accuracy metric and the export expect), so this one-hot encodes them inside the loss.

    Args:
        label_smoothing: The share of each target spread evenly over all classes: the target
            is 1 - s + s/k for the true class and s/k for the others (k classes).
    """

    def __init__(self, label_smoothing: float = 0.1, name: str = "sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, from_logits=True,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
