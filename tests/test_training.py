"""training.fit's weight averaging: what validation sees and what the run keeps are the average."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipeline import models, training

MOMENTUM = 0.8


class _RawWeights(keras.callbacks.Callback):
    """Records the weights training produced after every step (the model holds them mid-epoch)."""

    def __init__(self):
        super().__init__()
        self.steps: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_weights])


@pytest.fixture
def averaged_run(tiny_images):
    images, labels = tiny_images
    keras.utils.set_random_seed(0)
    hp = models.hyperparams("cnn", {"filters": [8, 16], "dense_units": 16, "augment": 0.0, "dropout": 0.0})
    model = models.build("cnn", (28, 28, 1), 4, hp)
    settings = training.TrainSettings(
        epochs=4, batch_size=16, learning_rate=3e-3, steps_per_epoch=16, ema_momentum=MOMENTUM,
        early_stopping_patience=0, verbose=0,
    )
    train = tf.data.Dataset.from_tensor_slices((images[:256], labels[:256])).batch(16)
    validation = tf.data.Dataset.from_tensor_slices((images[256:], labels[256:])).batch(64)
    raw = _RawWeights()
    history = training.fit(model, train, validation, settings, extra_callbacks=[raw])
    return model, history, raw, validation, settings


def test_the_trained_model_holds_the_moving_average_of_the_weights(averaged_run):
    model, _, raw, _, settings = averaged_run
    assert training.averaging_momentum(settings) == MOMENTUM  # 64 steps: not capped
    assert len(raw.steps) == 64
    # Keras's EMA: the first step copies the weights, each later one moves 1-m towards them.
    expected = [w.astype(np.float64) for w in raw.steps[0]]
    for step in raw.steps[1:]:
        expected = [MOMENTUM * e + (1 - MOMENTUM) * w for e, w in zip(expected, step)]
    final = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
    for got, want, last in zip(final, expected, raw.steps[-1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert any(not np.allclose(got, last) for got, last in zip(final, raw.steps[-1])), (
        "the kept weights are the last step's, not their average"
    )


def test_validation_scores_the_averaged_weights(averaged_run):
    model, history, _, validation, _ = averaged_run
    # The last epoch's validation ran with the weights the run keeps: evaluating the final
    # model again gives the same loss (with the raw weights it would differ).
    again = model.evaluate(validation, verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(again["loss"], rel=1e-5)


def _averaging_used(settings: training.TrainSettings) -> tuple[bool, bool]:
    """(the optimizer keeps an average, the callbacks swap it in) for these settings."""
    model = training.compile_model(models.build("mlp", (28, 28, 1), 4), settings)
    swaps = any(isinstance(c, keras.callbacks.SwapEMAWeights) for c in training.make_callbacks(None, None, settings))
    return model.optimizer.use_ema, swaps


def test_averaging_is_off_unless_asked():
    settings = training.TrainSettings(epochs=1, batch_size=8, learning_rate=1e-3, steps_per_epoch=1)
    assert _averaging_used(settings) == (False, False)


def test_short_runs_average_over_at_most_a_tenth_of_their_steps():
    def momentum(epochs, steps):
        return training.averaging_momentum(training.TrainSettings(
            epochs=epochs, batch_size=64, learning_rate=1e-3, steps_per_epoch=steps, ema_momentum=0.99))

    assert momentum(12, 844) == 0.99  # a full MNIST run keeps the family's momentum
    assert momentum(1, 47) == pytest.approx(1 - 10 / 47)  # a smoke test: ~5 steps' horizon
    assert momentum(1, 8) == 0.0  # too short to average at all
    settings = training.TrainSettings(epochs=1, batch_size=8, learning_rate=1e-3, steps_per_epoch=8, ema_momentum=0.99)
    assert _averaging_used(settings) == (False, False)


def test_a_dataset_that_disagrees_with_the_steps_per_epoch_is_refused():
    # Both training loops (training.fit and multiworker.fit) repeat the dataset and count
    # `steps_per_epoch` batches per epoch: a mismatch would make epochs straddle the data.
    train = tf.data.Dataset.range(100).batch(10)  # 10 batches
    settings = training.TrainSettings(epochs=1, batch_size=10, learning_rate=1e-3, steps_per_epoch=10)
    assert list(training.endless(train, settings).take(11).as_numpy_iterator())[10].tolist() == list(range(10))
    with pytest.raises(ValueError, match="has 10 batches but the settings say 12 steps per epoch"):
        training.endless(train, training.TrainSettings(epochs=1, batch_size=8, learning_rate=1e-3, steps_per_epoch=12))
