"""The promotion gate (tfpipeline/gate.py) as the pipeline uses it: real quick runs on the MNIST
files into an export base, each new version compared with the latest published one."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.conftest import quadrant_images, run_cli
from tests.folder_factory import flat_folder, write_images
from tfpipeline import errors, export, models
from tfpipeline.data import folders
from tfpipeline.data.datasets import file_key
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
    gate_record = result.metadata["gate"]
    assert gate_record["decision"] == "published" and gate_record["reason"] == "first version"
    assert gate_record["max_regression_points"] == 1.0 and gate_record["confidence_percent"] == 95.0
    assert gate_record["test_accuracy"] == result.test_accuracy and gate_record["baseline"] is None
    identity = result.metadata["dataset"]["identity"]
    assert identity["dataset"] == "tfds:mnist" and len(identity["test_digest"]) == 64


@pytest.mark.slow
def test_equally_good_model_with_another_seed_is_published(base_copy, first, data_dir, manual_dir):
    _, published = first
    result = run(_config(base_copy, data_dir, manual_dir, epochs=2, seed=7))
    baseline = result.metadata["gate"]["baseline"]
    assert result.export_path.name == "2" and result.metadata["gate"]["reason"] == "not worse", baseline
    assert baseline["compared_examples"] == 10_000 and baseline["left_out_examples"] == 0
    assert baseline["test_accuracy"] == pytest.approx(published.test_accuracy, abs=1e-9)
    disagree = baseline["disagreements"]
    assert disagree["new_version_right"] + disagree["baseline_right"] > 0  # another seed: another model
    # The margin is --max-regression's 1 point of 10,000 examples: 100 examples.
    assert baseline["p_value"] == pytest.approx(gate.mcnemar_p(disagree["new_version_right"],
                                                               disagree["baseline_right"], margin=100))
    assert baseline["p_value"] >= 0.05


@pytest.mark.slow
def test_worse_model_is_held_back_and_kept(base_copy, first, data_dir, manual_dir):
    _, published = first
    with pytest.raises(errors.HeldBack) as held:
        run(_config(base_copy, data_dir, manual_dir, epochs=1, learning_rate=1e-5, run_name="worse"))
    decision = held.value.decision
    assert not decision.publish and decision.reason == "regression"
    assert decision.baseline_version == 1 and decision.p_value < 1e-6
    # The baseline is scored now, on this run's test split: the same figure its own run reported.
    assert decision.baseline_accuracy == pytest.approx(published.test_accuracy, abs=1e-9)
    assert decision.delta < -1 and set(decision.per_class_delta) == {str(i) for i in range(10)}
    assert decision.baseline_only > decision.candidate_only
    assert f"p = {decision.p_value:.3g}" in held.value.paragraph()
    assert export.versions(base_copy / "exported/mnist") == [1]  # nothing published
    kept = held.value.candidate
    assert kept == base_copy / "exported/mnist/candidates/worse" and (kept / "saved_model.pb").exists()
    metadata = json.loads((kept / "metadata.json").read_text())
    assert metadata["gate"]["decision"] == "held back"
    assert metadata["gate"]["baseline"]["version"] == 1
    assert metadata["gate"]["baseline"]["delta_points"] == decision.delta
    assert metadata["gate"]["baseline"]["p_value"] == decision.p_value
    assert not list((base_copy / "exported/mnist").glob(".tmp-*"))


@pytest.mark.slow
def test_force_publish_publishes_the_worse_model(base_copy, data_dir, manual_dir):
    result = run(_config(base_copy, data_dir, manual_dir, epochs=1, learning_rate=1e-5, force_publish=True))
    assert result.export_path == base_copy / "exported/mnist/2"
    assert result.metadata["gate"]["decision"] == "published" and result.metadata["gate"]["reason"] == "forced"
    assert result.metadata["gate"]["baseline"]["delta_points"] < -1


@pytest.mark.slow
def test_held_back_run_exits_with_its_own_status(base_copy, data_dir, manual_dir):
    proc = run_cli("--quick", "--no-tune", "--model", "mlp", "--hparam", "units=64", "--epochs", "1",
                   "--learning-rate", "0.00001", "--histogram-freq", "0", cwd=base_copy,
                   env={"TFPIPELINE_MANUAL_DIR": str(manual_dir), "TFDS_DATA_DIR": data_dir})
    assert proc.returncode == 5, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = " ".join(" ".join(proc.stderr.strip().splitlines()[-8:]).split())
    refusal = last[last.index("error: Not published."):]
    accuracies = re.findall(r"\d+\.\d\d% ", refusal)
    assert len(accuracies) == 2, refusal  # the new version's and the published one's
    assert re.search(r"McNemar exact one-sided p = [0-9.e-]+", refusal), refusal
    assert "exactly one is right" in refusal and "95% confidence (--gate-confidence)" in refusal
    assert "--force-publish" in refusal and "exported/mnist/candidates/" in refusal
    assert export.versions(base_copy / "exported/mnist") == [1]


@pytest.mark.slow
def test_folder_versions_from_other_splits_are_compared_on_images_neither_trained_on(tmp_path):
    root = flat_folder(tmp_path / "photos", per_class=30)

    def folder_run(seed: int, dataset: Path = root):
        config = PipelineConfig(dataset=str(dataset), model="mlp", hparams={"units": 16}, epochs=1, tune=False,
                                image_size=(16, 16), histogram_freq=0, verbose=0, seed=seed,
                                export_dir=str(tmp_path / "exported"), logdir=str(tmp_path / "runs"),
                                work_dir=str(tmp_path / "work"))
        try:
            return run(config).metadata
        except errors.HeldBack as held:  # a worse model is fine here: the comparison is what is checked
            return held.value.result.metadata

    first = folder_run(seed=1)
    trained = set(json.loads((tmp_path / "exported/photos/1" / gate.TRAINED_ON).read_text()))
    assert len(trained) == sum(first["dataset"]["num_examples"][r] for r in ("train", "validation"))
    # New files, and another --seed that splits the folder otherwise: most of the old files among the
    # new test images trained version 1, the new files did not.
    for kind in ("circle", "square", "triangle"):
        write_images(root / kind, kind, 20, np.random.default_rng(9), start=100)
    second_test = folders.index(root, validation_fraction=0.1, seed=2).files["test"]
    seen = sum(file_key(Path(p).relative_to(root).as_posix()) in trained for p in second_test)
    assert 0 < seen < len(second_test)
    baseline = folder_run(seed=2)["gate"]["baseline"]
    assert baseline["version"] == 1 and baseline["left_out_examples"] == seen
    assert baseline["compared_examples"] == len(second_test) - seen and "left out" in baseline["note"]
    # Another folder of the same name, under the same export base: refused, before anything is published.
    other = flat_folder(tmp_path / "elsewhere" / "photos", per_class=10, seed=3)
    with pytest.raises(UserError, match="trained on folder:.*but this run's data is folder:.*elsewhere/photos"):
        folder_run(seed=1, dataset=other)


def test_a_baseline_for_other_inputs_is_explained(tmp_path, tiny_images):
    images, labels = tiny_images
    other = models.build("mlp", (8, 8, 1), 4, models.hyperparams("mlp", {"units": 8}))
    export.write_savedmodel(other, ImageInput(8, 8, 1), tmp_path / "m" / "1")
    candidate = evaluation.from_classes(labels, np.zeros_like(labels), ["a", "b", "c", "d"])
    with pytest.raises(UserError, match="cannot score this run's test examples"):
        gate.decide(tmp_path / "m", images, labels, ["a", "b", "c", "d"], candidate, spec=ImageInput(28, 28, 1),
                    split=gate.Split(QUADRANTS), max_regression=0.1, force=False)
    forced = gate.decide(tmp_path / "m", images, labels, ["a", "b", "c", "d"], candidate, spec=ImageInput(28, 28, 1),
                         split=gate.Split(QUADRANTS), max_regression=0.1, force=True)
    assert forced.publish and forced.reason == "forced" and forced.baseline_accuracy is None
    assert "cannot score" in forced.message()
    keras.backend.clear_session()


# --- the decision itself, on a tiny SavedModel whose predictions the labels are made from ----------

QUADRANTS = {"dataset": "tfds:quadrants", "test_digest": "a" * 64}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """An export base with one version and the test examples it gets all right (the labels are
    its own predictions): a candidate's errors are then exactly the disagreements."""
    images, _ = quadrant_images()
    model = models.build("mlp", (28, 28, 1), 4, models.hyperparams("mlp", {"units": 8}))
    base = tmp_path_factory.mktemp("tiny") / "quadrants"
    export.write_savedmodel(model, ImageInput(28, 28, 1), base / "1")
    labels = export.savedmodel_predict(base / "1", ImageInput(28, 28, 1), images)["classes"]
    (base / "1" / "metadata.json").write_text(json.dumps({"dataset": {"identity": QUADRANTS},
                                                         "metrics": {"test": {"accuracy": 1.0}}}))
    keras.backend.clear_session()
    return base, images, labels


def _decide(tiny_base, wrong: int, split=gate.Split(QUADRANTS), **settings):
    base, images, labels = tiny_base
    predictions = labels.copy()
    predictions[:wrong] = (labels[:wrong] + 1) % 4
    candidate = evaluation.from_classes(labels, predictions, ["a", "b", "c", "d"])
    return gate.decide(base, images, labels, ["a", "b", "c", "d"], candidate, spec=ImageInput(28, 28, 1),
                       split=split, **{"max_regression": 1.0, **settings})


def test_mcnemar_p_is_the_exact_one_sided_binomial_tail():
    from scipy import stats

    for candidate_only, baseline_only in [(0, 0), (0, 3), (3, 0), (40, 60), (480, 560), (5, 5)]:
        n = candidate_only + baseline_only
        expected = stats.binomtest(baseline_only, n, 0.5, alternative="greater").pvalue if n else 1.0
        assert gate.mcnemar_p(candidate_only, baseline_only) == pytest.approx(expected, rel=1e-9)
    # With a margin of m examples, each disagreement goes the baseline's way with 1/2 + m/(2n).
    assert gate.mcnemar_p(40, 60, margin=10) == pytest.approx(stats.binom.sf(59, 100, 0.55))
    assert gate.mcnemar_p(0, 3, margin=6) == 1.0  # 3 disagreements cannot show a loss of 6


def test_the_gate_holds_back_what_is_shown_worse_than_the_margin(tiny_base):
    same = _decide(tiny_base, 0)
    assert same.publish and same.reason == "not worse" and same.p_value == 1.0 and same.compared == 512
    # 3 more errors of 512 (0.59 points): within --max-regression 1, whatever the test.
    few = _decide(tiny_base, 3)
    assert few.publish and few.baseline_only == 3 and few.candidate_only == 0 and few.p_worse == 0.125
    # 20 more (3.9 points): shown more than 1 point worse (p = 0.628^20), held back.
    many = _decide(tiny_base, 20)
    assert not many.publish and many.reason == "regression"
    assert many.p_value == pytest.approx((0.5 + 5.12 / 40) ** 20) and many.p_worse == 2.0**-20
    assert "worse by more than --max-regression 1 points at 95% confidence (--gate-confidence)" in many.refusal()
    assert f"p = {many.p_value:.3g} that it is more than 1 points worse" in many.refusal()
    assert "the new version is right on 0 and version 1 on 20" in many.refusal()
    # No margin: anything significantly worse. 5 errors give p = 1/32: held back at 95%, not at 99%.
    assert not _decide(tiny_base, 5, max_regression=0).publish
    assert _decide(tiny_base, 5, max_regression=0, confidence=99).publish
    forced = _decide(tiny_base, 20, force=True)
    assert forced.publish and forced.reason == "forced"


def test_a_different_dataset_under_the_same_base_is_refused(tiny_base):
    other = gate.Split({"dataset": "folder:/data/quadrants", "test_digest": "b" * 64})
    with pytest.raises(UserError, match=r"version 1, trained on tfds:quadrants, but this run's data is "
                                        r"folder:/data/quadrants.*--export-dir"):
        _decide(tiny_base, 0, split=other)
    with pytest.raises(UserError):
        _decide(tiny_base, 0, split=other, force=True)  # --force-publish does not mix datasets either


def test_a_baseline_from_another_split_is_never_scored_on_its_training_examples(tiny_base, tmp_path):
    base, _, _ = tiny_base
    shutil.copytree(base, tmp_path / "quadrants")
    copy = (tmp_path / "quadrants", *tiny_base[1:])
    keys = [f"file{i:03d}" for i in range(512)]
    other_split = gate.Split({**QUADRANTS, "test_digest": "c" * 64}, test_keys=keys)
    # It did not record what it trained on: it cannot be compared safely, and the run says so.
    unknown = _decide(copy, 10, split=other_split)
    assert unknown.publish and unknown.reason == "not compared" and unknown.baseline_accuracy is None
    assert "did not record the files it trained on" in unknown.message()
    # It trained on 200 of this run's test images: those are left out, the rest compared.
    gate.write_trained_on(tmp_path / "quadrants" / "1", keys[:200] + ["elsewhere"])
    compared = _decide(copy, 210, split=other_split)
    assert compared.compared == 312 and compared.left_out == 200 and compared.baseline_only == 10
    assert "left out of the comparison" in compared.message() and "(200 it trained on left out)" in compared.message()
    gate.write_trained_on(tmp_path / "quadrants" / "1", keys)
    assert _decide(copy, 0, split=other_split).reason == "not compared"


def test_gate_confidence_is_a_percentage_from_50_to_below_100():
    for bad in (100, 0.95, 120, -5):
        with pytest.raises(UserError, match=rf"--gate-confidence must be a percentage .* got {bad}\."):
            PipelineConfig(gate_confidence=bad).validate()
    PipelineConfig(gate_confidence=99.9).validate()
    from tfpipeline.cli import build_parser

    assert build_parser().parse_args([]).gate_confidence == 95.0
