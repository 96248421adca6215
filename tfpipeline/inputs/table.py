"""Tables: one named input per feature column, raw values in, preprocessing inside the model.

A `TableInput` holds everything learned about a table's columns from its training split:
each column's role (numeric, categorical or ignored), what its values looked like, and the
statistics and vocabularies the model's preprocessing was built with (`Column`). It is small
and JSON-serializable, so metadata.json records exactly how a raw row becomes model input.

The Keras model itself takes the raw values (`tfpipeline.models.table.encoder`): a float32
per number (NaN when missing: the model imputes the training mean and sets a missing
indicator), a string per string category and an int64 per integer-coded category (unknown and
missing values go to the out-of-vocabulary slot). So the export needs no transform graph beside
the model, and a TF Serving REST row works as written:
`{"instances": [{"island": "Biscoe", "bill_length_mm": 39.1, ...}]}`.

Signatures:
- `serving_default`: one input per feature column, named after it, `[-1]`, DT_FLOAT / DT_INT64
  / DT_STRING; returns `classes` (int64 index) and `probabilities`, as the image export does.
- `classify` (`signatures.TABLE_CLASSIFY`): TF Serving's classification form. `inputs` is a
  batch of serialized `tf.Example`s; it returns `classes` (the class names, `[-1, n]` strings)
  and `scores` (`[-1, n]`). A feature absent from an Example is a missing value, as tf.Example
  users expect. Its method name must be `tensorflow/serving/classify` for TF Serving's Classify
  API to accept it; TensorFlow's saver writes every signature as a predict signature, so the
  export rewrites the method name afterwards (`method_names`, applied by `export.savedmodel`).

Attributions and TensorBoard samples live in `tfpipeline.inputs.table_report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfpipeline import signatures as names
from tfpipeline.errors import UserError
from tfpipeline.inputs import Examples, InputSpec, register

NUMERIC, CATEGORICAL, IGNORED = "numeric", "categorical", "ignored"
DTYPES = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64, "string": object}


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a table and how the model reads it.

    Attributes:
        name: the header's name; also the serving input's name.
        role: "numeric", "categorical" or "ignored".
        detected: what the values looked like ("number", "integer code", "string", "boolean",
            "identifier", "date", "text", "empty", "constant"), or "--numeric" etc. when a
            flag decided.
        dtype: the serving input's dtype: "float32", "int64" or "string".
        mean, std: a number's training mean and standard deviation (the model standardizes).
        missing_indicator: a number also gets a 0/1 "was missing" input (the training split
            had missing values).
        vocabulary: a category's values seen in training, most frequent first.
        missing_code: the int64 that stands for a missing integer code (outside the vocabulary).
        missing: missing values in the training split; unparseable: values there that should
            have been numbers and were not (treated as missing).
        note: why a column is ignored, or anything else the user should read.
    """

    name: str
    role: str
    detected: str
    dtype: str = "string"
    mean: float = 0.0
    std: float = 1.0
    missing_indicator: bool = False
    vocabulary: tuple = ()
    missing_code: int = -1
    missing: int = 0
    unparseable: int = 0
    note: str = ""

    @property
    def width(self) -> int:
        """How many floats the model's preprocessing turns this column into."""
        if self.role == NUMERIC:
            return 1 + int(self.missing_indicator)
        return len(self.vocabulary) + 1 if self.role == CATEGORICAL else 0

    def describe(self) -> str:
        """One line for the run summary."""
        if self.role == NUMERIC:
            text = f"numeric ({self.detected}; mean {self.mean:.4g}, std {self.std:.4g}"
            text += f"; {self.missing} missing, imputed, with an indicator)" if self.missing_indicator else ")"
        elif self.role == CATEGORICAL:
            shown = ", ".join(str(v) for v in self.vocabulary[:6]) + (", ..." if len(self.vocabulary) > 6 else "")
            text = f"categorical ({self.detected}; {len(self.vocabulary)} values: {shown}; + out-of-vocabulary)"
        else:
            text = f"ignored ({self.detected})"
        return f"{self.name}: {text}" + (f" - {self.note}" if self.note else "")

    def missing_value(self):
        """What stands for a missing value of this column in a request."""
        return {"float32": np.nan, "int64": self.missing_code, "string": ""}[self.dtype]

    def values(self, raw: Sequence[str | None]) -> np.ndarray:
        """Raw strings (None: missing) → this column's request array."""
        if self.dtype == "float32":
            from tfpipeline.data.tablefile import to_float  # the one number parser
            return np.array([to_float(v) for v in raw], dtype=np.float32)
        if self.dtype == "int64":
            return np.array([_to_int(v, self.missing_code) for v in raw], dtype=np.int64)
        return np.array(["" if v is None else str(v) for v in raw], dtype=object)


def _to_int(value: str | None, missing: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return missing
    return int(number) if number.is_integer() else missing


@register
@dataclasses.dataclass(frozen=True)
class TableInput(InputSpec):
    """A table's columns, label and classes (see the module docstring)."""

    kind = "table"

    columns: tuple[Column, ...]
    label: str
    class_names: tuple[str, ...]

    @property
    def features(self) -> tuple[Column, ...]:
        """The columns the model reads, in the order of its inputs."""
        return tuple(c for c in self.columns if c.role != IGNORED)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def summary_lines(self) -> list[str]:
        return [f"  {c.describe()}" for c in self.columns]

    # -- identity ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"kind": self.kind, "label": self.label, "class_names": list(self.class_names),
                "columns": [{**dataclasses.asdict(c), "vocabulary": list(c.vocabulary)} for c in self.columns]}

    @classmethod
    def from_json(cls, record: dict) -> TableInput:
        columns = tuple(Column(**{**c, "vocabulary": tuple(c["vocabulary"])}) for c in record["columns"])
        return cls(columns, record["label"], tuple(record["class_names"]))

    # -- export -----------------------------------------------------------------------------
    def input_signature(self) -> dict[str, tf.TensorSpec]:
        return {c.name: tf.TensorSpec([None], DTYPES[c.dtype], name=c.name) for c in self.features}

    def signatures(self, model) -> dict[str, Any]:
        """`serving_default` (raw values by column) and `classify` (serialized tf.Examples)."""

        @tf.function(input_signature=[self.input_signature()])
        def serve(features):
            probabilities = tf.nn.softmax(tf.cast(model(features, training=False), tf.float32), axis=-1)
            return {names.CLASSES: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
                    names.PROBABILITIES: probabilities}

        parse_spec = {c.name: tf.io.FixedLenFeature([], DTYPES[c.dtype], default_value=c.missing_value())
                      for c in self.features}
        class_names = tf.constant(list(self.class_names))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=names.CLASSIFY_INPUTS)])
        def classify(inputs):
            scores = serve(tf.io.parse_example(inputs, parse_spec))[names.PROBABILITIES]
            classes = tf.tile(class_names[tf.newaxis], [tf.shape(inputs)[0], 1])
            return {names.CLASSES: classes, names.SCORES: scores}

        return {names.DEFAULT: serve, names.TABLE_CLASSIFY: classify}

    def method_names(self) -> dict[str, str]:
        """Signatures whose method name is not TF Serving's predict (`InputSpec.method_names`)."""
        return {names.TABLE_CLASSIFY: names.CLASSIFY_METHOD}

    def request(self, examples: Examples) -> dict[str, np.ndarray]:
        """The feature columns of `examples` (a dict of arrays), with their serving dtypes.

        Raises:
            UserError: a feature column is absent, naming it.
        """
        missing = [c.name for c in self.features if c.name not in examples]
        if missing:
            raise UserError(f"The request lacks the feature column(s) {', '.join(missing)}; the model takes "
                            f"{', '.join(c.name for c in self.features)} (send a missing value as NaN or \"\").")
        return {c.name: np.asarray(examples[c.name]).astype(NUMPY_DTYPES[c.dtype]) for c in self.features}

    def verify(self, loaded, examples: Examples) -> None:
        """The `classify` signature on the same rows as tf.Examples gives `serving_default`'s classes."""
        from tfpipeline.errors import ExportVerificationError

        request = self.request(examples)
        default = loaded.signatures[names.DEFAULT](**{k: tf.constant(v) for k, v in request.items()})
        scores = loaded.signatures[names.TABLE_CLASSIFY](
            **{names.CLASSIFY_INPUTS: tf.constant(self.serialize(request))})[names.SCORES]
        if not np.array_equal(default[names.CLASSES].numpy(), scores.numpy().argmax(axis=-1)):
            raise ExportVerificationError(f"the {names.TABLE_CLASSIFY} signature (tf.Example input) disagrees "
                                          f"with {names.DEFAULT} on the same rows")

    def serialize(self, request: dict[str, np.ndarray]) -> np.ndarray:
        """A request's rows as serialized `tf.Example`s (missing values left out)."""
        return np.array([self._example(request, i).SerializeToString() for i in range(_rows(request))], dtype=object)

    def _example(self, request: dict[str, np.ndarray], i: int) -> tf.train.Example:
        feature = {}
        for c in self.features:
            value = request[c.name][i]
            if c.dtype == "float32" and not np.isnan(value):
                feature[c.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
            elif c.dtype == "int64" and value != c.missing_code:
                feature[c.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
            elif c.dtype == "string" and value != "":
                feature[c.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode()]))
        return tf.train.Example(features=tf.train.Features(feature=feature))

    def warmup_requests(self, examples: Examples) -> dict[str, dict[str, np.ndarray]]:
        request = self.request(examples)
        return {names.DEFAULT: request, names.TABLE_CLASSIFY: {names.CLASSIFY_INPUTS: self.serialize(request)}}

    def tflite_refusal(self) -> str | None:
        return ("--export-tflite is not available for tables: the model reads string categories through "
                "lookup tables, which TFLite's builtin ops cannot run; serve the SavedModel instead.")

    # -- predict ----------------------------------------------------------------------------
    def read(self, sources: Sequence[str], signature_inputs: dict[str, Any]) -> tuple[list[str], dict]:
        """CSV/TSV files of rows (the label column, if present, is ignored) → one label per row
        ("file:line") and `serving_default`'s inputs."""
        # The module alone, not data's hub: the hub imports this package.
        import tfpipeline.data.tablefile as tablefile

        labels, parts = [], []
        for source in sources:
            table = tablefile.read(source)
            absent = [c.name for c in self.features if c.name not in table.values]
            if absent:
                raise UserError(f"{source} lacks the feature column(s) {', '.join(absent)}; the model takes "
                                f"{', '.join(c.name for c in self.features)}.")
            parts.append({c.name: c.values(table.values[c.name]) for c in self.features})
            labels += [f"{Path(source).name}:row {i + 1}" for i in range(len(table))]
        request = {c.name: np.concatenate([p[c.name] for p in parts]) for c in self.features}
        return labels, {k: v for k, v in request.items() if k in signature_inputs or not signature_inputs}

    @classmethod
    def from_signature(cls, inputs: dict[str, Any]) -> TableInput | None:
        """A table spec when every input is a `[batch]` vector and there is more than one, or one
        that is not text's (no statistics: enough for `read`, which needs the columns' names and
        dtypes). Floats are numbers; integers and strings are categories."""
        vectors = all(i.shape is not None and len(i.shape) == 1 for i in inputs.values())
        if not inputs or not vectors or (len(inputs) == 1 and next(iter(inputs)) == names.TEXT):
            return None
        dtypes = {"f": "float32", "i": "int64", "u": "int64"}
        columns = tuple(Column(name, NUMERIC if i.dtype.kind == "f" else CATEGORICAL, "signature",
                               dtype=dtypes.get(i.dtype.kind, "string")) for name, i in inputs.items())
        return cls(columns, "", ())

    def random_examples(self, count: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Rows of values drawn per column: numbers around the training mean, known categories."""
        rng = np.random.default_rng(seed)
        rows = {}
        for c in self.features:
            if c.role == NUMERIC:
                rows[c.name] = (c.mean + c.std * rng.standard_normal(count)).astype(np.float32)
            else:
                choices = list(c.vocabulary) or [c.missing_value()]
                rows[c.name] = np.array([choices[i] for i in rng.integers(0, len(choices), count)],
                                        dtype=NUMPY_DTYPES[c.dtype])
        return rows

    # -- report -----------------------------------------------------------------------------
    def log_samples(self, split, examples, labels, predictions, class_names, step) -> None:
        from tfpipeline.inputs import table_report
        table_report.log_samples(self, f"{split}_rows", examples, labels, predictions, class_names, step=step)

    def log_attributions(self, model, examples, labels, class_names, step) -> None:
        from tfpipeline.inputs import table_report
        table_report.log_attributions(self, model, examples, labels, class_names, step)

    def explain(self, model, source, out: Path, class_names) -> str:
        """`source`: a CSV/TSV file of rows (the first is explained), or the row as a dict of arrays."""
        from tfpipeline.inputs import table_report

        if not isinstance(source, dict):
            _, source = self.read([str(source)], {})
        return table_report.explain(self, model, {k: v[:1] for k, v in source.items()}, out, class_names)


def _rows(request: dict[str, np.ndarray]) -> int:
    return len(next(iter(request.values())))
