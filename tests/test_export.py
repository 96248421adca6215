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
