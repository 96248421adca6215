"""The table models' first part: raw column values → one float vector, inside the model.

`encoder(columns)` is a Keras model named `ENCODER` that takes one input per feature column
(float32 / int64 / string, as `TableInput.features` describes them) and returns their
encodings concatenated, column by column in that order (`Column.width` floats each):

- a number: standardized with the training mean and standard deviation, a missing value
  (NaN) imputed with the mean (0 after standardizing), and a 0/1 missing indicator when the
  training split had missing values (`MissingNumber`);
- a category: one-hot over its training vocabulary plus one out-of-vocabulary slot that takes
  unseen and missing values (Keras `StringLookup` / `IntegerLookup`, built with the vocabulary
  rather than adapted, so the export holds it as a constant table and reloads as it was saved).

The families' bodies (`mlp`, `transformer`) read the vector; keeping the encoder a separate
nested model lets integrated gradients run on the encoded values (`inputs.table_report`).
"""

from __future__ import annotations

import keras

ENCODER = "table_encoder"
BODY = "table_body"


@keras.saving.register_keras_serializable(package="tfpipeline")
class MissingNumber(keras.layers.Layer):
    """A batch of numbers `[n]` → `[n, 1]` standardized, or `[n, 2]` with a missing indicator.

    Args:
        mean, std: the training split's statistics.
        indicator: whether to append the "was missing" column.
    """

    def __init__(self, mean: float, std: float, indicator: bool, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std, self.indicator = float(mean), float(std), bool(indicator)

    def call(self, inputs):
        x = keras.ops.reshape(keras.ops.cast(inputs, "float32"), (-1, 1))
        missing = keras.ops.isnan(x)
        scaled = keras.ops.where(missing, keras.ops.zeros_like(x), (x - self.mean) / self.std)
        if not self.indicator:
            return scaled
        return keras.ops.concatenate([scaled, keras.ops.cast(missing, "float32")], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1 + int(self.indicator))

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "indicator": self.indicator}


def raw_inputs(columns) -> dict[str, keras.KerasTensor]:
    """One `keras.Input` per feature column, named after it, with its serving dtype."""
    return {c.name: keras.Input(shape=(), dtype=c.dtype, name=c.name) for c in columns}


def encode(column, tensor):
    """One column's encoding (`Column.width` floats per row)."""
    name = f"encode_{_safe(column.name)}"
    if column.role == "numeric":
        return MissingNumber(column.mean, column.std, column.missing_indicator, name=name)(tensor)
    if column.dtype == "int64":
        lookup = keras.layers.IntegerLookup(vocabulary=[int(v) for v in column.vocabulary], num_oov_indices=1,
                                            output_mode="one_hot", name=name)
    else:
        lookup = keras.layers.StringLookup(vocabulary=[str(v) for v in column.vocabulary], num_oov_indices=1,
                                           output_mode="one_hot", name=name)
    return keras.layers.Reshape((column.width,), name=f"{name}_flat")(lookup(tensor))


def encoder(columns) -> keras.Model:
    """The nested model `ENCODER`: raw inputs → `[n, sum of widths]` floats."""
    inputs = raw_inputs(columns)
    parts = [encode(c, inputs[c.name]) for c in columns]
    joined = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="features")(parts)
    return keras.Model(inputs, joined, name=ENCODER)


def assemble(columns, body: keras.Model, name: str) -> keras.Model:
    """The whole model: raw inputs → encoder → `body` → logits."""
    inputs = raw_inputs(columns)
    logits = body(encoder(columns)(inputs))
    return keras.Model(inputs, logits, name=name)


def _safe(name: str) -> str:
    """A column name as a Keras layer name (letters, digits, underscores)."""
    return "".join(ch if ch.isalnum() else "_" for ch in name)
