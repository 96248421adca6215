"""training.fit's weight averaging: what validation sees and what the run keeps are the average."""

from __future__ import annotations

import dataclasses

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
        self.steps.append([v.numpy() for v in self.model.trainable_weights])


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
    final = [v.numpy() for v in model.trainable_weights]
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


def test_warm_restart_schedule_settles_after_the_first_cycle_then_restarts():
    settings = training.TrainSettings(epochs=5, batch_size=32, learning_rate=0.01, steps_per_epoch=100,
                                      warmup_fraction=0.04, first_cycle_epochs=1)
    assert training.cycle_epochs(settings) == [1, 4]
    rate = training.learning_rate_schedule(settings)
    assert float(rate(0)) == pytest.approx(1e-4)  # warmup from a hundredth of the peak
    assert float(rate(20)) == pytest.approx(0.01)  # peak after 20 warmup steps
    assert float(rate(99)) < 1e-4  # the first cycle ends near zero: a settled model after epoch 1
    assert float(rate(100)) == pytest.approx(0.01)  # the restart
    assert float(rate(300)) == pytest.approx(0.005, rel=1e-3)  # halfway through the second cycle
    assert float(rate(499)) < 1e-5
    one_cycle = dataclasses.replace(settings, first_cycle_epochs=0)
    assert training.cycle_epochs(one_cycle) == [5]
    assert float(training.learning_rate_schedule(one_cycle)(100)) < 0.01  # no restart


def _tiny_model() -> keras.Model:
    inputs = keras.Input((1,))
    return keras.Model(inputs, keras.layers.Dense(1)(inputs))


def test_weight_average_warms_up_instead_of_keeping_the_first_steps():
    """Keras's average keeps m**t of the first step's weights; ours uses min(m, (1+t)/(10+t))."""
    settings = training.TrainSettings(epochs=1, batch_size=8, learning_rate=0.1, steps_per_epoch=5000,
                                      warmup_fraction=0.0, ema_momentum=0.99)
    model = training.compile_model(_tiny_model(), settings)  # builds the optimizer for its variables
    optimizer, (weight, bias) = model.optimizer, model.trainable_variables
    weight.assign(np.zeros((1, 1), "float32"))
    average, expected = optimizer._model_variables_moving_average[0], 0.0
    for t in range(40):  # the gradient -1 moves the weight by the same step each time
        optimizer.apply_gradients([(tf.constant([[-1.0]]), weight), (tf.constant([-1.0]), bias)])
        momentum = 0.0 if t == 0 else min(0.99, (1 + t) / (10 + t))
        expected = momentum * expected + (1 - momentum) * float(weight.numpy()[0, 0])
    assert float(average.numpy()[0, 0]) == pytest.approx(expected, rel=1e-4)
    # Keras's own rule would still hold 0.99**39 = 68% of the first step's weight.
    assert float(average.numpy()[0, 0]) > 0.7 * float(weight.numpy()[0, 0])


def test_label_smoothing_is_keras_categorical_smoothing_on_integer_labels():
    from tfpipeline.training import losses

    logits = tf.constant(np.random.default_rng(0).normal(size=(6, 4)).astype("float32"))
    labels = tf.constant([0, 3, 1, 2, 2, 0])
    ours = losses.for_training(0.1)(labels, logits)
    keras_smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
        tf.one_hot(labels, 4), logits)
    assert float(ours) == pytest.approx(float(keras_smoothed), rel=1e-6)
    # Smoothing penalizes overconfidence: confident right answers cost more than without it.
    confident = 10.0 * tf.one_hot(labels, 4)
    assert float(losses.for_training(0.1)(labels, confident)) > 10 * float(losses.for_training(0.0)(labels, confident))
    restored = keras.losses.deserialize(keras.losses.serialize(losses.for_training(0.2)))
    assert restored.label_smoothing == 0.2


def test_augmentation_starts_at_its_epoch_and_leaves_earlier_batches_alone():
    """The shifts run inside the input pipeline from `start_epoch` on, decided by each batch's
    epoch; a batch's shifts depend on (seed, epoch, step) alone, so a resumed run repeats them."""
    from tfpipeline.data.augmentation import Augmentation

    images = np.zeros((4, 12, 12, 1), "uint8")
    images[:, 4:8, 4:8] = 255
    images, labels = tf.constant(images), tf.range(4)
    layer = keras.layers.RandomTranslation(0.3, 0.3, fill_mode="constant", interpolation="nearest", seed=1)
    augment = Augmentation(layer, start_epoch=1).per_batch(seed=7)

    def batch(epoch, step):
        return augment(images, labels, tf.constant(epoch, tf.int64), tf.constant(step, tf.int64))[0].numpy()

    first = batch(0, 0)
    assert first.dtype == np.uint8 and np.array_equal(first, images)
    later = batch(1, 0)
    assert not np.array_equal(later, images)
    assert sorted(np.unique(later)) == [0, 255]  # whole-pixel shifts: values stay the image's
    assert not np.array_equal(batch(1, 1), later)  # each step its own shifts...
    assert np.array_equal(batch(1, 0), later)  # ...and the same ones when that step comes again
    unchanged, same_labels = Augmentation().per_batch(7)(images, labels, 3, 0)
    assert unchanged is images and same_labels is labels
