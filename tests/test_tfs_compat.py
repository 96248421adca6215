"""TF Serving's own tests, transcribed, against our server on TF Serving's own test models.

Each test is named after the TF Serving test it transcribes (`<file>_<TestName>`), sends
the requests that test sends and expects the answers it expects, over real gRPC
(tensorflow-serving-api stubs, TCP and the Unix socket) and real HTTP, to one
`python -m tfpipeline.serve` process per module started with the flags
`tensorflow_model_server_test.py` starts TF Serving with. The models are the byte-exact
copies in ../shared/data/tfs_testdata (see its README); a multi-input, multi-output model
and a broken one are written by the tests. Differences from TF Serving that are deliberate
are listed in docs/serving.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import ROOT, env, start_server, stop_server
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tfpipeline.export.savedmodel import set_method_names
from tfpipeline.export.warmup import read_meta_graph
from tfpipeline.serving.clients import GrpcClient, RestClient

pytestmark = pytest.mark.slow

TFS = ROOT.parent / "shared" / "data" / "tfs_testdata"
HALF_PLUS_TWO = "saved_model_half_plus_two_cpu"
TWO_VERSIONS = "saved_model_half_plus_two_2_versions"  # http_rest_api_handler_test's model
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
TIMEOUT = 5.0  # TF Serving's RPC_TIMEOUT


def tfs_root() -> Path:
    if not (TFS / HALF_PLUS_TWO / "00000123" / "saved_model.pb").is_file():
        pytest.fail(f"TF Serving's test models are needed; {TFS} lacks them. Copy "
                    "tensorflow_serving/servables/tensorflow/testdata there (see the README).")
    return TFS


def export_multi_io(base: Path) -> Path:
    """A TF2 model with two named inputs and two named outputs, one of them bytes."""

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a"),
                                      tf.TensorSpec([None], tf.int64, name="b")])
        def serve(self, a, b):
            total = tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32)
            return {"sum": total, "label_bytes": tf.strings.as_string(b)}

    model = Model()
    tf.saved_model.save(model, str(base / "1"), signatures={"serving_default": model.serve})
    return base


def write_config(path: Path, entries: list[str]) -> None:
    path.write_text("model_config_list {\n" + "\n".join(
        f"  config {{ {entry} model_platform: \"tensorflow\" }}" for entry in entries) + "\n}\n")


def model_entries(root: Path, tmp: Path) -> list[str]:
    return [
        f'name: "default" base_path: "{root / HALF_PLUS_TWO}"',
        f'name: "{TWO_VERSIONS}" base_path: "{root / TWO_VERSIONS}" model_version_policy '
        '{ specific { versions: 123 } } version_labels { key: "Version_Label" value: 123 }',
        f'name: "test_model" base_path: "{root / TWO_VERSIONS}" model_version_policy '
        '{ all {} }',
        f'name: "half_plus_two" base_path: "{root / HALF_PLUS_TWO}"',
        f'name: "half_plus_three" base_path: "{root / "saved_model_half_plus_three"}"',
        f'name: "counter" base_path: "{root / "saved_model_counter"}"',
        f'name: "tf2" base_path: "{root / "saved_model_half_plus_two_tf2_cpu"}"',
        f'name: "multi" base_path: "{tmp / "multi"}"',
        f'name: "broken" base_path: "{tmp / "broken"}"',
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tfs_root()
    tmp = tmp_path_factory.mktemp("tfs")
    export_multi_io(tmp / "multi")
    (tmp / "broken" / "1").mkdir(parents=True)
    (tmp / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    config = tmp / "models.config"
    write_config(config, model_entries(root, tmp))
    socket_path = tmp / "tf-serving.sock"
    server = start_server(
        None, tmp / "server.log", f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=1", "--rest_api_timeout_in_ms=5000",
        f"--grpc_socket_path={socket_path}",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
        "--enable_batching", f"--batching_parameters_file={root / 'batching_config.txt'}",
        f"--monitoring_config_file={root / 'monitoring_config.txt'}")
    yield root, tmp, config, socket_path, server
    stop_server(server)


@pytest.fixture(scope="module")
def server(setup):
    return setup[4]


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    return model_service_pb2_grpc.ModelServiceStub(channel)


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, TIMEOUT)
    return info.value


def predict_x(name: str = "default", signature: str = "", specify_output: bool = True,
              batch_input: bool = False) -> predict_pb2.PredictRequest:
    """VerifyPredictRequest's request: x = [2.0] as float_val."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    return request


def verify_predict(stub, expected: float, version: int, **kwargs) -> None:
    """tensorflow_model_server_test.py's VerifyPredictRequest."""
    request = predict_x(**kwargs)
    result = stub.Predict(request, TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected]
    assert result.model_spec.name == request.model_spec.name
    assert result.model_spec.signature_name == (request.model_spec.signature_name
                                                or "serving_default")
    assert result.model_spec.version.value == version


def add_example(request_input, **features) -> None:
    example = request_input.example_list.examples.add()
    for key, value in features.items():
        example.features.feature[key].float_list.value.append(value)


# -- tensorflow_model_server_test.py -----------------------------------------------------

def test_model_server_testGetModelStatus(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = model_stub.GetModelStatus(request, TIMEOUT)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_model_server_testClassify(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    add_example(request.input, x=2.0)
    result = stub.Classify(request, TIMEOUT)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name,
            result.model_spec.version.value) == ("default", "classify_x_to_y", 123)


def test_model_server_testRegress(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "regress_x_to_y"
    add_example(request.input, x=2.0)
    result = stub.Regress(request, TIMEOUT)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name,
            result.model_spec.version.value) == ("default", "regress_x_to_y", 123)


def test_model_server_testMultiInference(stub):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)):
        task = request.tasks.add()
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
        task.method_name = method
    add_example(request.input, x=2.0)
    result = stub.MultiInference(request, TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        spec = result.results[i].model_spec
        assert (spec.name, spec.signature_name, spec.version.value) == (
            "default", request.tasks[i].model_spec.signature_name, 123)


def test_model_server_testPredictSavedModel_and_testPredictBatching(stub):
    # The server runs with --enable_batching and TF Serving's batching_config.txt.
    verify_predict(stub, 3.0, 123)
    verify_predict(stub, 3.0, 123, specify_output=False)


def test_model_server_testGoodModelConfig(stub):
    verify_predict(stub, 3.0, 123, name="half_plus_two")
    verify_predict(stub, 3.0, 123, name="half_plus_two", specify_output=False)
    verify_predict(stub, 4.0, 123, name="half_plus_three")
    verify_predict(stub, 4.0, 123, name="half_plus_three", specify_output=False)


def test_model_server_testBadModelConfig():
    result = subprocess.run(
        [sys.executable, "-m", "tfpipeline.serve", "--port=0", "--rest_api_port=0",
         f"--model_config_file={tfs_root() / 'bad_model_config.txt'}"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr


def test_model_server_testGoodGrpcChannelArgs(stub, server):
    # The module's server was started with TF Serving's grpc_channel_arguments.
    verify_predict(stub, 3.0, 123, specify_output=False)
    assert "grpc_channel_arguments" not in server.log()  # accepted, not warned about


def test_model_server_testPredictUDS(setup):
    channel = grpc.insecure_channel(f"unix:{setup[3]}")
    verify_predict(prediction_service_pb2_grpc.PredictionServiceStub(channel), 3.0, 123,
                   specify_output=False)


def test_model_server_testClassifyREST(server):
    status, body = server.post("/v1/models/default:classify",
                               {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert (status, body) == (200, {"results": [[["", 3.0]]]})


def test_model_server_testRegressREST(server):
    status, body = server.post("/v1/models/default:regress",
                               {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert (status, body) == (200, {"results": [3.0]})


def test_model_server_testPredictREST(server):
    assert server.post("/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}) == (
        200, {"predictions": [3.0, 3.5, 4.0]})


def test_model_server_testPredictColumnarREST(server):
    assert server.post("/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]}) == (
        200, {"outputs": [3.0, 3.5, 4.0]})


def test_model_server_testGetStatusREST(server):
    assert server.get("/v1/models/default") == (200, {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]})


def test_model_server_testGetModelMetadataREST(server):
    status, body = server.get("/v1/models/default/metadata")
    expected = json.loads((tfs_root() / "half_plus_two_model_metadata.json").read_text())
    assert status == 200 and body == expected


def test_model_server_testPrometheusEndpoint(server):
    status, text = server.get_text("/monitoring/prometheus/metrics")
    assert status == 200 and "# TYPE" in text


def test_model_server_test_tf_saved_model_save(tmp_path):
    base = tmp_path / "tf_saved_model_save"
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    to_save = root.f.get_concrete_function(tf.TensorSpec(None, tf.float32))
    tf.saved_model.save(root, str(base / "00000123"), to_save)
    server = start_server(base, tmp_path / "server.log", model_name="default")
    try:
        channel = grpc.insecure_channel(server.grpc_target)
        verify_predict(prediction_service_pb2_grpc.PredictionServiceStub(channel), 12.0, 123,
                       specify_output=False)
    finally:
        stop_server(server)


# -- http_rest_api_handler_test.cc (model saved_model_half_plus_two_2_versions, version 123
#    by a specific policy, label "Version_Label") ------------------------------------------

MODEL_PATH = f"/v1/models/{TWO_VERSIONS}"


@pytest.mark.parametrize("method, path, text", [
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "Malformed request"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
    ("POST", "/v1/models/foo/metadata", "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
])
def test_http_rest_UnsupportedApiCalls(server, method, path, text):
    status, body = server.request(method, path, b"")
    assert status == 400 and text in body["error"]


@pytest.mark.parametrize("path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                                  f"{MODEL_PATH}99:predict"])
def test_http_rest_PredictModelNameVersionErrors(server, path):
    assert server.post(path, {"instances": [1]})[0] == 404


@pytest.mark.parametrize("path, body, text", [
    (f"{MODEL_PATH}:predict", b"", "JSON Parse error: The document is empty"),
    (f"{MODEL_PATH}:predict", b"instances = [1, 2]", "JSON Parse error: Invalid value"),
    (f"{MODEL_PATH}:predict", {"instances": ["x", "y"]}, "not of expected type: float"),
    (f"{MODEL_PATH}/labels/Version_Nonexistent:predict", {"instances": ["x", "y"]},
     "Unrecognized servable version label"),
    (f"{MODEL_PATH}:predict", {"signature_name": 100},
     "'signature_name' key must be a string value."),
])
def test_http_rest_PredictRequestErrors(server, path, body, text):
    status, answer = server.post(path, body)
    assert status == 400 and text in answer["error"]


@pytest.mark.parametrize("path, body, expected", [
    (":predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]},
     {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    ("/versions/123:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
    ("/labels/Version_Label:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
    ("/versions/123:predict", {"signature_name": "serving_default", "instances": [3.0, 4.0]},
     {"predictions": [3.5, 4.0]}),
    ("/versions/123:predict", {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
     {"outputs": [3.5, 4.0]}),
])
def test_http_rest_Predict(server, path, body, expected):
    assert server.post(MODEL_PATH + path, body) == (200, expected)


@pytest.mark.parametrize("path", [":regress", "/versions/123:regress",
                                  "/labels/Version_Label:regress"])
def test_http_rest_Regress(server, path):
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    assert server.post(MODEL_PATH + path, body) == (200, {"results": [42]})


@pytest.mark.parametrize("path, x, score", [(":classify", 20.0, 12),
                                            ("/labels/Version_Label:classify", 10.0, 7)])
def test_http_rest_Classify(server, path, x, score):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": x}]}
    assert server.post(MODEL_PATH + path, body) == (200, {"results": [[["", score]]]})


@pytest.mark.parametrize("path", ["", "/versions/123", "/labels/Version_Label"])
def test_http_rest_GetStatus(server, path):
    assert server.get(MODEL_PATH + path) == (200, {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]})


def test_http_rest_GetModelMetadata(server):
    expected = json.loads((tfs_root() / f"{TWO_VERSIONS}_metadata.json").read_text())
    assert server.get(f"{MODEL_PATH}/metadata") == (200, expected)


# -- predict_impl_test.cc (model "test_model", version 123) -------------------------------

def predict_request(**inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "test_model"
    request.model_spec.version.value = 123
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    return request


def float_scalar(value: float = 2.0):
    return tf.make_tensor_proto(value, tf.float32)


def test_predict_impl_MissingOrEmptyModelSpec(stub):
    request = predict_pb2.PredictRequest()
    assert rpc_error(stub.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.name = ""
    assert rpc_error(stub.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.name = "test"
    assert rpc_error(stub.Predict, request).code() == grpc.StatusCode.NOT_FOUND


def test_predict_impl_EmptyInputList(stub):
    error = rpc_error(stub.Predict, predict_request())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_predict_impl_InputTensorsDontMatchModelSpecInputs(stub):
    request = predict_request(key=tf.make_tensor_proto([b"any_key"]))
    assert rpc_error(stub.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_predict_impl_OutputFiltersDontMatchModelSpecOutputs(stub):
    request = predict_request(x=float_scalar())
    request.output_filter.append("output_filter")
    assert rpc_error(stub.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    del request.output_filter[:]
    request.output_filter.append("y")
    assert stub.Predict(request, TIMEOUT).outputs["y"].float_val == [3.0]
    request.output_filter.append("y")
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate output tensor alias: y" in error.details()


def test_predict_impl_InputTensorsHaveWrongType(stub):
    request = predict_request(x=tf.make_tensor_proto([b"any_key"]))
    request.output_filter.append("y")
    assert rpc_error(stub.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_predict_impl_PredictionSuccess(stub):
    response = stub.Predict(predict_request(x=float_scalar()), TIMEOUT)
    expected = predict_pb2.PredictResponse()
    expected.outputs["y"].dtype = types_pb2.DT_FLOAT
    expected.outputs["y"].float_val.append(3.0)
    expected.outputs["y"].tensor_shape.SetInParent()
    assert response.outputs == expected.outputs


@pytest.mark.parametrize("signature, input_key, output_key", [
    ("regress_x2_to_y3", "inputs", "outputs"),  # PredictionWithNamedRegressionSignature
    ("classify_x2_to_y3", "inputs", "scores"),  # PredictionWithNamedClassificationSignature
])
def test_predict_impl_PredictionWithNamedSignatures(stub, signature, input_key, output_key):
    request = predict_request(**{input_key: float_scalar()})
    request.model_spec.signature_name = signature
    response = stub.Predict(request, TIMEOUT)
    assert list(response.outputs) == [output_key]
    assert response.outputs[output_key].float_val == [4.0]
    assert response.outputs[output_key].dtype == types_pb2.DT_FLOAT


# -- classification_service_test.cc / regression_service_test.cc --------------------------

@pytest.mark.parametrize("verb", ["Classify", "Regress"])
def test_service_InvalidModelSpec(stub, verb):
    request = (classification_pb2.ClassificationRequest() if verb == "Classify"
               else regression_pb2.RegressionRequest())
    call = getattr(stub, verb)
    assert rpc_error(call, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.SetInParent()
    assert rpc_error(call, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.name = "foo"
    assert rpc_error(call, request).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("verb", ["Classify", "Regress"])
def test_service_InvalidSignature(stub, verb):
    request = (classification_pb2.ClassificationRequest() if verb == "Classify"
               else regression_pb2.RegressionRequest())
    request.model_spec.name = "test_model"
    request.model_spec.signature_name = "invalid_signature_name"
    assert rpc_error(getattr(stub, verb), request).code() == grpc.StatusCode.INVALID_ARGUMENT


def _example_with_extra_features(request) -> None:
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(80.0)
    example.features.feature["locale"].bytes_list.value.append(b"pt_BR")
    example.features.feature["age"].float_list.value.append(19.0)


def test_classification_service_ClassificationSuccess(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "test_model"
    request.model_spec.signature_name = "classify_x_to_y"
    _example_with_extra_features(request)
    response = stub.Classify(request, TIMEOUT)
    expected = classification_pb2.ClassificationResponse()
    expected.result.classifications.add().classes.add().score = 42
    expected.model_spec.name = "test_model"
    expected.model_spec.signature_name = "classify_x_to_y"
    expected.model_spec.version.value = 124  # "test_model" serves both versions: latest
    assert response == expected


def test_regression_service_RegressionSuccess(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "test_model"
    request.model_spec.signature_name = "regress_x_to_y"
    _example_with_extra_features(request)
    response = stub.Regress(request, TIMEOUT)
    assert [r.value for r in response.result.regressions] == [42]
    assert response.model_spec.signature_name == "regress_x_to_y"


# -- multi_inference_test.cc ---------------------------------------------------------------

def multi_request(*tasks, **features) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for name, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = name
        task.model_spec.signature_name = signature
        task.method_name = method
    if features:
        add_example(request.input, **features)
    return request


@pytest.mark.parametrize("case, request_args, code, text", [
    ("MissingInputTest", ([("test_model", "regress_x_to_y", REGRESS)], {}),
     grpc.StatusCode.INVALID_ARGUMENT, "Input is empty"),
    ("UndefinedSignatureTest",
     ([("test_model", "ThisSignatureDoesNotExist", REGRESS)], {"x": 2}),
     grpc.StatusCode.INVALID_ARGUMENT, "signature not found"),
    ("InconsistentModelSpecsInRequestTest",
     ([("test_model", "regress_x_to_y", REGRESS),
       ("ModelDoesNotExist", "regress_x_to_y", REGRESS)], {"x": 2}),
     grpc.StatusCode.INVALID_ARGUMENT, "must access the same model name"),
    ("EvaluateDuplicateSignaturesTest",
     ([("test_model", "regress_x_to_y", REGRESS), ("test_model", "regress_x_to_y", REGRESS)],
      {"x": 2}),
     grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x_to_y"),
    ("UsupportedSignatureTypeTest",
     ([("test_model", "serving_default", "tensorflow/serving/predict")], {"x": 2}),
     grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature"),
    ("SignaturesWithDifferentInputsTest",
     ([("test_model", "regress_x_to_y", REGRESS), ("test_model", "regress_x2_to_y3", REGRESS)],
      {"x": 2, "x2": 2}),
     grpc.StatusCode.INVALID_ARGUMENT, "Input tensor must be the same"),
])
def test_multi_inference_errors(stub, case, request_args, code, text):
    tasks, features = request_args
    error = rpc_error(stub.MultiInference, multi_request(*tasks, **features))
    assert error.code() == code and text in error.details(), (case, error.details())


@pytest.mark.parametrize("case, tasks, expected", [
    ("ValidSingleSignatureTest", [("regress_x_to_y", REGRESS)], [3.0]),
    ("MultipleValidRegressSignaturesTest",
     [("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS)], [3.0, 4.0]),
    ("RegressAndClassifySignaturesTest",
     [("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)], [3.0, 3.0]),
])
def test_multi_inference_success(stub, case, tasks, expected):
    request = multi_request(*[("test_model", s, m) for s, m in tasks], x=2)
    response = stub.MultiInference(request, TIMEOUT)
    got = []
    for task, result in zip(request.tasks, response.results):
        assert result.model_spec.signature_name == task.model_spec.signature_name
        assert result.model_spec.version.value == 124
        if task.method_name == REGRESS:
            got.append(result.regression_result.regressions[0].value)
        else:
            got.append(result.classification_result.classifications[0].classes[0].score)
    assert got == expected, case


# -- get_model_metadata_impl_test.cc / get_model_status_impl_test.cc ----------------------

def test_get_model_metadata_impl_MissingOrEmptyModelSpec(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert rpc_error(stub.GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.name = ""
    assert rpc_error(stub.GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_metadata_impl_EmptyOrInvalidMetadataFieldList(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "test_model"
    assert rpc_error(stub.GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    request.metadata_field.append("some_stuff")
    assert rpc_error(stub.GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_metadata_impl_ReturnsSignaturesForValidModel(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "test_model"
    request.model_spec.version.value = 123
    response = stub.GetModelMetadata(request, TIMEOUT)
    assert response.model_spec.name == "test_model"
    assert response.model_spec.version.value == 123
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString(
        (tfs_root() / TWO_VERSIONS / "00000123" / "saved_model.pb").read_bytes())
    assert dict(signature_map.signature_def) == dict(saved.meta_graphs[0].signature_def)


def status_request(name: str, version: int | None = None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return request


def test_get_model_status_impl_MissingOrEmptyModelSpecFailure(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    assert rpc_error(model_stub.GetModelStatus, request).code() == \
        grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.name = ""
    assert rpc_error(model_stub.GetModelStatus, request).code() == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_status_impl_InvalidModelNameAndVersionFailure(model_stub):
    assert rpc_error(model_stub.GetModelStatus, status_request("foo")).code() == \
        grpc.StatusCode.NOT_FOUND
    assert rpc_error(model_stub.GetModelStatus, status_request("test_model", 999)).code() == \
        grpc.StatusCode.NOT_FOUND


def test_get_model_status_impl_AllVersionsSuccess(model_stub):
    response = model_stub.GetModelStatus(status_request("test_model"), TIMEOUT)
    rows = sorted((s.version, s.state, s.status.error_code)
                  for s in response.model_version_status)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert rows == [(123, available, 0), (124, available, 0)]


def test_get_model_status_impl_SpecificVersionSuccess(model_stub):
    response = model_stub.GetModelStatus(status_request("test_model", 124), TIMEOUT)
    assert [s.version for s in response.model_version_status] == [124]


# -- util/json_tensor_test.cc (the REST side of tensors and tf.Examples) ------------------

@pytest.mark.parametrize("body, text", [
    ({"instances": [1, 2], "inputs": [1, 2]}, "instances"),  # both keys
    ({"signature_name": "serving_default"}, "instances"),  # neither key
    ({"instances": []}, "instances"),  # no values
    ({"instances": [[1.0], "x"]}, "rectangular"),  # mixed list and value
    ({"instances": ["x"]}, "not of expected type: float"),
])
def test_json_tensor_FillPredictRequestFromJson_errors(server, body, text):
    status, answer = server.post("/v1/models/default:predict", body)
    assert status == 400 and text in answer["error"], answer


@pytest.mark.parametrize("examples, text", [
    ([{"x": [1.0, "a"]}], "Unexpected element type in feature: x expecting type: float"),
    ([{"x": None}], "unexpected JSON type: Null"),
    ([{"x": [[1.0]]}], "unexpected JSON type: Array"),
    ([3], "Example must be JSON object"),
    ([], "'examples' value is an empty array"),
])
def test_json_tensor_FillClassificationRequestFromJson_errors(server, examples, text):
    status, answer = server.post("/v1/models/default:classify",
                                 {"signature_name": "classify_x_to_y", "examples": examples})
    assert status == 400 and text in answer["error"], answer


def test_json_tensor_ClassifyWithContext(server):
    # The context's features join each example; an example's own feature wins a clash.
    body = {"signature_name": "classify_x_to_y", "context": {"x": 10.0},
            "examples": [{"locale": "pt_BR"}, {"x": 20.0}]}
    assert server.post("/v1/models/default:classify", body) == (
        200, {"results": [[["", 7.0]], [["", 12.0]]]})


def test_json_tensor_IntegerIsInt64Feature(server):
    # 2 (no decimal point) is an int64 feature; the graph parses x as float and refuses it.
    status, answer = server.post("/v1/models/default:regress",
                                 {"signature_name": "regress_x_to_y", "examples": [{"x": 2}]})
    assert status == 400 and "float" in answer["error"]


# -- beyond TF Serving's files: the cases, TF1 and TF2 models, several tensors ---

def test_request_shape_goes_to_the_graph(server):
    # Signature shape [-1, 1]; TF Serving passes [3] to the graph, which computes it.
    assert server.post("/v1/models/half_plus_two:predict", {"instances": [2.0, 3.0, 4.0]}) == (
        200, {"predictions": [3.0, 3.5, 4.0]})
    # A shape the graph itself refuses: its error, INVALID_ARGUMENT, 400.
    status, answer = server.post("/v1/models/multi:predict",
                                 {"inputs": {"a": [1.0, 2.0], "b": [1, 2]}})
    assert status == 400 and answer["error"]


def test_unknown_signature_is_failed_precondition(server, stub):
    status, answer = server.post("/v1/models/default:predict",
                                 {"signature_name": "nope", "instances": [1.0]})
    assert (status, answer) == (400, {"error": "Serving signature key \"nope\" not found."})
    error = rpc_error(stub.Predict, predict_x(signature="nope"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Serving signature key \"nope\" not found."


def test_counter_with_reference_variables_keeps_state(server, stub):
    def call(signature: str, **inputs) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "counter"
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value, tf.float32))
        return stub.Predict(request, TIMEOUT).outputs["output"].float_val[0]

    assert call("reset_counter") == 0.0
    assert [call("incr_counter"), call("incr_counter")] == [1.0, 2.0]
    assert call("incr_counter_by", delta=3.0) == 5.0
    assert call("get_counter") == 5.0
    # Over REST, as in TF Serving, a signature without inputs cannot be called: the JSON is
    # read by the signature's inputs.
    status, answer = server.post("/v1/models/counter:predict", {"signature_name": "get_counter", "instances": [1]})
    assert (status, answer) == (400, {"error": "Failed to get input map for signature: get_counter"})


def test_tf2_export_serves_classify_and_predict(stub):
    verify_predict(stub, 3.0, 123, name="tf2", specify_output=False)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "tf2"
    request.model_spec.signature_name = "classify_x_to_y"
    add_example(request.input, x=2.0)
    assert stub.Classify(request, TIMEOUT).result.classifications[0].classes[0].score == 3.0


def test_tf2_metadata_lists_every_signature_def_as_tf_serving_does(server, setup, stub):
    # TF Serving's GetModelMetadata copies the MetaGraphDef's whole signature map, so a TF2
    # export's metadata shows the loader's `__saved_model_init_op` (a NoOp output, no method
    # name) beside the signatures it serves; only calling it is refused.
    status, body = server.get("/v1/models/tf2/metadata")
    listed = body["metadata"]["signature_def"]["signature_def"]
    assert status == 200 and {"__saved_model_init_op", "serving_default", "classify_x_to_y"} <= set(listed)
    assert listed["__saved_model_init_op"] == {"inputs": {}, "outputs": {"__saved_model_init_op": {
        "dtype": "DT_INVALID", "tensor_shape": {"dim": [], "unknown_rank": True}, "name": "NoOp"}},
        "method_name": "", "defaults": {}}
    on_disk = read_meta_graph(setup[0] / "saved_model_half_plus_two_tf2_cpu" / "00000123").signature_def
    assert sorted(listed) == sorted(on_disk)
    status, answer = server.post("/v1/models/tf2:predict", {"signature_name": "__saved_model_init_op",
                                                            "instances": [1.0]})
    # Calling it gets TF Serving's answers: REST cannot read JSON for a signature without
    # inputs (json_tensor.cc); gRPC refuses the inputs sent (predict_util.cc).
    assert (status, answer) == (400, {"error": "Failed to get input map for signature: __saved_model_init_op"})
    error = rpc_error(stub.Predict, predict_x("tf2", "__saved_model_init_op"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("input size does not match signature: 1!=0 len({x}) != len({}). "
                               "Sent extra: {x}. Missing but required: {}.")
    # Our clients list what can be called, from ours or TF Serving's metadata alike.
    callable_ones = sorted(set(on_disk) - {"__saved_model_init_op"})
    assert RestClient(server.url, "tf2").signatures == GrpcClient(server.grpc_target, "tf2").signatures == callable_ones


def test_multi_input_multi_output_model(server, stub):
    body = {"instances": [{"a": [1.0, 2.0], "b": 3}, {"a": [0.5, 0.5], "b": 1}]}
    assert server.post("/v1/models/multi:predict", body) == (200, {"predictions": [
        {"sum": 6.0, "label_bytes": {"b64": "Mw=="}},
        {"sum": 2.0, "label_bytes": {"b64": "MQ=="}}]})
    columnar = {"inputs": {"a": [[1.0, 2.0]], "b": [3]}}
    assert server.post("/v1/models/multi:predict", columnar) == (
        200, {"outputs": {"sum": [6.0], "label_bytes": [{"b64": "Mw=="}]}})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "multi"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto(np.array([[1.0, 2.0]], np.float32)))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto(np.array([3], np.int64)))
    response = stub.Predict(request, TIMEOUT)
    assert response.outputs["sum"].float_val == [6.0]
    assert response.outputs["label_bytes"].string_val == [b"3"]
    request.output_filter.append("sum")
    assert list(stub.Predict(request, TIMEOUT).outputs) == ["sum"]
    del request.inputs["b"]
    error = rpc_error(stub.Predict, request)
    assert "input size does not match signature: 1!=2" in error.details()


def test_broken_model_is_end_with_its_error_and_others_serve(server, model_stub, stub):
    response = model_stub.GetModelStatus(status_request("broken"), TIMEOUT)
    (row,) = response.model_version_status
    assert row.state == get_model_status_pb2.ModelVersionStatus.END
    assert row.status.error_code != 0 and row.status.error_message
    assert "no version of" in server.log() and "broken" in server.log()
    verify_predict(stub, 3.0, 123)


def test_outputs_as_tensor_content_with_the_flag(tmp_path):
    # One signature gets a method name that is none of TF Serving's three.
    shutil.copytree(tfs_root() / HALF_PLUS_TWO, tmp_path / "model")
    set_method_names(tmp_path / "model" / "00000123", {"regress_x_to_y2": "tensorflow/serving/custom"})
    server = start_server(tmp_path / "model", tmp_path / "server.log",
                          "--enable_serialization_as_tensor_content",
                          "--enable_signature_method_name_check", "--num_load_threads=2",
                          model_name="default")
    try:
        channel = grpc.insecure_channel(server.grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        output = stub.Predict(predict_x(), TIMEOUT).outputs["y"]
        assert not output.float_val and tf.make_ndarray(output).tolist() == [3.0]
        # With the method name check on, a regress signature is no classifier.
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = "regress_x_to_y"
        add_example(request.input, x=2.0)
        error = rpc_error(stub.Classify, request)
        assert "Expected classification signature method_name" in error.details()
        # Predict serves predict, classify and regress signatures, and with the check on
        # nothing else: TF Serving's INTERNAL error, over gRPC and REST alike.
        example = tf.train.Example()
        example.features.feature["x"].float_list.value.append(2.0)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = "regress_x_to_y"
        request.inputs["inputs"].CopyFrom(tf.make_tensor_proto([example.SerializeToString()]))
        assert tf.make_ndarray(stub.Predict(request, TIMEOUT).outputs["outputs"]).tolist() == [[3.0]]
        request.model_spec.signature_name = "regress_x_to_y2"
        error = rpc_error(stub.Predict, request)
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details() == ("Expected prediction signature method_name to be one of "
                                   "{tensorflow/serving/predict, tensorflow/serving/classify, "
                                   "tensorflow/serving/regress}. Was: tensorflow/serving/custom")
        status, body = server.post("/v1/models/default:predict", {
            "signature_name": "regress_x_to_y2", "instances": [{"b64": ""}]})
        assert status == 500 and body["error"] == error.details()
        assert "--num_load_threads=2 is accepted for TF Serving compatibility but not " \
            "implemented" in server.log()
    finally:
        stop_server(server)


def test_model_server_testModelConfigReload(setup, stub):
    # Last in this module: it replaces the served models, as the TF Serving test does.
    root, _, config, _, server = setup
    write_config(config, [f'name: "half_plus_three" base_path: '
                          f'"{root / "saved_model_half_plus_three"}"'])
    deadline = time.monotonic() + 60
    while server.get("/v1/models/default")[0] != 404 and time.monotonic() < deadline:
        time.sleep(0.5)
    verify_predict(stub, 4.0, 123, name="half_plus_three", specify_output=False)
    assert server.get("/v1/models/default")[0] == 404
