"""The promotion gate (tfpipeline/gate.py) as the pipeline uses it: real quick runs on the MNIST
files into an export base, each new version compared with the latest published one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.conftest import run_cli
from tfpipeline import errors, export, models
from tfpipeline.errors import UserError
from tfpipeline.export import gate
from tfpipeline.inputs.image import ImageInput
from tfpipeline.pipeline import PipelineConfig, run
from tfpipeline.report import evaluation

TINY = {"model": "mlp", "hparams": {"units": 64}, "quick": True, "histogram_freq": 0, "verbose": 0}


def _config(cwd: Path, data_dir: str, manual_dir: Path, **kwargs) -> PipelineConfig:
    return PipelineConfig(**{**TINY, **kwargs}, data_dir=data_dir, manual_dir=str(manual_dir),
                          export_dir=str(cwd / "exported"), logdir=str(cwd / "runs"), work_dir=str(cwd / "work"))


@pytest.fixture(scope="module")
def first(tmp_path_factory, data_dir, manual_dir):
    """An export base whose only version was trained for 2 quick epochs."""
    cwd = tmp_path_factory.mktemp("gate")
    result = run(_config(cwd, data_dir, manual_dir, epochs=2))
    return cwd, result


@pytest.fixture
def base_copy(first, tmp_path):
    """A fresh copy of that base for each test, so the tests do not depend on their order."""
    cwd, _ = first
    shutil.copytree(cwd / "exported", tmp_path / "exported")
    return tmp_path


@pytest.mark.slow
def test_first_version_always_publishes(first):
    _, result = first
    assert result.export_path.name == "1"
    assert result.metadata["gate"] == {
        "decision": "published", "reason": "first version", "max_regression_points": 0.1,
        "test_accuracy": result.test_accuracy, "baseline": None}


@pytest.mark.slow
def test_worse_model_is_held_back_and_kept(base_copy, first, data_dir, manual_dir):
    _, published = first
    with pytest.raises(errors.HeldBack) as held:
        run(_config(base_copy, data_dir, manual_dir, epochs=1, learning_rate=1e-5, run_name="worse"))
    decision = held.value.decision
    assert not decision.publish and decision.reason == "regression"
    assert decision.baseline_version == 1
    # The baseline is scored now, on this run's test split: the same figure its own run reported.
    assert decision.baseline_accuracy == pytest.approx(published.test_accuracy, abs=1e-9)
    assert decision.delta < -0.1 and set(decision.per_class_delta) == {str(i) for i in range(10)}
    assert export.versions(base_copy / "exported/mnist") == [1]  # nothing published
    kept = held.value.candidate
    assert kept == base_copy / "exported/mnist/candidates/worse" and (kept / "saved_model.pb").exists()
    metadata = json.loads((kept / "metadata.json").read_text())
    assert metadata["gate"]["decision"] == "held back"
    assert metadata["gate"]["baseline"]["version"] == 1
    assert metadata["gate"]["baseline"]["delta_points"] == decision.delta
    assert not list((base_copy / "exported/mnist").glob(".tmp-*"))


@pytest.mark.slow
def test_force_publish_publishes_the_worse_model(base_copy, data_dir, manual_dir):
    result = run(_config(base_copy, data_dir, manual_dir, epochs=1, learning_rate=1e-5, force_publish=True))
    assert result.export_path == base_copy / "exported/mnist/2"
    assert result.metadata["gate"]["decision"] == "published" and result.metadata["gate"]["reason"] == "forced"
    assert result.metadata["gate"]["baseline"]["delta_points"] < -0.1


@pytest.mark.slow
def test_better_model_is_published(base_copy, first, data_dir, manual_dir):
    _, published = first
    result = run(_config(base_copy, data_dir, manual_dir, epochs=4))
    assert result.test_accuracy > published.test_accuracy
    assert result.export_path.name == "2" and result.metadata["gate"]["reason"] == "not worse"
    assert result.metadata["gate"]["baseline"]["delta_points"] > 0


@pytest.mark.slow
def test_tolerance_is_in_points(base_copy, first, data_dir, manual_dir):
    # Allowed to lose 100 points: even the untrained-looking model passes.
    result = run(_config(base_copy, data_dir, manual_dir, epochs=1, learning_rate=1e-5, max_regression=100.0))
    assert result.metadata["gate"]["reason"] == "not worse" and result.export_path.name == "2"


@pytest.mark.slow
def test_held_back_run_exits_with_its_own_status(base_copy, data_dir, manual_dir):
    proc = run_cli("--quick", "--no-tune", "--model", "mlp", "--hparam", "units=64", "--epochs", "1",
                   "--learning-rate", "0.00001", "--histogram-freq", "0", cwd=base_copy,
                   env={"TFPIPELINE_MANUAL_DIR": str(manual_dir), "TFDS_DATA_DIR": data_dir})
    assert proc.returncode == 5, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = " ".join(proc.stderr.strip().splitlines()[-4:])
    accuracies = [word for word in last.split() if word.endswith("%") or word.endswith("%;")]
    assert len(accuracies) == 2, last  # the new version's and the published one's
    assert "--force-publish" in last and "exported/mnist/candidates/" in last
    assert export.versions(base_copy / "exported/mnist") == [1]


def test_a_baseline_for_other_inputs_is_explained(tmp_path, tiny_images):
    images, labels = tiny_images
    other = models.build("mlp", (8, 8, 1), 4, models.hyperparams("mlp", {"units": 8}))
    export.write_savedmodel(other, ImageInput(8, 8, 1), tmp_path / "m" / "1")
    candidate = evaluation.from_classes(labels, np.zeros_like(labels), ["a", "b", "c", "d"])
    with pytest.raises(UserError, match="cannot score this run's test images"):
        gate.decide(tmp_path / "m", images, labels, ["a", "b", "c", "d"], candidate, spec=ImageInput(28, 28, 1),
                    max_regression=0.1, force=False)
    forced = gate.decide(tmp_path / "m", images, labels, ["a", "b", "c", "d"], candidate, spec=ImageInput(28, 28, 1),
                         max_regression=0.1,
                         force=True)
    assert forced.publish and forced.reason == "forced" and forced.baseline_accuracy is None
    keras.backend.clear_session()
