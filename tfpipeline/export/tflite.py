"""The int8 post-training-quantized TFLite model beside a SavedModel, checked by LiteRT.

    exported/<dataset>/<N>/model_int8.tflite     (TF Serving ignores it: it only loads the SavedModel)

`write_verified` converts the SavedModel that `export.staged` has just written and verified
(still in its hidden candidate folder, before the gate and `export.publish`) with
`tf.lite.TFLiteConverter.from_saved_model`: weights and activations in int8, calibrated on a
representative sample of the training split (what the input spec's `calibration` yields for
it); the model's input (uint8 pixels for images) and float32 probabilities / int64 classes
outputs stay as they are, so the .tflite takes the same input as the SavedModel's
`serving_default`. An input kind whose `tflite_refusal` says why it cannot be converted is
refused before training. The file is then run by the LiteRT interpreter (`ai-edge-litert`,
the runtime a device uses, not TensorFlow's converter-side copy; `serving.clients.LiteRTModel`,
as `predict --tflite` runs it) on the whole test split. Its accuracy, size and drop against
the float SavedModel go into metadata.json (export.tflite); a drop above `max_drop_points`
raises `QuantizationError`, and the candidate, .tflite included, is discarded: nothing is
published. See docs/tflite.md.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from tfpipeline import inputs
from tfpipeline import signatures as names
from tfpipeline.errors import QuantizationError, UserError
from tfpipeline.inputs import InputSpec
from tfpipeline.serving.clients import LiteRTModel

FILENAME = "model_int8.tflite"
# Calibration examples: the converter runs each through the float model to pick every
# activation's int8 range; a few hundred cover MNIST's range of digits (docs/tflite.md).
CALIBRATION_EXAMPLES = 500


@dataclasses.dataclass
class TFLiteSettings:
    """What `write_verified` needs to add the int8 model to a version.

    Args:
        spec: the dataset's input spec: what calibrates and what the test examples become.
        calibration_examples: examples from the training split, as the model takes them.
        max_drop_points: largest allowed test-accuracy drop, in percentage points.
    """

    spec: InputSpec
    calibration_examples: np.ndarray
    max_drop_points: float = 0.5


def check_available() -> None:
    """Raise `UserError` before any training if the LiteRT runtime is not installed."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"--export-tflite checks the int8 model with the LiteRT interpreter, which is not installed "
            f"({exc}). Install it with: pip install 'tfpipeline[tflite]' (the ai-edge-litert package)."
        ) from None


def check_supported(spec: InputSpec) -> None:
    """Raise `UserError` (before any training) if `--export-tflite` cannot convert this input."""
    refusal = spec.tflite_refusal()
    if refusal:
        raise UserError(refusal)  # the spec's sentence names the flag


def settings_for(config, train, spec: InputSpec) -> TFLiteSettings | None:
    """The settings for a pipeline config (None without --export-tflite): the first
    `CALIBRATION_EXAMPLES` examples of the (unbatched) training split calibrate."""
    if not getattr(config, "export_tflite", False):
        return None
    check_supported(spec)
    examples = [example for example, _ in train.take(CALIBRATION_EXAMPLES).as_numpy_iterator()]
    stacked = ({name: np.stack([e[name] for e in examples]) for name in examples[0]}
               if isinstance(examples[0], dict) else np.stack(examples))
    return TFLiteSettings(spec, stacked, config.max_quantization_drop)


def convert(savedmodel_dir: Path, spec: InputSpec, calibration_examples) -> bytes:
    """The SavedModel's `serving_default` as an int8 TFLite flatbuffer.

    Args:
        savedmodel_dir: a SavedModel with the export contract's `serving_default`.
        spec: the input spec, whose `calibration` feeds the converter.
        calibration_examples: training examples the converter calibrates the activations on.

    Returns:
        The flatbuffer's bytes.
    """
    import tensorflow as tf  # here: running a .tflite (LiteRTModel, predict --tflite) needs no TensorFlow

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel_dir), signature_keys=[names.DEFAULT])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: spec.calibration(calibration_examples)
    # Integer kernels only: a conversion that would leave float ops in the graph fails here
    # instead of producing a "quantized" model that runs in float on the device.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        # The calibrator runs TensorFlow's own deprecated tf.lite.Interpreter internally and
        # warns about it; the check that counts (LiteRTModel) uses ai-edge-litert.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return converter.convert()


def variables_bytes(savedmodel_dir: Path) -> int:
    return sum(f.stat().st_size for f in (Path(savedmodel_dir) / "variables").iterdir() if f.is_file())


def write_verified(settings: TFLiteSettings, savedmodel_dir: Path, test_examples,
                   test_labels: np.ndarray, float_accuracy: float) -> dict:
    """Convert, run with LiteRT on the test split, check the drop, write `FILENAME` into
    `savedmodel_dir`; return the record metadata.json keeps under export.tflite.

    Args:
        settings: the input spec, calibration examples and the allowed drop.
        savedmodel_dir: the verified, not yet published, SavedModel version folder.
        test_examples, test_labels: the whole test split.
        float_accuracy: the SavedModel's verified test accuracy (a fraction).

    Returns:
        The record for metadata.json.

    Raises:
        QuantizationError: the int8 model lost more than `settings.max_drop_points`.
    """
    content = convert(savedmodel_dir, settings.spec, settings.calibration_examples)
    classes = LiteRTModel(content).predict(settings.spec.request(test_examples))[names.CLASSES]
    accuracy = float((classes.reshape(-1) == test_labels).mean())
    drop = round((float_accuracy - accuracy) * 100, 4)
    variables = variables_bytes(savedmodel_dir)
    record = {
        "file": FILENAME,
        "quantization": "int8 post-training (weights and activations), uint8 input",
        "calibration_examples": inputs.count(settings.calibration_examples),
        "runtime": f"ai-edge-litert {_litert_version()}",
        "test_accuracy": accuracy,
        "float_test_accuracy": float_accuracy,
        "accuracy_drop_points": drop,
        "max_drop_points": settings.max_drop_points,
        "bytes": len(content),
        "savedmodel_variables_bytes": variables,
        "smaller_than_variables": round(variables / len(content), 2),
    }
    if drop > settings.max_drop_points:
        raise QuantizationError(
            f"the int8 TFLite model scores {accuracy:.2%} on the {len(test_labels):,} test images under LiteRT, "
            f"{drop:.2f} points below the float SavedModel's {float_accuracy:.2%}; --max-quantization-drop is "
            f"{settings.max_drop_points:g}. Allow more with --max-quantization-drop, or export without --export-tflite"
        )
    with open(Path(savedmodel_dir) / FILENAME, "wb") as f:  # durable before the version is published
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    return record


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "unknown"
