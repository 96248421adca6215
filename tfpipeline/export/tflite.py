"""The int8 post-training-quantized TFLite model beside a SavedModel, checked by LiteRT.

    exported/<dataset>/<N>/model_int8.tflite     (TF Serving ignores it: it only loads the SavedModel)

`write_verified` converts the SavedModel that `export.staged` has just written and verified
(still in its hidden candidate folder, before the gate and `export.publish`) with `tf.lite.TFLiteConverter.from_saved_model`:
weights and activations in int8, calibrated on a representative sample of the training split;
the model's uint8 image input and float32 probabilities / int64 classes outputs stay as they
are, so the .tflite takes the same input as the SavedModel's `serving_default`. The file is
then run by the LiteRT interpreter (`ai-edge-litert`, the runtime a device uses, not
TensorFlow's converter-side copy) on the whole test split. Its accuracy, size and drop against
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

from tfpipeline.errors import QuantizationError, UserError

FILENAME = "model_int8.tflite"
SIGNATURE = "serving_default"
# Calibration images: the converter runs each through the float model to pick every
# activation's int8 range; a few hundred cover MNIST's range of digits (docs/tflite.md).
CALIBRATION_EXAMPLES = 500
_BATCH = 500  # test images per LiteRT call


@dataclasses.dataclass
class TFLiteSettings:
    """What `write_verified` needs to add the int8 model to a version.

    Args:
        calibration_images: uint8 images from the training split, as the model takes them.
        max_drop_points: largest allowed test-accuracy drop, in percentage points.
    """

    calibration_images: np.ndarray
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


def settings_for(config, train) -> TFLiteSettings | None:
    """The settings for a pipeline config (None without --export-tflite): the first
    `CALIBRATION_EXAMPLES` images of the (unbatched) training split calibrate."""
    if not getattr(config, "export_tflite", False):
        return None
    images = np.stack([image for image, _ in train.take(CALIBRATION_EXAMPLES).as_numpy_iterator()])
    return TFLiteSettings(images, config.max_quantization_drop)


def convert(savedmodel_dir: Path, calibration_images: np.ndarray) -> bytes:
    """The SavedModel's `serving_default` as an int8 TFLite flatbuffer.

    Args:
        savedmodel_dir: a SavedModel with the export contract's signature (uint8 `images`).
        calibration_images: uint8 images the converter calibrates the activations on.
    """
    import tensorflow as tf  # here: running a .tflite (LiteRTModel, predict --tflite) needs no TensorFlow

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel_dir), signature_keys=[SIGNATURE])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative():
        for image in calibration_images:
            yield {"images": image[np.newaxis]}

    converter.representative_dataset = representative
    # Integer kernels only: a conversion that would leave float ops in the graph fails here
    # instead of producing a "quantized" model that runs in float on the device.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        # The calibrator runs TensorFlow's own deprecated tf.lite.Interpreter internally and
        # warns about it; the check that counts (LiteRTModel) uses ai-edge-litert.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return converter.convert()


class LiteRTModel:
    """A .tflite file run by the LiteRT interpreter through its `serving_default` signature."""

    def __init__(self, path_or_content: Path | bytes, num_threads: int | None = None):
        check_available()
        from ai_edge_litert.interpreter import Interpreter

        source = {"model_content": path_or_content} if isinstance(path_or_content, bytes) else {
            "model_path": str(path_or_content)}
        self.interpreter = Interpreter(**source, num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if SIGNATURE not in signatures:
            raise UserError(f"The TFLite model has no signature {SIGNATURE} (it has {sorted(signatures)}); "
                            "export it with --export-tflite.")
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        (self.input_name, details), = self.runner.get_input_details().items()
        self.input_shape = [int(d) for d in details["shape_signature"]]  # -1: any size
        self.input_dtype = np.dtype(details["dtype"])

    def predict(self, images: np.ndarray, batch_size: int = _BATCH) -> dict[str, np.ndarray]:
        outputs: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), batch_size):
            result = self.runner(**{self.input_name: np.ascontiguousarray(images[start:start + batch_size])})
            for key, value in result.items():
                outputs.setdefault(key, []).append(np.array(value))
        return {key: np.concatenate(parts) for key, parts in outputs.items()}


def variables_bytes(savedmodel_dir: Path) -> int:
    return sum(f.stat().st_size for f in (Path(savedmodel_dir) / "variables").iterdir() if f.is_file())


def write_verified(settings: TFLiteSettings, savedmodel_dir: Path, test_images: np.ndarray,
                   test_labels: np.ndarray, float_accuracy: float) -> dict:
    """Convert, run with LiteRT on the test split, check the drop, write `FILENAME` into
    `savedmodel_dir`; return the record metadata.json keeps under export.tflite.

    Args:
        settings: calibration images and the allowed drop.
        savedmodel_dir: the verified, not yet published, SavedModel version folder.
        test_images, test_labels: the whole test split.
        float_accuracy: the SavedModel's verified test accuracy (a fraction).
    """
    content = convert(savedmodel_dir, settings.calibration_images)
    classes = LiteRTModel(content).predict(test_images)["classes"]
    accuracy = float((classes.reshape(-1) == test_labels).mean())
    drop = round((float_accuracy - accuracy) * 100, 4)
    variables = variables_bytes(savedmodel_dir)
    record = {
        "file": FILENAME,
        "quantization": "int8 post-training (weights and activations), uint8 input",
        "calibration_examples": int(len(settings.calibration_images)),
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
