"""Each model family: builds from the registry, takes raw uint8 images, learns on tiny data."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipeline import models, training
from tfpipeline.errors import UserError

# Small versions of each family so a few training steps take a second or two.
TINY = {
    "mlp": {"units": 32, "layers": 2, "normalization": "batch"},
    "cnn": {"filters": [8, 16], "batch_norm": True, "dense_units": 16, "augment": 0.05},
    "rnn": {"units": 16, "layers": 2, "bidirectional": True, "cell": "gru"},
    "transformer": {"embed_dim": 16, "num_heads": 2, "layers": 1, "stem_filters": 8, "pooling": "cls"},
}


@pytest.mark.parametrize("family", sorted(models.FAMILIES))
def test_default_model_builds_with_uint8_input_and_logits(family):
    model = models.build(family, (28, 28, 1), 10)
    assert isinstance(model, keras.Model)
    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape) == (None, 28, 28, 1)
    out = model(np.zeros((3, 28, 28, 1), np.uint8), training=False)
    assert tuple(out.shape) == (3, 10)


@pytest.mark.parametrize("family", sorted(models.FAMILIES))
def test_family_learns_on_tiny_data(family, tiny_images):
    images, labels = tiny_images
    keras.utils.set_random_seed(0)
    hp = models.hyperparams(family, {**TINY[family], "learning_rate": 3e-3})
    model = models.build(family, (28, 28, 1), 4, hp)
    settings = training.TrainSettings(
        epochs=6, batch_size=64, learning_rate=hp.learning_rate, steps_per_epoch=8,
        early_stopping_patience=0, verbose=0,
    )
    training.compile_model(model, settings)
    # Training-mode loss per epoch: evaluation would use batch-norm statistics that lag
    # far behind after so few steps.
    losses = model.fit(images, labels, batch_size=64, epochs=settings.epochs, verbose=0).history["loss"]
    assert losses[-1] < losses[0] * 0.7, f"{family}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("family", sorted(models.FAMILIES))
def test_model_config_round_trips(family):
    hp = models.hyperparams(family, TINY[family])
    model = models.build(family, (28, 28, 1), 4, hp)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).integers(0, 255, (2, 28, 28, 1)).astype(np.uint8)
    # training=False: Keras 3 augmentation layers apply themselves when `training` is unset.
    np.testing.assert_allclose(model(x, training=False), clone(x, training=False), rtol=1e-5, atol=1e-5)


def test_input_shape_comes_from_the_caller():
    model = models.build("cnn", (32, 32, 3), 7)
    assert tuple(model.inputs[0].shape) == (None, 32, 32, 3)
    assert tuple(model.outputs[0].shape) == (None, 7)


def test_hyperparameter_overrides_are_checked():
    hp = models.hyperparams("cnn", {"filters": [16, 32, 64], "dropout": 0.5})
    assert hp.filters == (16, 32, 64) and hp.dropout == 0.5
    assert dataclasses.replace(hp, dropout=0.1).dropout == 0.1
    with pytest.raises(UserError, match="no hyperparameter 'depth'"):
        models.hyperparams("cnn", {"depth": 3})


def test_unknown_family_is_a_user_error():
    with pytest.raises(UserError, match="Choose one of: mlp, cnn, rnn, transformer"):
        models.build("resnet", (28, 28, 1), 10)


def test_invalid_architecture_is_explained():
    with pytest.raises(ValueError, match="patch_size 5 must divide"):
        models.build("transformer", (28, 28, 1), 10, models.hyperparams("transformer", {"patch_size": 5}))


def test_transformer_embeds_patches_with_a_stem_or_a_linear_patchify():
    def convs(overrides):
        model = models.build("transformer", (28, 28, 1), 10, models.hyperparams("transformer", overrides))
        return [(layer.kernel_size, layer.strides, layer.filters) for layer in model.layers
                if isinstance(layer, keras.layers.Conv2D)]

    # Two overlapping 3x3 convolutions of stride 2 to the 7x7 grid of 4x4-pixel patches...
    assert convs({"stem_filters": 24}) == [((3, 3), (2, 2), 24), ((3, 3), (2, 2), 64)]
    # ...or ViT's single convolution whose kernel is its stride.
    assert convs({"stem_filters": 0}) == [((4, 4), (4, 4), 64)]
    assert convs({"stem_filters": 24, "patch_size": 7}) == [((7, 7), (7, 7), 64)]  # no factor 2 to halve by


def test_fused_batch_norm_matches_keras_batch_normalization():
    """Same outputs in training and inference, same moving statistics, same gradients."""
    from tfpipeline.models.layers import FusedBatchNorm

    rng = np.random.default_rng(0)
    for shape in ((8, 5, 5, 3), (8, 6)):  # after a conv, after a dense layer
        x = tf.constant(rng.normal(2.0, 3.0, shape).astype("float32"))
        ours, theirs = FusedBatchNorm(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
        ours.build(shape), theirs.build(shape)
        ours.gamma.assign(rng.uniform(0.5, 2.0, shape[-1])), theirs.gamma.assign(ours.gamma)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            a, b = ours(x, training=True), theirs(x, training=True)
            loss_a, loss_b = tf.reduce_sum(a * a * x), tf.reduce_sum(b * b * x)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        for da, db in zip(tape.gradient(loss_a, [x, ours.gamma, ours.beta]),
                          tape.gradient(loss_b, [x, theirs.gamma, theirs.beta])):
            np.testing.assert_allclose(da, db, rtol=1e-3, atol=1e-3)
        # After its first batch the moving statistics are that batch's (a warmed-up average),
        # not Keras's 0.9 * (0 or 1) + 0.1 * batch; the variance with Bessel's correction,
        # which the fused kernel applies and Keras does not.
        n = np.prod(shape[:-1])
        batch_mean = (np.asarray(theirs.moving_mean) - 0.0) / 0.1
        batch_var = (np.asarray(theirs.moving_variance) - 0.9) / 0.1
        np.testing.assert_allclose(ours.moving_mean, batch_mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours.moving_variance, batch_var * n / (n - 1), rtol=1e-4)
        for _ in range(30):  # then the momentum takes over: 0.9 of the old, 0.1 of the batch
            ours(x, training=True)
        np.testing.assert_allclose(ours.moving_mean, batch_mean, rtol=1e-4, atol=1e-4)
        assert float(ours.updates_seen) == 31
        # Inference normalizes with the moving statistics.
        expected = (x - ours.moving_mean) / np.sqrt(ours.moving_variance + 1e-3) * ours.gamma + ours.beta
        np.testing.assert_allclose(ours(x, training=False), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", sorted(models.FAMILIES))
def test_shifts_are_an_input_stage_not_part_of_the_model(family):
    """Each family's `augment` shifts training batches in the input pipeline; the model (and so
    the export) has no augmentation layer, and 0 turns the stage off."""
    import tensorflow as tf

    images = np.zeros((4, 28, 28, 1), np.uint8)
    images[:, 10:18, 10:18] = 255
    starts_later = "augment_from_epoch" in {f.name for f in dataclasses.fields(models.family(family).Hyperparams)}
    hp = models.hyperparams(family, {"augment": 0.2, **({"augment_from_epoch": 0} if starts_later else {})})
    augment = models.augmentation(family, hp, seed=1).per_batch(1)
    shifted, _ = augment(tf.constant(images), tf.zeros(4, tf.int32), tf.constant(0, tf.int64), tf.constant(0, tf.int64))
    assert shifted.dtype == tf.uint8 and shifted.shape == images.shape
    assert not np.array_equal(shifted.numpy(), images)
    assert not any(isinstance(layer, keras.layers.RandomTranslation)
                   for layer in models.build(family, (28, 28, 1), 10, hp).layers)
    assert models.augmentation(family, models.hyperparams(family, {"augment": 0.0}), seed=1).layer is None


@pytest.mark.parametrize("family", sorted(models.FAMILIES))
def test_every_family_hyperparams_satisfy_the_protocol(family):
    assert isinstance(models.hyperparams(family), models.FamilyHyperparams)
