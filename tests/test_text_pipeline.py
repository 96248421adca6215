"""Text end to end: `python -m pipelines.text` on a split folder, a flat folder and a CSV of
generated documents, the verified export (serving_default on raw strings reproduces the recorded
test accuracy; `text` DT_STRING), the served export over REST and gRPC, `predict --text`, and the
bad inputs that exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import env, start_server, stop_server
from test_text import documents, write_folder, write_table

from pipelines import text as text_command
from tfpipeline import signatures as names
from tfpipeline.data import text
from tfpipeline.inputs.text import as_strings
from tfpipeline.report import evaluation

COMMON = ("--no-tune", "--epochs", "4", "--histogram-freq", "0")


def _layouts(root: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """The three layouts, with a file each that the run must skip and count."""
    split = write_folder(root / "split" / "train", documents(30))
    write_folder(root / "split" / "test", documents(10, seed=1), prefix="test")
    (split / "space" / "binary.txt").write_bytes(b"\x00\x01\x02")
    flat = write_folder(root / "flat", documents(40, seed=2))
    (flat / "cooking" / "latin1.txt").write_bytes("crème brûlée".encode("latin-1"))
    (flat / "sports" / "empty.txt").write_text("")
    table = write_table(root / "topics.csv", documents(40, seed=3))
    # The flat folder also trains on two replicas (strings under a strategy: training.internals).
    return {"split": (root / "split", ()), "flat": (flat, ("--strategy", "mirrored", "--cpu-devices", "2")),
            "csv": (table, ("--text-column", "body", "--label-column", "topic"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The three layouts trained at once: name → (dataset, flags, exit code, output, version dir)."""
    root = tmp_path_factory.mktemp("text")
    started = {}
    for name, (dataset, flags) in _layouts(root).items():
        out = root / f"out-{name}"
        out.mkdir()
        command = [sys.executable, "-m", "pipelines.text", "--dataset", str(dataset), *flags, *COMMON,
                   "--export-dir", str(out / "exported"), "--logdir", str(out / "runs"), "--work-dir", str(out / "w")]
        started[name] = (dataset, flags, out, subprocess.Popen(
            command, cwd=out, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL))
    done = {}
    for name, (dataset, flags, out, process) in started.items():
        output, _ = process.communicate(timeout=600)
        versions = sorted((out / "exported").glob("*/1"))
        done[name] = (dataset, flags, process.returncode, output, versions[0] if versions else None)
    return done


def _test_split(dataset: Path, flags: tuple[str, ...]):
    columns = dict(zip(flags[::2], flags[1::2]))
    data = text.load(dataset, seed=42, validation_fraction=0.1, verbose=False,
                     text_column=columns.get("--text-column"), label_column=columns.get("--label-column"))
    return evaluation.collect(data.test.batch(1000))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["split", "flat", "csv"])
def test_text_trains_exports_and_the_export_reproduces_its_accuracy(runs, name):
    dataset, flags, code, output, version = runs[name]
    assert code == 0, output
    metadata = json.loads((version / "metadata.json").read_text())
    texts, labels = _test_split(dataset, flags)
    loaded = tf.saved_model.load(str(version))
    classes = loaded.signatures[names.DEFAULT](text=tf.constant(as_strings(texts)))[names.CLASSES].numpy()
    accuracy = float((classes == labels).mean())
    assert accuracy == metadata["metrics"]["test"]["accuracy"] == metadata["export"]["verified_test_accuracy"]
    (signature,) = loaded.signatures[names.DEFAULT].structured_input_signature[1].values()
    assert signature.name == names.TEXT and signature.dtype == tf.string and signature.shape.as_list() == [None]
    record = metadata["dataset"]["input"]
    assert record["kind"] == "text" and record["vocabulary_size"] > 2 and record["sequence_length"] >= 8
    assert f"sequences of {record['sequence_length']} words" in output
    skipped = metadata["dataset"]["source"]["skipped"]["by_reason"]
    assert sum(skipped.values()) == {"split": 1, "flat": 2, "csv": 0}[name], skipped
    assert "macro_f1" in metadata["metrics"]["test"]
    assert metadata["distribution"]["replicas"] == (2 if name == "flat" else 1)


@pytest.mark.slow
def test_served_text_answers_rest_grpc_and_predict(runs, tmp_path):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    dataset, flags, code, output, version = runs["csv"]
    assert code == 0, output
    texts = list(as_strings(_test_split(dataset, flags)[0][:8]))
    loaded = tf.saved_model.load(str(version))
    expected = loaded.signatures[names.DEFAULT](text=tf.constant(texts))[names.CLASSES].numpy().tolist()
    server = start_server(version.parent, tmp_path / "server.log", model_name="topics")
    try:
        status, body = server.post("/v1/models/topics:predict", {"instances": texts})
        assert status == 200, body
        assert [p[names.CLASSES] for p in body["predictions"]] == expected
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "topics"
        request.inputs[names.TEXT].CopyFrom(tf.make_tensor_proto(np.array(texts, dtype=object)))
        assert request.inputs[names.TEXT].dtype == tf.string.as_datatype_enum
        assert tf.make_ndarray(stub.Predict(request, 30).outputs[names.CLASSES]).tolist() == expected
        shown = subprocess.run([sys.executable, "-m", "tfpipeline.predict", "--server", server.url, "--model-name",
                                "topics", "--text", texts[0], "--text", texts[1]],
                               capture_output=True, text=True, env=env(), timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert [int(line.split("class ")[1].split()[0]) for line in shown.stdout.splitlines()] == expected[:2]
        local = subprocess.run([sys.executable, "-m", "tfpipeline.predict", "--model-dir", str(version),
                                "--text", texts[0]], capture_output=True, text=True, env=env(), timeout=120)
        class_names = json.loads((version / "metadata.json").read_text())["dataset"]["class_names"]
        # locally the metadata is at hand: the class's name beside its index
        assert f": class {expected[0]} {class_names[expected[0]]!r} (probability " in local.stdout, local.stderr
    finally:
        stop_server(server)


@pytest.mark.slow
def test_bad_text_exits_2_with_one_paragraph(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one = write_folder(tmp_path / "one", [d for d in documents(5) if d[0] == "space"])
    table = write_table(tmp_path / "t.csv", documents(20))
    cases = {
        "empty": [str(tmp_path / "empty")],
        "needs at least two": [str(one)],
        "headline": [str(table), "--text-column", "headline", "--label-column", "topic"],
        "hash table": [str(table), "--text-column", "body", "--label-column", "topic", "--export-tflite"],
    }
    for says, args in cases.items():
        code = text_command.main(["--dataset", *args, "--no-tune", "--export-dir", str(tmp_path / "e"),
                                  "--logdir", str(tmp_path / "r"), "--work-dir", str(tmp_path / "w")])
        captured = capsys.readouterr()
        assert code == 2, (says, captured)
        said = captured.err + captured.out
        assert says in said and "Traceback" not in said, said
    assert not list((tmp_path / "e").glob("*/[0-9]*"))  # nothing published
