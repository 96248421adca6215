"""The CNN's frozen start: a first conv of fixed cosine filters that trains only later."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tfpipeline import models, training
from tfpipeline.models.layers import CosineFilters
from tfpipeline.training import freezing


def test_cosine_filters_are_orthonormal_patterns_in_both_signs():
    kernel = keras.ops.convert_to_numpy(CosineFilters()((5, 5, 1, 16)))
    patterns = kernel.reshape(25, 16)
    np.testing.assert_allclose(patterns[:, :8].T @ patterns[:, :8], np.eye(8), atol=1e-6)
    np.testing.assert_array_equal(patterns[:, 8:], -patterns[:, :8])
    np.testing.assert_allclose(patterns[:, 0], 1 / 5)  # the lowest frequency: the window's mean


def test_cosine_filters_fill_what_the_window_cannot_hold_with_glorot():
    # A 3x3 window of 3 channels has 27 patterns: 54 filters, then 10 random ones.
    kernel = keras.ops.convert_to_numpy(CosineFilters(seed=1)((3, 3, 3, 64))).reshape(27, 64)
    np.testing.assert_allclose(kernel[:, :27].T @ kernel[:, :27], np.eye(27), atol=1e-5)
    np.testing.assert_array_equal(kernel[:, 27:54], -kernel[:, :27])
    rest = kernel[:, 54:]
    assert rest.std() > 0 and np.abs(rest).max() <= np.sqrt(6 / (9 * 3 + 9 * 10)) + 1e-6  # glorot_uniform's limit


def test_the_default_cnn_freezes_its_first_conv_for_the_first_cycle():
    hp = models.hyperparams("cnn")
    settings = training.settings_for(hp, 1000)
    assert settings.frozen_layers == ("conv0_0", "bn0_0") and settings.frozen_epochs == hp.first_cycle_epochs == 1
    unfrozen = training.settings_for(models.hyperparams("cnn", {"frozen_stem_epochs": 0}), 1000)
    assert unfrozen.frozen_layers == () and unfrozen.frozen_epochs == 0


class _Weights(keras.callbacks.Callback):
    """Each epoch end's weights by layer, and which layers the model trained in the epoch."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict[str, list[np.ndarray]]] = []
        self.trained: list[set[str]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.trained.append({layer.name for layer in self.model.layers if layer.trainable and layer.weights})

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({layer.name: [w.numpy() for w in layer.weights]
                            for layer in self.model.layers if layer.weights})


def _fit(tiny_images, epochs: int, frozen_epochs: int):
    images, labels = tiny_images
    keras.utils.set_random_seed(0)
    hp = models.hyperparams("cnn", {"filters": [16, 16], "dense_units": 16, "augment": 0.0,
                                    "frozen_stem_epochs": frozen_epochs, "epochs": epochs, "batch_size": 32})
    model = models.build("cnn", (28, 28, 1), 4, hp)
    start = {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers}
    settings = dataclasses.replace(training.settings_for(hp, 256, verbose=0), early_stopping_patience=0)
    train = tf.data.Dataset.from_tensor_slices((images[:256], labels[:256])).batch(32)
    weights = _Weights()
    history = training.fit(model, train, None, settings, extra_callbacks=[weights])
    return model, start, weights, history


def test_frozen_layers_keep_their_weights_then_train(tiny_images):
    model, start, weights, history = _fit(tiny_images, epochs=3, frozen_epochs=1)
    frozen = ("conv0_0", "bn0_0")
    # Epoch 1: the first conv keeps its cosine filters and its batch norm its scale and shift
    # (the moving statistics still follow the batches, as in any training step); the rest trains.
    assert not weights.trained[0] & set(frozen) and {"conv1_0", "dense", "logits"} <= weights.trained[0]
    np.testing.assert_allclose(weights.epochs[0]["conv0_0"][0], start["conv0_0"][0], atol=1e-6)
    for got, want in zip(weights.epochs[0]["bn0_0"][:2], start["bn0_0"][:2]):  # gamma, beta
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(weights.epochs[0]["conv1_0"][0], start["conv1_0"][0])
    # Epochs 2 and 3: every layer trains, and the model ends as a normal, fully trainable one.
    assert set(frozen) <= weights.trained[1]
    assert not np.allclose(weights.epochs[2]["conv0_0"][0], start["conv0_0"][0], atol=1e-4)
    assert all(layer.trainable for layer in model.layers)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_a_run_that_ends_frozen_still_ends_with_every_layer_trainable(tiny_images):
    # Keras copies the weight average into the model at the end of `fit`, pairing it with
    # `trainable_weights`: a model still frozen then would pair the wrong weights.
    model, start, weights, _ = _fit(tiny_images, epochs=1, frozen_epochs=1)
    assert all(layer.trainable for layer in model.layers)
    np.testing.assert_allclose(model.get_layer("conv0_0").kernel.numpy(),
                               start["conv0_0"][0], atol=1e-6)


def test_frozen_is_undone_after_the_block(tiny_images):
    model = models.build("cnn", (28, 28, 1), 4, models.hyperparams("cnn", {"filters": [16, 16]}))
    before = len(model.trainable_variables)
    with freezing.frozen(model, ("conv0_0", "bn0_0")):
        assert len(model.trainable_variables) == before - 3  # the kernel, gamma and beta
    assert len(model.trainable_variables) == before
