"""The server as TF Serving's own clients see it: gRPC through the published
tensorflow-serving-api stubs, TF Serving's flags and config files (models, policies, labels,
reload, batching, monitoring), Prometheus metrics, warm-up files, strings and b64, and
back-pressure. Every test talks to a real `python -m tfpipeline.serve` process on ephemeral
127.0.0.1 ports."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import ROOT, SHAPE, env, export_version, random_images, start_server, stop_server, tiny_model
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from tfpipeline.export import write_savedmodel
from tfpipeline.export.warmup import read_warmup_requests, warmup_path, write_warmup_requests
from tfpipeline.inputs.image import ImageInput, encode_png

pytestmark = pytest.mark.slow

METRICS_PATH = "/monitoring/prometheus/metrics"


def reference(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}


class Client:
    """TF Serving's Python client, exactly as its users write it."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    @staticmethod
    def predict_request(images: np.ndarray, name: str = "mnist", version: int | None = None,
                        label: str | None = None, signature: str = "serving_default",
                        input_name: str = "images") -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        request.inputs[input_name].CopyFrom(tf.make_tensor_proto(images))
        return request

    def predict(self, images, **kwargs) -> tuple[predict_pb2.PredictResponse, dict]:
        response = self.predictions.Predict(self.predict_request(images, **kwargs), timeout=30)
        return response, {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def status(self, name: str = "mnist", version: int | None = None, label: str | None = None):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        return self.models.GetModelStatus(request, timeout=30)

    def signature_defs(self, name: str = "mnist", version: int | None = None):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        response = self.predictions.GetModelMetadata(request, timeout=30)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signature_map)
        return response, signature_map.signature_def

    def reload(self, config_text: str):
        from google.protobuf import text_format

        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(config_text, request.config)
        return self.models.HandleReloadConfigRequest(request, timeout=120)


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value


# -- one model from flags, two versions -----------------------------------------------------

@pytest.fixture(scope="module")
def two_versions(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("grpc") / "mnist"
    warm = random_images(3, seed=10)
    export_version(base, 1, seed=1, warmup_images=warm)
    export_version(base, 2, seed=2, warmup_images=warm)
    return base


@pytest.fixture(scope="module")
def server(two_versions, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpc-logs")
    monitoring = folder / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    # TF Serving's own command-line forms: --flag=value, --flag value, --enable_batching=true.
    server = start_server(two_versions, folder / "server.log", "--num-versions", "2",
                          "--enable_batching=true", f"--monitoring_config_file={monitoring}",
                          "--tensorflow_intra_op_parallelism=0",
                          "--tensorflow_inter_op_parallelism", "0")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.grpc_target)


def test_grpc_status_lists_both_versions_available(client):
    rows = {s.version: s for s in client.status().model_version_status}
    assert set(rows) == {1, 2}
    for row in rows.values():
        assert row.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert row.status.error_code == 0 and row.status.error_message == ""
    (only,) = client.status(version=1).model_version_status
    assert only.version == 1


def test_grpc_metadata_is_the_savedmodel_signature_def(client, two_versions):
    response, signature_defs = client.signature_defs()
    assert response.model_spec.name == "mnist" and response.model_spec.version.value == 2
    signature = signature_defs["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    images = signature.inputs["images"]
    assert images.dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in images.tensor_shape.dim] == [-1, 28, 28, 1]
    assert set(signature.outputs) == {"probabilities", "classes"}
    assert signature.outputs["classes"].dtype == tf.int64.as_datatype_enum


def test_grpc_predict_with_tensor_content_equals_in_process_call(client, two_versions):
    images = random_images(50, seed=11)
    request = client.predict_request(images)
    assert request.inputs["images"].tensor_content == images.tobytes()  # raw bytes, no lists
    for version in (None, 1, 2):
        response, outputs = client.predict(images, version=version)
        served = version or 2
        assert response.model_spec.version.value == served
        assert response.model_spec.signature_name == "serving_default"
        expected = reference(two_versions / str(served), images)
        np.testing.assert_array_equal(outputs["probabilities"], expected["probabilities"])
        np.testing.assert_array_equal(outputs["classes"], expected["classes"])
    # The two versions really differ, so pinning is tested.
    assert not np.array_equal(reference(two_versions / "1", images)["probabilities"],
                              reference(two_versions / "2", images)["probabilities"])


def _request(**changes) -> predict_pb2.PredictRequest:
    request = Client.predict_request(random_images(2, seed=12))
    for key, value in changes.items():
        if key == "inputs":
            request.ClearField("inputs")
            for name, array in value.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        elif key == "version":
            request.model_spec.version.value = value
        elif key == "output_filter":
            request.output_filter.extend(value)
        else:
            setattr(request.model_spec, key, value)
    return request


GRPC_BAD_REQUESTS = {
    "unknown model": (_request(name="fashion"), grpc.StatusCode.NOT_FOUND, "fashion"),
    "unknown version": (_request(version=42), grpc.StatusCode.NOT_FOUND, "Version 42"),
    "unknown label": (_request(version_label="nope"), grpc.StatusCode.INVALID_ARGUMENT,
                      "Unrecognized servable version label: nope"),
    "unknown signature": (_request(signature_name="train"), grpc.StatusCode.FAILED_PRECONDITION,
                          "Serving signature key \"train\" not found"),
    "unknown input": (_request(inputs={"pixels": random_images(1)}),
                      grpc.StatusCode.INVALID_ARGUMENT, "input tensor alias not found"),
    # The request's shape goes to the graph, as in TF Serving: this one it refuses.
    "wrong shape": (_request(inputs={"images": np.zeros((1, 5, 5, 1), np.uint8)}),
                    grpc.StatusCode.INVALID_ARGUMENT, "reshape"),
    "wrong dtype": (_request(inputs={"images": np.zeros((1, *SHAPE), np.float32)}),
                    grpc.StatusCode.INVALID_ARGUMENT, "expects DT_UINT8 but DT_FLOAT"),
    "unknown output": (_request(output_filter=["logits"]), grpc.StatusCode.INVALID_ARGUMENT,
                       "output tensor alias not found in signature: logits"),
}


@pytest.mark.parametrize("case", list(GRPC_BAD_REQUESTS))
def test_grpc_bad_request_gets_tf_serving_status_code(client, case):
    request, code, text = GRPC_BAD_REQUESTS[case]
    error = rpc_error(client.predictions.Predict, request)
    assert error.code() == code, error.details()
    assert text in error.details()


def test_grpc_other_lookups_and_verbs(client):
    assert rpc_error(client.status, "fashion").code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(client.status, "mnist", 42).code() == grpc.StatusCode.NOT_FOUND
    no_field = get_model_metadata_pb2.GetModelMetadataRequest()
    no_field.model_spec.name = "mnist"
    assert rpc_error(client.predictions.GetModelMetadata, no_field).code() == \
        grpc.StatusCode.INVALID_ARGUMENT
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "mnist"
    error = rpc_error(client.predictions.Classify, classify)
    # serving_default takes images, not tf.Examples under "inputs": TF Serving's refusal.
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "No classification inputs found" in error.details()
    filtered = _request(output_filter=["classes"])
    assert set(client.predictions.Predict(filtered).outputs) == {"classes"}


def test_grpc_and_rest_share_loaded_models_and_batches(server, client, two_versions):
    images = random_images(24, seed=13)
    expected = reference(two_versions / "2", images)["classes"]
    before = server.stats()
    barrier = threading.Barrier(len(images))

    def send(i):
        barrier.wait()
        if i % 2:
            return int(client.predict(images[i:i + 1])[1]["classes"][0])
        status, body = server.post("/v1/models/mnist:predict",
                                   {"instances": images[i:i + 1].tolist()})
        assert status == 200, body
        return body["predictions"][0]["classes"]

    with ThreadPoolExecutor(len(images)) as pool:
        got = list(pool.map(send, range(len(images))))
    after = server.stats()
    assert got == expected.tolist()
    requests = after["requests"] - before["requests"]
    assert requests == len(images)
    assert after["model_calls"] - before["model_calls"] < requests  # merged across protocols


def test_prometheus_metrics_parse_and_count_requests(server, client):
    client.predict(random_images(1))
    server.post("/v1/models/mnist:predict", {"instances": random_images(1).tolist()})
    server.post("/v1/models/mnist/versions/42:predict", {"instances": random_images(1).tolist()})
    status, text = server.get_text(METRICS_PATH)
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {tuple(sorted(s.labels.items())): s.value
              for s in families["tfpipeline_serving_requests"].samples
              if s.name.endswith("_total")}
    assert counts[(("api", "Predict"), ("model", "mnist"), ("status", "OK"))] >= 2
    assert counts[(("api", "Predict"), ("model", "mnist"), ("status", "NOT_FOUND"))] >= 1
    latency = [s for s in families["tfpipeline_serving_request_latency_seconds"].samples
               if s.name.endswith("_count") and s.labels["api"] == "Predict"]
    assert latency and latency[0].value >= 2
    batches = [s for s in families["tfpipeline_serving_batch_size"].samples
               if s.name.endswith("_count")]
    assert batches[0].value >= 1
    loaded = {s.labels["model"]: s.value for s in families["tfpipeline_serving_loaded_versions"].samples}
    assert loaded == {"mnist": 2}
    depth = {s.labels["model"]: s.value for s in families["tfpipeline_serving_queue_depth"].samples}
    assert depth == {"mnist": 0}


def test_versions_replay_their_warmup_file_before_available(server):
    log = server.log()
    for version in (1, 2):
        # One request per signature: serving_default (pixels) and serving_bytes (PNG files).
        replayed = log.index(f"replayed 2 warm-up requests for version {version}")
        assert replayed < log.index(f"loaded mnist version {version}")


def test_b64_png_to_serving_bytes_gives_the_uint8_class(server, client, two_versions):
    images = random_images(6, seed=16)
    expected = reference(two_versions / "2", images)
    files = encode_png(images)
    rows = [{"b64": base64.b64encode(f).decode()} for f in files]
    status, body = server.post("/v1/models/mnist:predict",
                               {"signature_name": "serving_bytes", "instances": rows})
    assert status == 200, body
    assert [p["classes"] for p in body["predictions"]] == expected["classes"].tolist()
    _, outputs = client.predict(files, signature="serving_bytes", input_name="image_bytes")
    assert outputs["classes"].tolist() == expected["classes"].tolist()
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], atol=1e-6)


def test_predict_command_over_grpc_agrees_with_local(server, two_versions, tmp_path):
    from PIL import Image

    images = random_images(2, seed=14)
    paths = []
    for i, pixels in enumerate(images):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(pixels[:, :, 0]).save(paths[-1])
    run = lambda *where: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "tfpipeline.predict", *map(str, paths), *where], cwd=ROOT,
        env=env(), capture_output=True, text=True, timeout=120)
    via_grpc, local = run("--grpc", server.grpc_target), run("--model-dir", str(two_versions))
    assert via_grpc.returncode == 0, via_grpc.stderr
    assert via_grpc.stdout == local.stdout
    classes = reference(two_versions / "2", images)["classes"]
    assert re.findall(r"class (\d+)", via_grpc.stdout) == [str(c) for c in classes]
    bad = run("--grpc", server.grpc_target, "--model-name", "fashion")
    assert bad.returncode == 2 and "NOT_FOUND" in bad.stderr and "Traceback" not in bad.stderr


# -- warm-up files ------------------------------------------------------------------------

class TextModel(tf.Module):
    """A generic model with a DT_STRING input, for the server's string and b64 handling."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        return {"length": tf.strings.length(text), "echo_bytes": text,
                "upper": tf.strings.upper(text)}


def save_text_model(path: Path) -> Path:
    module = TextModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_warmup_file_has_one_predict_log_per_signature(tmp_path):
    images = random_images(3, seed=15)
    keras_dir = tmp_path / "keras"
    write_savedmodel(tiny_model(3), ImageInput.of(SHAPE), keras_dir)
    path = write_warmup_requests(keras_dir, ImageInput.of(SHAPE).warmup_requests(images))
    assert path == keras_dir / "assets.extra" / "tf_serving_warmup_requests"
    # A TFRecord of PredictionLog, read with TensorFlow's own reader; one per signature.
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(str(path))]
    assert all(r.WhichOneof("log_type") == "predict_log" for r in records)
    requests = {r.predict_log.request.model_spec.signature_name: r.predict_log.request
                for r in records}
    assert sorted(requests) == ["serving_bytes", "serving_default"] and len(records) == 2
    np.testing.assert_array_equal(tf.make_ndarray(requests["serving_default"].inputs["images"]),
                                  images)
    files = tf.make_ndarray(requests["serving_bytes"].inputs["image_bytes"])
    np.testing.assert_array_equal(np.stack([tf.io.decode_png(f).numpy() for f in files]), images)
    # A string input gets what the request holds: here the images as PNG bytes.
    text_dir = save_text_model(tmp_path / "text")
    text_requests = {"serving_default": {"text": encode_png(images)}}
    (log,) = read_warmup_requests(write_warmup_requests(text_dir, text_requests).parents[1])
    pngs = tf.make_ndarray(log.predict_log.request.inputs["text"])
    decoded = np.stack([tf.io.decode_png(p).numpy() for p in pngs])
    np.testing.assert_array_equal(decoded, images)
    assert read_warmup_requests(tmp_path) == []  # no file: nothing to replay


def test_export_verified_writes_the_warmup_file(tmp_path, tiny_images):
    from tfpipeline.export import export_verified

    images, labels = tiny_images
    model = tiny_model(3, classes=4)
    predictions = model.predict(images[:64], verbose=0).argmax(-1)
    accuracy = float((predictions == labels[:64]).mean())
    result = export_verified(model, ImageInput.of(SHAPE), tmp_path / "exported", images[:64], labels[:64],
                             accuracy, metadata={})
    logs = read_warmup_requests(result.path)
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == \
        ["serving_bytes", "serving_default"]
    assert warmup_path(result.path).is_file()


# -- a model config file: two models, a specific policy, labels, reload ------------------------

@pytest.fixture(scope="module")
def config_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("config")
    for version in (1, 2, 3):
        export_version(root / "digits", version, seed=20 + version)
    save_text_model(root / "text" / "1")
    export_version(root / "third", 1, seed=30)
    config = root / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{
    name: "digits"
    base_path: "{root / 'digits'}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "text"
    base_path: "{root / 'text'}"
    model_platform: "tensorflow"
  }}
}}
""")
    server = start_server(None, root / "server.log", f"--model_config_file={config}",
                          "--model_config_file_poll_wait_seconds=0.5",
                          "--tensorflow_intra_op_parallelism=0",
                          "--tensorflow_inter_op_parallelism=0")
    yield root, config, server
    stop_server(server)


def test_config_file_serves_both_models_with_policy_and_labels(config_setup):
    root, _, server = config_setup
    client = Client(server.grpc_target)
    status, body = server.get("/v1/models/digits")
    assert status == 200
    assert sorted(r["version"] for r in body["model_version_status"]) == ["1", "2"]  # not 3
    images = random_images(4, seed=21)
    for label, version in (("stable", 1), ("canary", 2)):
        expected = reference(root / "digits" / str(version), images)
        status, body = server.post(f"/v1/models/digits/labels/{label}:predict",
                                   {"inputs": images.tolist()})
        assert status == 200, body
        np.testing.assert_array_equal(np.array(body["outputs"]["probabilities"], np.float32),
                                      expected["probabilities"])
        status, meta = server.get(f"/v1/models/digits/labels/{label}/metadata")
        assert meta["model_spec"]["version"] == str(version)
        status, rows = server.get(f"/v1/models/digits/labels/{label}")
        assert [r["version"] for r in rows["model_version_status"]] == [str(version)]
        response, outputs = client.predict(images, name="digits", label=label)
        assert response.model_spec.version.value == version
        np.testing.assert_array_equal(outputs["probabilities"], expected["probabilities"])
        (row,) = client.status("digits", label=label).model_version_status
        assert row.version == version
    assert server.post("/v1/models/digits/labels/nope:predict",
                       {"inputs": images.tolist()})[0] == 400
    assert server.post("/v1/models/digits/versions/3:predict",
                       {"inputs": images.tolist()})[0] == 404
    response, outputs = client.predict(np.array([b"ab", b"xyz"], dtype=object), name="text",
                                       input_name="text")
    assert outputs["length"].tolist() == [2, 3]


def test_strings_and_b64_over_rest(config_setup):
    _, _, server = config_setup
    binary = bytes([0, 255, 10, 0])  # not UTF-8, with NUL bytes at both ends
    encoded = base64.b64encode(binary).decode()
    status, body = server.post("/v1/models/text:predict",
                               {"instances": [{"b64": encoded}, "héllo"]})
    assert status == 200, body
    assert [p["length"] for p in body["predictions"]] == [4, len("héllo".encode())]
    assert body["predictions"][0]["echo_bytes"] == {"b64": encoded}  # *_bytes: always b64
    assert body["predictions"][1]["echo_bytes"] == {"b64": base64.b64encode(
        "héllo".encode()).decode()}
    assert body["predictions"][1]["upper"] == "HéLLO"  # UTF-8 text stays a string
    assert body["predictions"][0]["upper"] == {"b64": base64.b64encode(binary.upper()).decode()}
    status, body = server.post("/v1/models/text:predict",
                               {"inputs": {"text": [{"b64": encoded}, {"b64": encoded}]}})
    assert status == 200 and body["outputs"]["length"] == [4, 4]
    status, body = server.post("/v1/models/text:predict", {"inputs": [{"b64": encoded}]})
    assert status == 200 and body["outputs"]["length"] == [4]
    for bad, text in [({"instances": [{"b64": "***"}]}, "invalid base64"),
                      ({"instances": [3]}, "not of expected type: string"),
                      ({"instances": [{"b64": encoded, "x": 1}]}, "unknown input"),
                      ({"instances": [["a"], "b"]}, "rectangular")]:
        status, body = server.post("/v1/models/text:predict", bad)
        assert status == 400 and text in body["error"], (bad, body)


def test_reload_config_adds_a_model_without_restart(config_setup):
    root, _, server = config_setup
    client = Client(server.grpc_target)
    assert rpc_error(client.status, "third").code() == grpc.StatusCode.NOT_FOUND
    base = f"""
model_config_list {{
  config {{ name: "digits" base_path: "{root / 'digits'}" model_platform: "tensorflow"
           model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
           version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }}
  config {{ name: "text" base_path: "{root / 'text'}" model_platform: "tensorflow" }}
  config {{ name: "third" base_path: "{root / 'third'}" model_platform: "tensorflow"
           LABELS }}
}}"""
    # A label on a version that is not loaded is refused, and nothing changes.
    error = rpc_error(client.reload, base.replace("LABELS", 'version_labels { key: "x" value: 9 }'))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not currently available" in error.details()
    assert server.get("/v1/models/third")[0] == 404
    response = client.reload(base.replace("LABELS", 'version_labels { key: "stable" value: 1 }'))
    assert response.status.error_code == 0
    images = random_images(2, seed=31)
    expected = reference(root / "third" / "1", images)
    _, outputs = client.predict(images, name="third", label="stable")
    np.testing.assert_array_equal(outputs["probabilities"], expected["probabilities"])
    assert server.get("/v1/models/digits/labels/canary")[0] == 200  # the others still serve


def test_changed_config_file_is_applied_by_the_poll(config_setup):
    # Runs after the reload test (file order): the file, unchanged until now, replaces the
    # config that reload set, and this edit also moves "stable" and drops "text".
    root, config, server = config_setup
    text = config.read_text()
    config.write_text(text.replace('key: "stable" value: 1', 'key: "stable" value: 2')
                      .replace(text[text.index('  config {\n    name: "text"'):text.rindex("}")], ""))
    deadline = time.monotonic() + 60
    while server.get("/v1/models/text")[0] != 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.get("/v1/models/text")[0] == 404
    assert server.get("/v1/models/third")[0] == 404  # it came by reload, not from the file
    status, meta = server.get("/v1/models/digits/labels/stable/metadata")
    assert status == 200 and meta["model_spec"]["version"] == "2"
    assert "applied the changed model config file" in server.log()


def test_label_on_unloaded_version_is_refused_at_startup(tmp_path):
    export_version(tmp_path / "m", 1)
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" '
                      'version_labels { key: "stable" value: 2 } } }')
    result = subprocess.run([sys.executable, "-m", "tfpipeline.serve", "--port=0",
                             "--rest_api_port=0", f"--model_config_file={config}"],
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not currently available" in result.stderr and "stable" in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--enable_batching=maybe"], "expected true or false"),
    (["--model_config_file=x", "--model_name=m"], "not both"),
])
def test_flag_mistakes_exit_2(flags, message):
    result = subprocess.run([sys.executable, "-m", "tfpipeline.serve", *flags], cwd=ROOT,
                            env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr


def test_config_file_mistakes_are_one_clear_error(tmp_path):
    export_version(tmp_path / "m", 1)
    config = tmp_path / "batching.config"
    config.write_text("max_batch_size { value: 8 }\nmax_batch_sise { value: 2 }\n")
    result = subprocess.run([sys.executable, "-m", "tfpipeline.serve", "--model_name=m",
                             f"--model_base_path={tmp_path / 'm'}",
                             f"--batching_parameters_file={config}"],
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "max_batch_sise" in result.stderr and "2:1" in result.stderr


# -- back-pressure ------------------------------------------------------------------------

def heavy_model(seed: int = 40) -> keras.Model:
    """About 40 MFLOP per image, so a few concurrent requests fill a tiny queue."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=SHAPE, dtype="uint8", name="images")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(4096, activation="relu")(x)
    x = keras.layers.Dense(4096, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def test_full_queue_refuses_cleanly_and_answers_every_accepted_request(tmp_path):
    write_savedmodel(heavy_model(), ImageInput.of(SHAPE), tmp_path / "m" / "1")
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 1000 }\n"
                        "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n"
                        "allowed_batch_sizes: 2\nallowed_batch_sizes: 4\n")
    server = start_server(tmp_path / "m", tmp_path / "server.log",
                          f"--batching_parameters_file={batching}")
    try:
        client = Client(server.grpc_target)
        images = random_images(96, seed=41)
        expected = reference(tmp_path / "m" / "1", images)["classes"]
        futures = [client.predictions.Predict.future(client.predict_request(images[i:i + 1]),
                                                     timeout=60) for i in range(len(images))]
        ok, refused = 0, 0
        for i, future in enumerate(futures):
            try:
                classes = tf.make_ndarray(future.result().outputs["classes"])
                assert classes.tolist() == [expected[i]]
                ok += 1
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                assert "overloaded" in error.details()
                refused += 1
        assert ok + refused == len(images) and ok > 0 and refused > 0, (ok, refused)
        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(lambda i: server.post(
                "/v1/models/mnist:predict", {"instances": images[i:i + 1].tolist()}), range(48)))
        assert {status for status, _ in answers} <= {200, 503}
        assert all("overloaded" in body["error"] for status, body in answers if status == 503)
        stats = server.stats()
        assert stats["refused"] == refused + sum(s == 503 for s, _ in answers)
        assert server.process.poll() is None
    finally:
        stop_server(server)
