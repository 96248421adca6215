"""Integrated gradients: the maps add up, depend on what the model learned (Adebayo et al.'s
randomization check), point at pixels that matter (masking them hurts more than masking
random ones), and `predict --explain` writes them for an exported version."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import ROOT, quadrant_images
from tfpipeline import export, models, predict, training
from tfpipeline.inputs import image_report
from tfpipeline.inputs.image import ImageInput

HP = {"filters": [8, 16], "dense_units": 32, "augment": 0.0}
MASKED = int(0.1 * 28 * 28)  # 10% of the pixels


def _cnn(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return models.build("cnn", (28, 28, 1), 4, models.hyperparams("cnn", HP))


@pytest.fixture(scope="module")
def setup():
    images, labels = quadrant_images()
    model = _cnn(0)
    settings = training.TrainSettings(epochs=2, batch_size=32, learning_rate=3e-3, steps_per_epoch=8,
                                      early_stopping_patience=0, verbose=0)
    training.fit(model, tf.data.Dataset.from_tensor_slices((images[:256], labels[:256])).batch(32), None, settings)
    sample, sample_labels = images[256:288], labels[256:288]
    attributions, classes = image_report.integrated_gradients(model, sample)
    assert (classes == sample_labels).mean() > 0.9  # a model that learned the task
    return model, sample, sample_labels, attributions, classes


def _probabilities(model, images, classes):
    return tf.nn.softmax(model(images, training=False), -1).numpy()[np.arange(len(images)), classes]


def test_attributions_add_up_to_the_probability_change_from_black(setup):
    model, sample, _, attributions, classes = setup
    change = _probabilities(model, sample, classes) - _probabilities(model, np.zeros_like(sample), classes)
    np.testing.assert_allclose(attributions.reshape(len(sample), -1).sum(1), change, atol=0.02)


def test_attributions_of_the_trained_model_differ_from_random_weights(setup):
    """Adebayo et al. (2018): a map that does not change when the weights are randomized
    shows the input, not the model. Same architecture, random weights, same classes."""
    model, sample, labels, attributions, classes = setup
    random_attributions, _ = image_report.integrated_gradients(_cnn(1), sample, classes)
    correlation = [np.corrcoef(a.ravel(), r.ravel())[0, 1] for a, r in zip(attributions, random_attributions)]
    assert np.mean(np.abs(correlation)) < 0.3, correlation

    def in_quadrant(maps):  # share of the positive attribution inside the labelled quadrant
        shares = []
        for a, label in zip(maps, labels):
            r, c = divmod(int(label), 2)
            positive = np.clip(a, 0, None)
            shares.append(positive[r * 14 : r * 14 + 14, c * 14 : c * 14 + 14].sum() / positive.sum())
        return float(np.mean(shares))

    # The trained model's maps point at what decides the label; the random model's do not.
    assert in_quadrant(attributions) > 0.8
    assert in_quadrant(attributions) > in_quadrant(random_attributions) + 0.1


def test_masking_the_top_attributed_pixels_hurts_more_than_random_ones(setup):
    model, sample, _, attributions, classes = setup
    rng = np.random.default_rng(0)
    top, random = sample.copy(), sample.copy()
    for i in range(len(sample)):
        top[i].reshape(-1)[np.argsort(-attributions[i].ravel())[:MASKED]] = 0  # to the black baseline
        random[i].reshape(-1)[rng.choice(28 * 28, MASKED, replace=False)] = 0
    before = _probabilities(model, sample, classes)
    top_drop = (before - _probabilities(model, top, classes)).mean()
    random_drop = (before - _probabilities(model, random, classes)).mean()
    assert top_drop > random_drop + 0.1, (top_drop, random_drop)


@pytest.mark.slow  # a subprocess
def test_predict_explain_writes_the_overlay_for_an_exported_version(setup, tmp_path):
    model, sample, _, _, classes = setup
    class_names = ["top-left", "top-right", "bottom-left", "bottom-right"]
    metadata = {"model": {"family": "cnn", "hyperparameters": dataclasses.asdict(models.hyperparams("cnn", HP))},
                "dataset": {"class_names": class_names}}
    base = tmp_path / "exported"
    accuracy = float((np.asarray(model.predict(sample, verbose=0)).argmax(-1) == classes).mean())
    export.export_verified(model, ImageInput(28, 28, 1), base, sample, classes, accuracy, metadata=metadata)
    image = tmp_path / "digit.png"
    Image.fromarray(sample[0, ..., 0]).save(image)
    out = tmp_path / "why.png"
    proc = subprocess.run([sys.executable, "-m", "tfpipeline.predict", str(image), "--model-dir", str(base),
                           "--explain", str(out)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"class {class_names[classes[0]]}" in proc.stdout and str(out) in proc.stdout
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert picture.shape[1] >= 2 * 28 * image_report.SCALE  # the image and its map side by side
    assert ((picture[..., 0] - picture[..., 2]) > 100).any()  # red: pixels that raised the class


@pytest.mark.parametrize("args, phrase", [
    (["--server", "http://127.0.0.1:1"], "give --model-dir"),
    (["--model-dir", "nowhere"], "does not exist"),
])
def test_predict_explain_usage_errors(tmp_path, capsys, args, phrase):
    assert predict.main([str(tmp_path / "x.png"), *args, "--explain", str(tmp_path / "o.png")]) == 2
    assert phrase in capsys.readouterr().err


def test_write_summaries_logs_both_grids(setup, tmp_path):
    model, sample, labels, _, _ = setup
    wrong = labels.copy()
    wrong[:3] = (wrong[:3] + 1) % 4  # three "mistakes" to show
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        image_report.log_attributions(model, sample, wrong, ["a", "b", "c", "d"], step=0)
    writer.close()
    tags = set()
    for path in tmp_path.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {value.tag for value in event.summary.value}
    assert tags == {"attributions", "attributions_mistakes"}
