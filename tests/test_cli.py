"""`python -m pipelines.mnist` end to end on the real MNIST files, and its user-error paths."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory, manual_dir, data_dir):
    """Two quick runs of the CLI in one working folder (versions 1 and 2)."""
    cwd = tmp_path_factory.mktemp("cli")
    env = {"TFPIPELINE_MANUAL_DIR": str(manual_dir), "TFDS_DATA_DIR": data_dir}
    first = run_cli("--quick", cwd=cwd, env=env)
    # A quick MLP may score below the quick CNN: the promotion gate would hold it back.
    second = run_cli("--quick", "--model", "mlp", "--seed", "3", "--force-publish", cwd=cwd, env=env)
    return cwd, first, second


@pytest.mark.slow
def test_quick_run_exports_and_summarizes(quick_runs):
    cwd, first, _ = quick_runs
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert "test accuracy" in out and "exported/mnist/1" in out
    assert "metadata        exported/mnist/1/metadata.json" in out
    assert "tensorboard --logdir runs/mnist" in out
    metadata = json.loads((cwd / "exported/mnist/1/metadata.json").read_text())
    assert metadata["dataset"]["name"] == "mnist" and metadata["dataset"]["version"]
    assert metadata["model"]["family"] == "cnn" and metadata["model"]["hyperparameters"]["filters"]
    assert metadata["training"]["epochs_run"] == 1 and metadata["training"]["seed"] == 42
    test = metadata["metrics"]["test"]
    assert 0.5 < test["accuracy"] <= 1 and len(test["per_class_accuracy"]) == 10
    assert np.array(test["confusion_matrix"]).sum() == 10000
    assert metadata["run"]["tensorflow"] and metadata["run"]["keras"] and metadata["run"]["wall_seconds"] > 0
    metrics = json.loads((cwd / metadata["run"]["logdir"] / "metrics.json").read_text())
    assert metrics["test"]["confusion_matrix"] == test["confusion_matrix"]


@pytest.mark.slow
def test_second_run_is_version_two(quick_runs):
    cwd, _, second = quick_runs
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(p.name for p in (cwd / "exported/mnist").iterdir()) == ["1", "2"]
    metadata = json.loads((cwd / "exported/mnist/2/metadata.json").read_text())
    assert metadata["model"]["family"] == "mlp"
    assert metadata["gate"]["baseline"]["version"] == 1 and metadata["gate"]["decision"] == "published"


# Runs in a fresh interpreter that imports TensorFlow and NumPy only: no project code.
TF_ONLY_CHECK = textwrap.dedent(
    """
    import gzip, json, sys
    import numpy as np
    import tensorflow as tf
    export_dir, manual_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with gzip.open(f"{manual_dir}/t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)[:n]
    with gzip.open(f"{manual_dir}/t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    classes = serve(images=tf.constant(images))["classes"].numpy()
    print(json.dumps({"accuracy": float((classes == labels).mean()),
                      "project_modules": sorted(m for m in sys.modules if m.startswith(("tfpipeline", "pipelines")))}))
    """
)


@pytest.mark.slow
def test_export_serves_from_plain_tensorflow(quick_runs, manual_dir):
    cwd, first, _ = quick_runs
    assert first.returncode == 0
    metadata = json.loads((cwd / "exported/mnist/1/metadata.json").read_text())
    n = metadata["dataset"]["num_examples"]["test"]
    assert n == 10000  # the whole published test file, in TFDS's order or not
    proc = subprocess.run(
        [sys.executable, "-c", TF_ONLY_CHECK, str(cwd / "exported/mnist/1"), str(manual_dir), str(n)],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["project_modules"] == []
    assert abs(result["accuracy"] - metadata["metrics"]["test"]["accuracy"]) <= 0.001


@pytest.mark.slow
def test_pipeline_export_served_matches_in_process(quick_runs, manual_dir, tmp_path):
    """The export a real run published, served by `python -m tfpipeline.serve` over REST (both
    signatures: pixels, and the images' PNG files as TF Serving's b64), answers what the
    SavedModel answers in this process."""
    import base64

    import tensorflow as tf

    from tests.serving_helpers import start_server, stop_server

    cwd, _, _ = quick_runs
    with gzip.open(manual_dir / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)[:64]
    loaded = tf.saved_model.load(str(cwd / "exported/mnist/2"))  # the version the server serves
    expected = loaded.signatures["serving_default"](images=tf.constant(images))
    server = start_server(cwd / "exported/mnist", tmp_path / "server.log")
    try:
        status, body = server.post("/v1/models/mnist:predict", {"inputs": {"images": images.tolist()}})
        assert status == 200, body
        np.testing.assert_allclose(body["outputs"]["probabilities"], expected["probabilities"].numpy(), atol=1e-6)
        assert body["outputs"]["classes"] == expected["classes"].numpy().tolist()
        files = [tf.io.encode_png(image).numpy() for image in images]
        status, body = server.post("/v1/models/mnist/versions/2:predict", {
            "signature_name": "serving_bytes",
            "instances": [{"b64": base64.b64encode(f).decode()} for f in files]})
        assert status == 200, body
        assert [row["classes"] for row in body["predictions"]] == expected["classes"].numpy().tolist()
    finally:
        stop_server(server)


def test_help_reads_well(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for flag in ("--model", "--epochs", "--batch-size", "--learning-rate", "--seed", "--dataset",
                 "--data-dir", "--manual-dir", "--export-dir", "--logdir", "--quick"):
        assert flag in proc.stdout
    assert "TFPIPELINE_MANUAL_DIR" in proc.stdout


@pytest.mark.parametrize("kind, own", [("text", ("--text-column", "--label-column")),
                                        ("table", ("--label-column", "--numeric", "--categorical", "--ignore",
                                                   "--class-weight", "--no-baseline"))])
def test_text_and_table_help_have_their_flags_and_no_image_ones(kind, own, capsys):
    from tfpipeline import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["--help"], dataset=None, kind=kind)
    shown = capsys.readouterr().out
    assert stopped.value.code == 0 and f"python -m pipelines.{kind}" in shown
    for flag in (*own, "--dataset", "--model", "--no-tune", "--export-dir", "--max-regression", "--ensemble"):
        assert flag in shown
    for flag in ("--image-size", "--channels", "--data-dir", "--manual-dir"):
        assert flag not in shown


def test_kind_options_become_the_config():
    from tfpipeline import cli

    args = cli.build_parser(None, "text").parse_args(["--dataset", "d.csv", "--label-column", "author"])
    config = cli.config_from_args(args, "text")
    assert (config.kind, config.text.label_column, config.model, config.image_size) == ("text", "author", "mlp", None)
    assert config.dataset_name == "d"
    images = cli.config_from_args(cli.build_parser(None).parse_args(["--dataset", "photos", "--channels", "1"]))
    assert (images.kind, images.channels) == ("image", 1)


def test_a_library_config_takes_its_kinds_default_family():
    from tfpipeline.config import DEFAULT_MODELS, PipelineConfig, TableOptions

    table = PipelineConfig(kind="table", dataset="p.csv", table=TableOptions(label_column="species"))
    table.validate()  # the image default (cnn) would be refused on a table
    assert table.model == DEFAULT_MODELS["table"]
    assert PipelineConfig().model == DEFAULT_MODELS["image"]
    assert PipelineConfig(kind="text", model="rnn").model == "rnn"


def _assert_user_error(proc, *phrases):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "args, phrases",
    [
        (["--model", "resnet"], ["invalid choice: 'resnet'"]),
        (["--epochs", "0"], ["--epochs", "positive whole number"]),
        (["--batch-size", "-4"], ["--batch-size", "positive"]),
        (["--learning-rate", "nan"], ["--learning-rate", "positive"]),
        (["--dataset", "no_such_dataset"], ["Unknown dataset 'no_such_dataset'"]),
        (["--hparam", "depth=3"], ["no hyperparameter 'depth'"]),
    ],
)
@pytest.mark.slow
def test_bad_flags_are_explained(tmp_path, data_dir, args, phrases):
    proc = run_cli("--quick", "--data-dir", data_dir, *args, cwd=tmp_path)
    _assert_user_error(proc, *phrases)


@pytest.mark.slow
def test_missing_data_files_are_named(tmp_path):
    empty = tmp_path / "manual"
    empty.mkdir()
    proc = run_cli("--quick", "--data-dir", str(tmp_path / "tfds"), "--manual-dir", str(empty), cwd=tmp_path)
    _assert_user_error(proc, "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", str(empty))


@pytest.mark.slow
def test_unwritable_export_dir_fails_before_training(tmp_path, data_dir):
    (tmp_path / "exported").write_text("a file where the export folder should be")
    proc = run_cli("--quick", "--data-dir", data_dir, cwd=tmp_path)
    _assert_user_error(proc, "Cannot write to the export directory", "--export-dir")
    assert "Epoch" not in proc.stdout


@pytest.mark.slow
def test_nan_loss_stops_and_publishes_nothing(tmp_path, data_dir):
    proc = run_cli("--quick", "--data-dir", data_dir, "--model", "mlp", "--learning-rate", "1e12", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Training diverged" in proc.stderr and "Nothing was exported" in proc.stderr
    # It tried once more before giving up, and said so.
    assert "Recovering: rolled back" in proc.stdout
    assert "halved" in proc.stderr and "clipnorm" in proc.stderr and "diverged again" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "exported" / "mnist").glob("[0-9]*"))


@pytest.mark.parametrize("command", ["mnist", "images", "text", "table"])
def test_help_answers_without_starting_tensorflow(command):
    # --help and flag mistakes must answer at once: nothing on the way imports TensorFlow.
    code = (f"import sys\nfrom pipelines import {command}\ntry:\n    {command}.main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print('loaded:', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "loaded: []", proc.stdout[-500:]


@pytest.mark.parametrize("command, flags, said", [
    ("mnist", ["--epochs", "0"], "--epochs must be a positive whole number"),
    ("mnist", ["--learning-rate", "nan"], "--learning-rate must be a positive"),
    ("mnist", ["--gate-confidence", "101"], "--gate-confidence must be a percentage"),
    ("images", ["--dataset", "./no/such/photos"], "The dataset folder"),
    ("text", ["--dataset", "no_such_tweets.csv"], "The text dataset"),
    ("table", ["--dataset", "~/no_such_table.csv", "--label-column", "y"], "The table"),
])
def test_a_mistaken_value_is_answered_before_tensorflow_starts(command, flags, said):
    # A value's own mistake, or a --dataset path with nothing there, needs no TensorFlow to
    # see: the command answers before its seconds of start-up.
    code = (f"import sys\nfrom pipelines import {command}\nstatus = {command}.main({flags!r})\n"
            "print('exit', status, 'loaded:', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "exit 2 loaded: []", proc.stdout[-500:] + proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {said}"), proc.stderr


def test_tensorflow_starts_without_its_start_up_noise():
    """The C++ lines TensorFlow prints while loading (CUDA stub, absl) are held back; what it
    prints with TF_CPP_MIN_LOG_LEVEL=0 shows they exist on this install."""
    code = ("import sys, tfpipeline; tfpipeline.start_tensorflow_quietly(); import tensorflow as tf; "
            "tf.constant(1).numpy(); sys.stderr.write('still writable\\n')")
    quiet = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": ""})
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "still writable\n", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert loud.returncode == 0 and len(loud.stderr.splitlines()) > 1, loud.stderr


def test_a_benchmark_that_loads_tensorflow_at_import_starts_quietly():
    # The benchmarks import TensorFlow at the top (to time their own work); they start it as
    # the pipelines do, so even their --help prints nothing on stderr.
    proc = subprocess.run([sys.executable, "-m", "bench.distribution", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": ""})
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr
