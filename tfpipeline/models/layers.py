"""Small layers and input helpers shared by the model families."""

from __future__ import annotations

import keras


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


def random_shift(x: keras.KerasTensor, fraction: float) -> keras.KerasTensor:
    """Random translations of up to `fraction` of the image size in both directions, padded
    with black; active only in training, so the exported model sees the image unchanged.
    0 returns `x` as it is."""
    if not fraction:
        return x
    return keras.layers.RandomTranslation(fraction, fraction, fill_mode="constant", name="shift")(x)


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
