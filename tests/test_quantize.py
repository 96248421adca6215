"""--export-tflite: the int8 model is converted, run by LiteRT on the whole test split, recorded,
published beside the SavedModel; a model that loses too much publishes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import ROOT, quadrant_images
from tfpipeline import errors, export, models, training
from tfpipeline.export import tflite as quantize
from tfpipeline.inputs.image import ImageInput


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained on the tiny quadrant data (the conftest's, for module scope)."""
    images, labels = quadrant_images()
    keras.utils.set_random_seed(0)
    hp = models.hyperparams("cnn", {"filters": [8, 16], "dense_units": 32, "augment": 0.0})
    model = models.build("cnn", (28, 28, 1), 4, hp)
    settings = training.TrainSettings(epochs=2, batch_size=32, learning_rate=3e-3, steps_per_epoch=8,
                                      early_stopping_patience=0, verbose=0)
    training.fit(model, tf.data.Dataset.from_tensor_slices((images[:256], labels[:256])).batch(32), None, settings)
    test_images, test_labels = images[256:], labels[256:]
    accuracy = float((np.asarray(model.predict(test_images, verbose=0)).argmax(-1) == test_labels).mean())
    assert accuracy > 0.9
    return model, images[:256], test_images, test_labels, accuracy


def _export(trained, base, calibration=None, max_drop=0.5):
    model, train_images, test_images, test_labels, accuracy = trained
    calibration = train_images[:100] if calibration is None else calibration
    settings = quantize.TFLiteSettings(ImageInput(28, 28, 1), calibration, max_drop)
    # As pipeline.run does it: stage and verify the SavedModel, add the checked int8 model, publish.
    with export.staged(model, ImageInput(28, 28, 1), base, test_images, test_labels, accuracy) as candidate:
        record = quantize.write_verified(settings, candidate.path, test_images, test_labels,
                                         candidate.verified_accuracy)
        return export.publish(candidate, {"note": "test", "export": {"tflite": record}})


def test_int8_model_is_published_verified_and_recorded(trained, tmp_path):
    result = _export(trained, tmp_path / "exported")
    tflite = result.path / quantize.FILENAME
    assert tflite.is_file()
    record = json.loads(result.metadata_path.read_text())["export"]["tflite"]
    _, _, test_images, test_labels, accuracy = trained
    # What metadata.json says is what LiteRT computes from the published file.
    classes = quantize.LiteRTModel(tflite).predict({"images": test_images})["classes"]
    assert record["test_accuracy"] == pytest.approx(float((classes == test_labels).mean()))
    assert record["float_test_accuracy"] == accuracy
    assert record["accuracy_drop_points"] == pytest.approx((accuracy - record["test_accuracy"]) * 100, abs=1e-3)
    assert record["accuracy_drop_points"] <= 0.5
    assert record["bytes"] == tflite.stat().st_size
    assert record["savedmodel_variables_bytes"] >= 3 * record["bytes"]
    assert record["runtime"].startswith("ai-edge-litert")
    # int8 kernels: the weights of the convolutions and dense layers are stored as int8.
    details = quantize.LiteRTModel(tflite).interpreter.get_tensor_details()
    assert any(d["dtype"] == np.int8 and "conv" in d["name"].lower() for d in details), [d["name"] for d in details]


def test_a_drop_past_the_limit_publishes_nothing(trained, tmp_path):
    # Calibrated on black images only, every activation range is wrong: accuracy collapses.
    black = np.zeros((20, 28, 28, 1), np.uint8)
    base = tmp_path / "exported"
    with pytest.raises(errors.QuantizationError, match="--max-quantization-drop is 0.5"):
        _export(trained, base, calibration=black)
    assert list(base.iterdir()) == []  # no version, no temporary folder, no .tflite


@pytest.mark.slow  # a subprocess
def test_predict_runs_the_tflite_file_without_tensorflow(trained, tmp_path):
    result = _export(trained, tmp_path / "exported")
    _, _, test_images, test_labels, _ = trained
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(test_images[i, ..., 0]).save(paths[-1])
    # -X importtime would be slower; a module that fails to import TF proves it is not needed.
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "tensorflow.py").write_text("raise ImportError('TensorFlow must not be imported here')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tfpipeline.predict", "--tflite", str(result.path / quantize.FILENAME),
         *map(str, paths)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == list(map(str, paths))
    expected = quantize.LiteRTModel(result.path / quantize.FILENAME).predict({"images": test_images[:3]})["classes"]
    assert [int(line.split("class ")[1].split()[0]) for line in lines] == expected.tolist()


@pytest.mark.slow  # a subprocess
def test_predict_explains_a_missing_tflite_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfpipeline.predict", "--tflite", str(tmp_path / "no.tflite"),
                           str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    stderr = " ".join(proc.stderr.split())  # one wrapped paragraph
    assert proc.returncode == 2 and "does not exist" in stderr and "Traceback" not in stderr
