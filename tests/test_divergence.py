"""Divergence: a far too high learning rate is caught, rolled back once with a halved rate and
gradient clipping, and either recovers or gives up naming what it tried. Optimizer options
(--clipnorm, --clipvalue, --weight-decay) reach the Keras optimizer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipeline import errors, models, training
from tfpipeline.distribute import multiworker
from tfpipeline.errors import UserError

# On the tiny quadrant data with the MLP (seed 0, no warmup): 0.02 explodes within the first
# three batches (running loss ~30, limit 10 x ln 4 = 13.9) and its half, 0.01, trains to 100%;
# 1.0 explodes at once and so does its half.
RECOVERABLE_RATE = 0.02
HOPELESS_RATE = 1.0


def _run(tiny_images, learning_rate, fit=training.fit, **options):
    images, labels = tiny_images
    keras.utils.set_random_seed(0)
    model = models.build("mlp", (28, 28, 1), 4)
    settings = training.TrainSettings(
        epochs=3, batch_size=32, learning_rate=learning_rate, steps_per_epoch=8, warmup_fraction=0.0,
        early_stopping_patience=0, verbose=0, **options,
    )
    train = tf.data.Dataset.from_tensor_slices((images[:256], labels[:256])).batch(32)
    validation = tf.data.Dataset.from_tensor_slices((images[256:], labels[256:])).batch(256)
    return model, fit(model, train, validation, settings), validation


def test_a_diverging_run_rolls_back_once_and_recovers(tiny_images, capsys):
    model, history, validation = _run(tiny_images, RECOVERABLE_RATE)
    out = capsys.readouterr().out
    assert "Training diverged: the training loss reached" in out and "Recovering: rolled back" in out
    assert "halved (0.02 -> 0.01)" in out and "clipped to 1 (clipnorm)" in out
    recovery = training.recovery_of(history)
    assert recovery is not None and "epoch 1" in recovery["diverged"]
    assert recovery["rolled_back_to_epoch"] == 0 and recovery["retry_epochs"] == 3
    assert recovery["retry"]["peak_learning_rate"] == pytest.approx(RECOVERABLE_RATE / 2)
    assert recovery["retry"]["clipnorm"] == training.RETRY_CLIPNORM
    # The model that remains is the retry's, trained and finite: the clipping optimizer, all
    # epochs run, a good score (the diverged attempt sat far above chance loss).
    assert model.optimizer.clipnorm == training.RETRY_CLIPNORM
    assert training.epochs_completed(history) == 3
    assert all(np.isfinite(history.history["loss"]))
    assert model.evaluate(validation, verbose=0, return_dict=True)["accuracy"] > 0.9


def test_a_run_that_diverges_again_gives_up_naming_what_it_tried(tiny_images, capsys):
    with pytest.raises(errors.TrainingDiverged) as info:
        _run(tiny_images, HOPELESS_RATE)
    message = str(info.value)
    assert message.count("the training loss reached") == 2  # both attempts
    assert "rolled back to the weights of the start" in message
    assert "halved (1 -> 0.5)" in message and "clipnorm" in message and "diverged again" in message
    assert "Recovering" in capsys.readouterr().out


class Poison(keras.layers.Layer):
    """Passes logits through (switch 0), makes them NaN (1) or zero (2: a dead model, whose
    loss is exactly that of guessing)."""

    def build(self, input_shape):
        self.on = self.add_weight(name="on", shape=(), initializer="zeros", trainable=False)

    def call(self, logits):
        nan = keras.ops.where(self.on == 1, keras.ops.full_like(logits, float("nan")), logits)
        return keras.ops.where(self.on == 2, keras.ops.zeros_like(logits), nan)


class PoisonEpoch(keras.callbacks.Callback):
    """Turns the poison on at the start of one epoch, once; records what the retry starts from."""

    def __init__(self, layer: Poison, epoch: int, dead_retry: bool = False):
        super().__init__()
        self.layer, self.epoch, self.dead_retry = layer, epoch, dead_retry
        self.good_weights = self.retry_start = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.good_weights is None and epoch == self.epoch:
            self.good_weights = self.model.get_weights()  # the end of the previous epoch
            self.layer.on.assign(1.0)
        elif self.good_weights is not None and self.retry_start is None:
            self.retry_start = (epoch, self.model.get_weights())
            if self.dead_retry:
                self.layer.on.assign(2.0)


def _poisoned_mlp(tiny_images, epochs: int):
    """An MLP whose output passes through `Poison`, its settings and 8 batches of tiny data."""
    images, labels = tiny_images
    keras.utils.set_random_seed(0)
    mlp = models.build("mlp", (28, 28, 1), 4)
    poison = Poison(name="poison")
    model = keras.Model(mlp.inputs, poison(mlp.outputs[0]))
    settings = training.TrainSettings(epochs=epochs, batch_size=32, learning_rate=1e-3, steps_per_epoch=8,
                                      early_stopping_patience=0, verbose=0)
    train = tf.data.Dataset.from_tensor_slices((images[:256], labels[:256])).batch(32)
    return model, poison, settings, train


def test_the_rollback_goes_to_the_last_good_epoch(tiny_images):
    """Finished epochs are kept: a NaN in epoch 3 retrains only epoch 3, from the weights
    epoch 2 ended with (the poison switch among them, off)."""
    model, poison, settings, train = _poisoned_mlp(tiny_images, epochs=3)
    watch = PoisonEpoch(poison, epoch=2)
    history = training.fit(model, train, None, settings, extra_callbacks=[watch])
    recovery = training.recovery_of(history)
    assert "nan at batch 1 of epoch 3" in recovery["diverged"]
    assert recovery["rolled_back_to_epoch"] == 2 and recovery["retry_epochs"] == 1
    epoch, weights = watch.retry_start
    assert epoch == 2
    for got, want in zip(weights, watch.good_weights):
        np.testing.assert_array_equal(got, want)
    assert training.epochs_completed(history) == 3 and np.isfinite(history.history["loss"]).all()


def test_a_retry_that_learns_nothing_is_no_recovery(tiny_images):
    """Finite but dead (constant logits: the loss of guessing): given up, not published."""
    model, poison, settings, train = _poisoned_mlp(tiny_images, epochs=2)
    with pytest.raises(errors.TrainingDiverged, match=r"the retry learned nothing: its training loss ended at 1.386"):
        training.fit(model, train, None, settings, extra_callbacks=[PoisonEpoch(poison, epoch=1, dead_retry=True)])


def test_optimizer_options_reach_keras():
    def optimizer(**options):
        settings = training.TrainSettings(epochs=1, batch_size=8, learning_rate=1e-3, steps_per_epoch=4, **options)
        return training.compile_model(models.build("mlp", (28, 28, 1), 4), settings).optimizer

    assert isinstance(optimizer(), keras.optimizers.Adam) and optimizer().clipnorm is None
    assert optimizer(clipnorm=0.5).clipnorm == 0.5
    assert optimizer(clipvalue=2.0).clipvalue == 2.0
    decayed = optimizer(weight_decay=1e-4)
    assert isinstance(decayed, keras.optimizers.AdamW) and decayed.weight_decay == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "options, phrase",
    [
        ((1.0, 1.0, None), "both given"),
        ((-1.0, None, None), "--clipnorm must be a positive"),
        ((None, float("inf"), None), "--clipvalue must be a positive"),
        ((None, None, -0.1), "--weight-decay must be 0"),
    ],
)
def test_bad_optimizer_options_are_user_errors(options, phrase):
    with pytest.raises(UserError, match=phrase):
        training.check_optimizer_options(*options)


def test_multi_worker_loop_refuses_to_retry_and_says_what_to_run(tiny_images):
    """The multi-worker loop (run here under the default strategy, as one worker) detects the
    same divergence but does not roll back: its message gives the retry to run by hand."""
    with pytest.raises(errors.TrainingDiverged) as info:
        _run(tiny_images, HOPELESS_RATE, fit=lambda m, t, v, s: multiworker.fit(m, t, v, s))
    message = str(info.value)
    assert "does not roll back and retry" in message
    assert "half the --learning-rate and --clipnorm 1" in message
