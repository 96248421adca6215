"""Verified, versioned, atomic SavedModel export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipeline import errors, export, models
from tfpipeline.errors import UserError
from tfpipeline.inputs.image import ImageInput


@pytest.fixture
def trained(tiny_images):
    images, labels = tiny_images
    keras.utils.set_random_seed(1)
    model = models.build("mlp", (28, 28, 1), 4, models.hyperparams("mlp", {"units": 32}))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, epochs=2, verbose=0)
    accuracy = float((model.predict(images, verbose=0).argmax(-1) == labels).mean())
    return model, images, labels, accuracy


def test_round_trip_reload_matches_in_memory_model(trained, tmp_path):
    model, images, labels, accuracy = trained
    result = export.export_verified(model, ImageInput(28, 28, 1), tmp_path / "m", images, labels, accuracy,
                                    metadata={"k": 1})
    assert result.version == 1 and result.path == tmp_path / "m" / "1"
    assert result.verified_accuracy == accuracy

    loaded = tf.saved_model.load(str(result.path))
    serve = loaded.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["images"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 28, 28, 1]
    out = serve(images=tf.constant(images))
    assert set(out) == {"probabilities", "classes"}
    assert out["probabilities"].dtype == tf.float32 and out["classes"].dtype == tf.int64
    expected = tf.nn.softmax(model.predict(images, verbose=0)).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out["classes"].numpy(), expected.argmax(-1))

    metadata = json.loads(result.metadata_path.read_text())
    assert metadata["k"] == 1 and metadata["export"]["verified_test_accuracy"] == accuracy


def test_versions_count_up_and_ignore_other_folders(trained, tmp_path):
    model, images, labels, accuracy = trained
    base = tmp_path / "m"
    (base / "notes").mkdir(parents=True)
    spec = ImageInput(28, 28, 1)
    paths = [export.export_verified(model, spec, base, images, labels, accuracy, metadata={}).path for _ in range(2)]
    assert [p.name for p in paths] == ["1", "2"]
    assert export.versions(base) == [1, 2]
    assert sorted(p.name for p in base.iterdir()) == ["1", "2", "notes"]  # no temporaries left


def test_failed_verification_publishes_nothing(trained, tmp_path):
    model, images, labels, accuracy = trained
    base = tmp_path / "m"
    with pytest.raises(errors.ExportVerificationError, match="reloaded SavedModel"):
        export.export_verified(model, ImageInput(28, 28, 1), base, images, labels, accuracy - 0.25, metadata={})
    assert list(base.iterdir()) == []


def test_unwritable_export_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="Cannot write to the export directory"):
        export.ensure_writable(blocker / "mnist")


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, keras
    from tfpipeline import export, models
    from tfpipeline.inputs.image import ImageInput
    model = models.build("cnn", (28, 28, 1), 10)
    images = np.zeros((8, 28, 28, 1), np.uint8)
    labels = model.predict(images, verbose=0).argmax(-1)
    print("ready", flush=True)
    while True:
        export.export_verified(model, ImageInput(28, 28, 1), sys.argv[1], images, labels, 1.0, metadata={})
    """
)


@pytest.mark.slow
def test_kill_during_export_leaves_no_partial_version(tmp_path):
    """SIGKILL an exporter at several moments: every numbered folder is a complete SavedModel."""
    base = tmp_path / "m"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # Two kills at fixed moments (most likely mid-write), then one just after a version was
    # published (so, on a loaded machine too, at least one finished and the next was begun).
    for delay in (0.3, 0.9, None):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(base)], stdout=subprocess.PIPE, text=True,
                                env=env)
        assert proc.stdout.readline().strip() == "ready"
        if delay is None:
            before, deadline = len(export.versions(base)), time.monotonic() + 120
            while len(export.versions(base)) == before and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    published = export.versions(base)
    assert published, "no export finished within 120 s"
    for version in published:
        folder = base / str(version)
        assert (folder / "saved_model.pb").is_file() and (folder / "variables").is_dir()
        assert json.loads((folder / "metadata.json").read_text())["export"]["signature"] == "serving_default"
        tf.saved_model.load(str(folder))
    # The next export clears the crashed exporters' temporaries.
    model = models.build("mlp", (28, 28, 1), 2, models.hyperparams("mlp", {"units": 4}))
    imgs = np.zeros((2, 28, 28, 1), np.uint8)
    labels = model.predict(imgs, verbose=0).argmax(-1)
    export.export_verified(model, ImageInput(28, 28, 1), base, imgs, labels, 1.0, metadata={})
    assert not [p for p in base.iterdir() if p.name.startswith(export.TMP_PREFIX)]


def test_compare_allows_only_near_ties_to_flip_and_counts_them():
    reference = np.array([[0.7, 0.2, 0.1], [0.5002, 0.4998, 0.0], [0.1, 0.3, 0.6]], np.float32)
    same = export.compare(reference, reference)
    assert same["classes_differing"] == 0 and same["max_probability_difference"] == 0.0
    # The second example is a near-tie (0.0004 apart, within twice the tolerance): its class may flip.
    flipped = reference.copy()
    flipped[1] = [0.4999, 0.5001, 0.0]
    found = export.compare(reference, flipped)
    assert found["classes_differing"] == found["near_ties_differing"] == 1 and found["examples"] == 3
    assert found["probability_tolerance"] == export.PROBABILITY_TOLERANCE
    # A probability off by more than the tolerance is refused (so is a clear winner that changes:
    # that moves two probabilities by half the gap between them, at least).
    off = reference.copy()
    off[0] = [0.69, 0.21, 0.1]
    with pytest.raises(errors.ExportVerificationError, match="differ .* by up to 0.01 .* 0 of them not near-ties"):
        export.compare(reference, off)
    with pytest.raises(errors.ExportVerificationError, match="class differs on 1 of 3 .* 1 of them not near-ties"):
        export.compare(reference, reference[[0, 1, 0]])


@pytest.mark.slow
def test_forced_xla_run_publishes_the_served_functions_figures(tmp_path, data_dir, manual_dir, monkeypatch):
    """A GPU run compiles training and its in-memory evaluation with XLA (jit_compile="auto"); the
    served signature is a plain tf.function. Forcing XLA here does the same on the CPU."""
    from tfpipeline import training
    from tfpipeline.pipeline import PipelineConfig, run
    from tfpipeline.report import evaluation

    compiled = []
    plain = training.settings_for

    def with_xla(*args, **kwargs):
        compiled.append(plain(*args, **kwargs, jit_compile=True))
        return compiled[-1]

    monkeypatch.setattr(training, "settings_for", with_xla)
    result = run(PipelineConfig(model="mlp", hparams={"units": 64}, quick=True, epochs=2, histogram_freq=0,
                                verbose=0, data_dir=data_dir, manual_dir=str(manual_dir),
                                export_dir=str(tmp_path / "exported"), logdir=str(tmp_path / "runs"),
                                work_dir=str(tmp_path / "work")))
    assert compiled and all(settings.jit_compile is True for settings in compiled)
    assert result.export_path == tmp_path / "exported/mnist/1"
    metadata = json.loads(result.metadata_path.read_text())
    # What was recorded is what the published file serves, to the last example.
    from tfpipeline import data

    datasets = data.load("mnist", data_dir=data_dir, manual_dir=str(manual_dir), quick=True)
    images, labels = evaluation.collect(datasets.batched(datasets.test, batch_size=1000, seed=42, training=False))
    served = export.savedmodel_predict(result.export_path, ImageInput(28, 28, 1), images)
    figures = evaluation.from_probabilities(labels, served["probabilities"], [str(i) for i in range(10)])
    recorded = metadata["metrics"]["test"]
    assert recorded["accuracy"] == figures.accuracy == result.test_accuracy
    assert recorded["confusion_matrix"] == figures.confusion_matrix
    assert recorded["loss"] == pytest.approx(figures.loss, rel=1e-6)
    verification = metadata["export"]["verification"]
    assert verification["examples"] == 10_000 and verification["probability_tolerance"] == 1e-3
    assert verification["max_probability_difference"] <= 1e-3
    assert verification["classes_differing"] == verification["near_ties_differing"]
    assert metadata["export"]["verified_test_accuracy"] == recorded["accuracy"]
