"""Layers that do not train for the first epochs of a run, then do.

The CNN's first conv starts as fixed filters and trains only from its second learning-rate
cycle on (`cnn.Hyperparams.frozen_stem_epochs`). While nothing below the second conv trains,
TensorFlow computes no gradient below it, so those epochs cost less per image. Keras traces
`trainable_variables` into its train function, so the switch needs a new train function; this
module makes it and keeps the two, so a run traces each state once.

The layers are trainable again at the end of every epoch, frozen or not: then whatever looks
at the model between epochs (checkpoints, the weight average's swap, `fit`'s final copy of the
averaged weights, which pairs them with `trainable_weights`) sees all of its weights, and the
optimizer, built before training with every weight, updates whichever the step trains.
"""

from __future__ import annotations

import contextlib

import keras


@contextlib.contextmanager
def frozen(model: keras.Model, names: tuple[str, ...]):
    """`model` with the layers `names` not trainable inside the block (e.g. to count the
    FLOPs of a frozen step); as they were afterwards."""
    layers = [model.get_layer(name) for name in names]
    before = [layer.trainable for layer in layers]
    for layer in layers:
        layer.trainable = False
    try:
        yield model
    finally:
        for layer, trainable in zip(layers, before):
            layer.trainable = trainable


def callbacks(names: tuple[str, ...], epochs: int) -> list[keras.callbacks.Callback]:
    """`[FrozenStart(names, epochs)]`, or none when there is nothing to freeze."""
    return [FrozenStart(names, epochs)] if names and epochs else []


class FrozenStart(keras.callbacks.Callback):
    """Keeps the layers `names` from training in epochs 0..`epochs`-1 of `model.fit`.

    Also works with `tfpipeline.multiworker.fit`, which rebuilds its step functions when the
    number of trainable variables changes. A resumed run freezes by the epoch it resumes at.

    Args:
        names: Names of the model's layers to freeze.
        epochs: How many epochs, from the first, they stay frozen.
    """

    def __init__(self, names: tuple[str, ...], epochs: int):
        super().__init__()
        self.names, self.epochs = tuple(names), epochs
        self._functions: dict[bool, object] = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._set_trainable(epoch >= self.epochs)

    def on_epoch_end(self, epoch, logs=None):
        self._set_trainable(True)

    def _set_trainable(self, trainable: bool) -> None:
        layers = [self.model.get_layer(name) for name in self.names]
        if all(layer.trainable == trainable for layer in layers):
            return
        self._functions[not trainable] = self.model.train_function
        for layer in layers:
            layer.trainable = trainable
        if self._functions.get(trainable) is not None:
            self.model.train_function = self._functions[trainable]
        else:
            self.model.make_train_function(force=True)
