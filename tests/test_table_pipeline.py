"""Tables end to end: `python -m pipelines.table` on penguins.csv and on a generated train/test
folder, the verified export (serving_default on raw values reproduces the recorded test
accuracy; one input per feature with its dtype; the classify signature), the served export over
REST and gRPC (Predict and Classify), and the bad inputs that exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import ROOT, env, start_server, stop_server
from test_table import mixed_rows, write

from pipelines import table as table_command
from tfpipeline import signatures as names
from tfpipeline.data import table
from tfpipeline.report import evaluation

PENGUINS = ROOT.parent / "shared" / "data" / "tables" / "penguins.csv"
COMMON = ("--no-tune", "--epochs", "8", "--histogram-freq", "0")


def _run(dataset: Path, out: Path, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipelines.table", "--dataset", str(dataset), *COMMON, *flags,
               "--export-dir", str(out / "exported"), "--logdir", str(out / "runs"), "--work-dir", str(out / "work")]
    return subprocess.Popen(command, cwd=out, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Both layouts trained at once (two processes): name → (dataset, label, exit code, output, version dir)."""
    if not PENGUINS.is_file():
        pytest.fail(f"The penguins table is needed; {PENGUINS} does not exist (see ../shared/data/tables/README.md).")
    folder = tmp_path_factory.mktemp("mixed")
    header, rows = mixed_rows(240)
    write(folder / "train.csv", header, rows[:180])
    write(folder / "test.csv", header, rows[180:])
    # The folder also trains on two replicas (string columns under a strategy: training.internals).
    jobs = {"penguins": (PENGUINS, "species", ()),
            "folder": (folder, "label", ("--class-weight", "balanced", "--strategy", "mirrored", "--cpu-devices", "2"))}
    started = {}
    for name, (dataset, label, flags) in jobs.items():
        out = tmp_path_factory.mktemp(name)
        started[name] = (out, _run(dataset, out, "--label-column", label, *flags))
    done = {}
    for name, (out, process) in started.items():
        output, _ = process.communicate(timeout=600)
        dataset, label, _ = jobs[name]
        versions = sorted((out / "exported").glob("*/1"))
        done[name] = (dataset, label, process.returncode, output, versions[0] if versions else None)
    return done


def _test_split(dataset: Path, label: str):
    data = table.load_table(dataset, label, validation_fraction=0.1, seed=42)
    return data.spec.input, evaluation.collect(data.test.batch(1000))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["penguins", "folder"])
def test_table_trains_exports_and_the_export_reproduces_its_accuracy(runs, name):
    dataset, label, code, output, version = runs[name]
    assert code == 0, output
    metadata = json.loads((version / "metadata.json").read_text())
    spec, (features, labels) = _test_split(dataset, label)
    loaded = tf.saved_model.load(str(version))
    out = loaded.signatures[names.DEFAULT](**{k: tf.constant(v) for k, v in spec.request(features).items()})
    accuracy = float((out[names.CLASSES].numpy() == labels).mean())
    assert accuracy == metadata["metrics"]["test"]["accuracy"] == metadata["export"]["verified_test_accuracy"]
    inputs = loaded.signatures[names.DEFAULT].structured_input_signature[1]
    dtypes = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
    assert {k: v.dtype for k, v in inputs.items()} == {c.name: dtypes[c.dtype] for c in spec.features}
    assert all(v.shape.as_list() == [None] for v in inputs.values())
    test = metadata["metrics"]["test"]
    assert set(test["per_class_recall"]) == set(metadata["dataset"]["class_names"]) and 0 < test["macro_f1"] <= 1
    assert 0 < metadata["baseline"]["accuracy"] <= 1 and "baseline " in output
    assert {c["name"]: c["role"] for c in metadata["dataset"]["input"]["columns"]}[
        "island" if name == "penguins" else "id"] == ("categorical" if name == "penguins" else "ignored")
    if name == "folder":
        assert "roc_auc" in test and metadata["training"]["class_weight"] == "balanced"
        assert "Class weights (balanced)" in output and metadata["distribution"]["replicas"] == 2


def _rows(features: dict, count: int) -> list[dict]:
    """The first complete rows as TF Serving REST instances (JSON has no NaN)."""
    rows = []
    for i in range(len(next(iter(features.values())))):
        row = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in features.items()}
        if all(not (isinstance(x, float) and math.isnan(x)) and x != "" for x in row.values()):
            rows.append(row)
        if len(rows) == count:
            return rows
    return rows


@pytest.mark.slow
def test_served_table_answers_rest_grpc_and_classify(runs, tmp_path):
    import grpc
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

    dataset, label, code, output, version = runs["penguins"]
    assert code == 0, output
    spec, (features, _) = _test_split(dataset, label)
    rows = _rows(features, 6)
    request = spec.request({k: np.array([r[k] for r in rows]) for k in rows[0]})
    loaded = tf.saved_model.load(str(version))
    expected = loaded.signatures[names.DEFAULT](**{k: tf.constant(v) for k, v in request.items()})[names.CLASSES]
    expected = expected.numpy().tolist()
    class_names = json.loads((version / "metadata.json").read_text())["dataset"]["class_names"]
    server = start_server(version.parent, tmp_path / "server.log", model_name="penguins")
    try:
        status, body = server.post("/v1/models/penguins:predict", {"instances": rows})
        assert status == 200, body
        assert [p[names.CLASSES] for p in body["predictions"]] == expected
        status, body = server.post("/v1/models/penguins:classify",
                                   {"signature_name": names.TABLE_CLASSIFY, "examples": rows})
        assert status == 200, body
        assert [class_names.index(max(r, key=lambda pair: pair[1])[0]) for r in body["results"]] == expected
        missing = [{k: v for k, v in rows[0].items() if k != "island"}]
        status, body = server.post("/v1/models/penguins:predict", {"instances": missing})
        assert status == 400 and "island" in json.dumps(body)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = "penguins"
        for key, value in request.items():
            predict.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        assert predict.inputs["island"].dtype == tf.string.as_datatype_enum
        result = stub.Predict(predict, 30)
        assert tf.make_ndarray(result.outputs[names.CLASSES]).tolist() == expected
        classify = classification_pb2.ClassificationRequest()
        classify.model_spec.name, classify.model_spec.signature_name = "penguins", names.TABLE_CLASSIFY
        for serialized in spec.serialize(request):
            classify.input.example_list.examples.add().ParseFromString(serialized)
        answer = stub.Classify(classify, 30)
        assert [class_names.index(max(c.classes, key=lambda x: x.score).label)
                for c in answer.result.classifications] == expected
    finally:
        stop_server(server)


@pytest.mark.slow
def test_bad_tables_exit_2_with_one_paragraph(tmp_path, capsys):
    header, rows = mixed_rows(40)
    one_class = write(tmp_path / "one.csv", header, [[*r[:-1], "yes"] for r in rows])
    (tmp_path / "empty.csv").write_text("")
    cases = {
        "not in": [str(PENGUINS), "--label-column", "kind"],
        "only one class": [str(one_class), "--label-column", "label"],
        "empty": [str(tmp_path / "empty.csv"), "--label-column", "label"],
        "does not take tables": [str(PENGUINS), "--label-column", "species", "--model", "cnn"],
    }
    for says, args in cases.items():
        code = table_command.main(["--dataset", args[0], *args[1:], "--no-tune", "--export-dir", str(tmp_path / "e"),
                                   "--logdir", str(tmp_path / "r"), "--work-dir", str(tmp_path / "w")])
        captured = capsys.readouterr()
        assert code == 2, (says, captured)
        assert says in captured.err + captured.out and "Traceback" not in captured.err + captured.out
    assert not list((tmp_path / "e").glob("*/[0-9]*"))  # nothing published
