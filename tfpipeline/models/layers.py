"""Small layers and input helpers shared by the model families."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfpipeline.data.augmentation import Augmentation


def image_inputs(input_shape: tuple[int, ...]) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The model's input (raw `uint8` pixels, as TFDS yields them) and its scaled float view.

    Preprocessing lives inside the model so the exported SavedModel takes raw images and a
    serving client never has to know how we scaled them.
    """
    images = keras.Input(shape=tuple(input_shape), dtype="uint8", name="images")
    scaled = keras.layers.Rescaling(1.0 / 255.0, name="scale")(images)
    return images, scaled


@keras.saving.register_keras_serializable(package="tfpipeline")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding to each position of a `(batch, sequence, features)` input."""

    def __init__(self, initializer="truncated_normal", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.embedding = self.add_weight(
            name="embedding",
            shape=(input_shape[-2], input_shape[-1]),
            initializer=self.initializer,
        )

    def call(self, inputs):
        return inputs + keras.ops.cast(self.embedding, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "initializer": keras.initializers.serialize(self.initializer)}


@keras.saving.register_keras_serializable(package="tfpipeline")
class ClassToken(keras.layers.Layer):
    """Prepends one learned token to a `(batch, sequence, features)` input (ViT's [CLS])."""

    def build(self, input_shape):
        self.token = self.add_weight(name="token", shape=(1, 1, input_shape[-1]), initializer="zeros")

    def call(self, inputs):
        batch = keras.ops.shape(inputs)[0]
        token = keras.ops.broadcast_to(keras.ops.cast(self.token, inputs.dtype), (batch, 1, inputs.shape[-1]))
        return keras.ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[2])


@keras.saving.register_keras_serializable(package="tfpipeline")
class CosineFilters(keras.initializers.Initializer):
    """A convolution kernel of fixed, smooth filters: the lowest-frequency 2D cosine (DCT-II)
    patterns of the kernel's window, each once as it is and once negated.

    A first layer that starts from these and does not train for a while (the CNN's
    `frozen_stem_epochs`) already sees edges and strokes at every orientation, the way a
    whitened first layer does in the CIFAR-10 speedruns (KellerJordan/cifar10-airbench);
    with both signs, the ReLU after it keeps the information of each pattern. Patterns are
    taken in order of frequency, over the window and, for several input channels, over the
    channels too (the first is the channels' mean). Output channels beyond twice the number
    of patterns get Keras's default `glorot_uniform`.

    Args:
        seed: Seed of the `glorot_uniform` filters, if any are needed.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        rows, cols, channels, filters = shape

        def cosines(n: int) -> np.ndarray:  # DCT-II basis, one pattern per row, unit norm
            basis = np.cos(np.pi * (np.arange(n) + 0.5)[None, :] * np.arange(n)[:, None] / n)
            return basis / np.linalg.norm(basis, axis=1, keepdims=True)

        r, c, ch = cosines(rows), cosines(cols), cosines(channels)
        order = sorted(np.ndindex(rows, cols, channels), key=lambda f: (sum(f), f))
        patterns = [np.einsum("i,j,k->ijk", r[a], c[b], ch[d]) for a, b, d in order[: filters // 2]]
        kernel = np.stack(patterns + [-p for p in patterns], axis=-1)
        if kernel.shape[-1] < filters:
            rest = keras.initializers.GlorotUniform(self.seed)((rows, cols, channels, filters - kernel.shape[-1]))
            kernel = np.concatenate([kernel, keras.ops.convert_to_numpy(rest)], axis=-1)
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="tfpipeline")
class FusedBatchNorm(keras.layers.Layer):
    """Batch normalization over the last axis whose moving statistics warm up.

    The same normalization as `keras.layers.BatchNormalization` (batch statistics in
    training, moving statistics otherwise; the same four weights, names and defaults, plus a
    count of updates), with one difference: the moving statistics start as the plain mean of
    the batches seen, and only after 1 / (1 - momentum) batches become Keras's exponential
    average (see `call`). Keras's start at full momentum from mean 0 and variance 1, which
    a short run (a smoke test, a search trial, a one-epoch first cycle) does not wash out.
    It computes with TensorFlow's fused kernel (`FusedBatchNormV3`), one op forward and one
    backward; on a CPU that is no faster than Keras's separate ops (docs/benchmarks.md).
    Inputs of rank 2 (after a dense layer) are normalized as 1x1 images.

    Args:
        momentum: Momentum of the moving mean and variance. Our models use 0.9, not Keras's
            0.99, so the moving statistics keep up with short runs.
        epsilon: Added to the variance to avoid dividing by zero.
    """

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-3, **kwargs):
        # Not autocast: under a mixed-precision policy the kernel takes bfloat16/float16
        # activations with float32 scale, offset and statistics.
        super().__init__(autocast=False, **kwargs)
        self.momentum, self.epsilon = momentum, epsilon

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(name="gamma", shape=channels, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=channels, initializer="zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=channels, initializer="zeros", trainable=False)
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=channels, initializer="ones", trainable=False
        )
        self.updates_seen = self.add_weight(name="updates_seen", shape=(), initializer="zeros", trainable=False)

    def call(self, inputs, training=False):
        dtype = inputs.dtype if inputs.dtype in (tf.bfloat16, tf.float16) else tf.float32
        x = tf.cast(inputs, dtype)
        flat = len(x.shape) == 2
        if flat:
            x = x[:, None, None, :]
        if training:
            # Factor 1: the kernel returns this batch's statistics, which we average ourselves.
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=True, exponential_avg_factor=1.0,
            )
            # A moving average that warms up: the plain mean of the batches seen so far until
            # it has seen 1 / (1 - momentum) of them. Keras's starts at full momentum from
            # mean 0 and variance 1, so after a short run (a smoke test's dozen steps, a
            # search trial) the statistics are still mostly those made-up values, and the
            # model scores near chance in inference while training well.
            self.updates_seen.assign_add(1.0)
            factor = tf.maximum(1.0 - self.momentum, 1.0 / self.updates_seen)
            self.moving_mean.assign(self.moving_mean + factor * (mean - self.moving_mean))
            self.moving_variance.assign(self.moving_variance + factor * (variance - self.moving_variance))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=False,
            )
        return y[:, 0, 0, :] if flat else y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


def shift_augmentation(fraction: float, seed: int, *, start_epoch: int = 0,
                       interpolation: str = "bilinear") -> Augmentation:
    """Random translations of up to `fraction` of the image size in both directions (black
    shifted in), for a family's `augmentation(hp, seed)`: a stage of the training input
    pipeline from epoch `start_epoch` on, so the exported model never contains it.
    `interpolation`: Keras's bilinear default (sub-pixel shifts, as the MLP, RNN and
    Transformer defaults were chosen with) or "nearest" (whole pixels, the CNN's).
    0: no augmentation."""
    if not fraction:
        return Augmentation()
    layer = keras.layers.RandomTranslation(fraction, fraction, fill_mode="constant", interpolation=interpolation,
                                           seed=seed, name="shift")
    return Augmentation(layer, start_epoch=start_epoch)


def normalization(kind: str | None, name: str) -> keras.layers.Layer | None:
    """`"batch"`, `"layer"` or `None` → the matching Keras normalization layer (or none)."""
    if kind in (None, "none"):
        return None
    if kind == "batch":
        # Momentum 0.9, not Keras's 0.99: moving statistics that keep up with short runs
        # (see `cnn.Hyperparams.batch_norm_momentum`).
        return keras.layers.BatchNormalization(momentum=0.9, name=name)
    if kind == "layer":
        return keras.layers.LayerNormalization(name=name)
    raise ValueError(f"Unknown normalization {kind!r}; use 'batch', 'layer' or 'none'.")
