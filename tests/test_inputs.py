"""The input spec: records round-trip, the image spec is found from a signature, and `predict`
turns files into the request the chosen signature takes, whatever the transport."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from tfpipeline import export, inputs, predict, signatures
from tfpipeline.errors import UserError
from tfpipeline.inputs import InputInfo
from tfpipeline.inputs.image import ImageInput
from tfpipeline.serving import clients

PIXELS = InputInfo("images", np.dtype("uint8"), (None, 28, 28, 1))
BYTES = InputInfo("image_bytes", np.dtype(object), (None,))


def test_a_spec_round_trips_through_its_record():
    spec = ImageInput(28, 28, 1)
    assert spec.to_json() == {"kind": "image", "height": 28, "width": 28, "channels": 1}
    assert inputs.from_json(spec.to_json()) == spec
    assert "image" in inputs.kinds()
    with pytest.raises(ValueError, match="Unknown input kind 'sound'"):
        inputs.from_json({"kind": "sound"})


def test_the_dataset_spec_records_its_input_beside_the_input_shape():
    from tfpipeline.data import DatasetSpec

    spec = DatasetSpec("d", "1", (8, 8, 3), ImageInput(8, 8, 3), 2, ("a", "b"), {}, {})
    record = spec.to_json()
    assert record["input_shape"] == (8, 8, 3) and inputs.from_json(record["input"]) == spec.input


def test_a_spec_is_found_from_a_signature_without_metadata():
    assert inputs.from_signature({"images": PIXELS}) == ImageInput(28, 28, 1)
    assert inputs.from_signature({"text": BYTES}).kind == "text"  # one string [batch]: documents
    columns = {"island": InputInfo("island", np.dtype(object), (None,)),
               "mass": InputInfo("mass", np.dtype("float32"), (None,))}
    table = inputs.from_signature(columns)
    assert table.kind == "table" and [(c.name, c.dtype) for c in table.features] == [("island", "string"),
                                                                                      ("mass", "float32")]
    with pytest.raises(UserError, match="Cannot tell what serving_default"):
        inputs.from_signature({"volume": InputInfo("volume", np.dtype("float32"), (None, 8, 8))})


def _png(path, seed=0, size=28):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_image_files_become_bytes_or_pixels_as_the_signature_takes_them(tmp_path):
    files = [str(_png(tmp_path / "a.png")), str(_png(tmp_path / "b.png", 1, size=40))]
    spec = ImageInput(28, 28, 1)
    labels, request = spec.read(files, {"image_bytes": BYTES})
    assert labels == files and list(request["image_bytes"]) == [open(f, "rb").read() for f in files]
    _, request = spec.read(files, {"images": PIXELS})
    assert request["images"].shape == (2, 28, 28, 1) and request["images"].dtype == np.uint8
    assert spec.choose_signature(["serving_default", "serving_bytes"]) == "serving_bytes"
    assert spec.choose_signature(["serving_default"]) == "serving_default"


def test_one_rule_for_a_version_folder(tmp_path):
    for name in ("1", "7", ".tmp-3", "candidates", "²"):
        (tmp_path / name).mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"")
    assert sorted(signatures.version_dirs(tmp_path)) == export.versions(tmp_path) == [1, 7]
    assert clients.latest_version_dir(tmp_path) == (7, tmp_path / "7")


def test_warmup_requests_must_fit_the_savedmodel(tmp_path):
    import keras

    from tfpipeline.export import warmup

    inputs_ = keras.Input((4, 4, 1), dtype="uint8", name="images")
    model = keras.Model(inputs_, keras.layers.Dense(2)(keras.layers.Flatten()(inputs_)))
    spec = ImageInput(4, 4, 1)
    export.write_savedmodel(model, spec, tmp_path)
    images = np.zeros((2, 4, 4, 1), np.uint8)
    logs = warmup.build_requests(tmp_path, spec.warmup_requests(images))
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["serving_bytes", "serving_default"]
    with pytest.raises(ValueError, match="has no signature serving_text"):
        warmup.build_requests(tmp_path, {"serving_text": {"text": images}})


# -- predict through each transport -------------------------------------------------------------

def _rest_metadata():
    def info(dtype, dims):
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d)} for d in dims], "unknown_rank": False}}

    return {"metadata": {"signature_def": {"signature_def": {
        "serving_default": {"inputs": {"images": info("DT_UINT8", [-1, 28, 28, 1])}},
        "serving_bytes": {"inputs": {"image_bytes": info("DT_STRING", [-1])}},
    }}}}


@pytest.mark.parametrize("signature", [None, "serving_bytes"])
def test_predict_over_rest_sends_the_files_bytes_to_serving_bytes(tmp_path, monkeypatch, capsys, signature):
    sent = []

    def call(self, url, payload=None):
        if payload is None:
            return _rest_metadata()
        sent.append(payload)
        return {"outputs": {"classes": [3], "probabilities": [[0.1, 0.2, 0.3, 0.4]]}}

    monkeypatch.setattr(clients.RestClient, "_call", call)
    path = _png(tmp_path / "digit.png")
    argv = [str(path), "--server", "http://model"] + (["--signature-name", signature] if signature else [])
    assert predict.main(argv) == 0
    (payload,) = sent
    assert payload["signature_name"] == "serving_bytes"
    assert payload["inputs"] == {"image_bytes": [{"b64": base64.b64encode(path.read_bytes()).decode()}]}
    assert capsys.readouterr().out == f"{path}: class 3 (probability 0.4000)\n"


def test_predict_over_grpc_sends_the_files_bytes_to_serving_bytes(tmp_path, monkeypatch, capsys):
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, key, dtype, dims in (("serving_default", "images", tf.uint8, [-1, 28, 28, 1]),
                                   ("serving_bytes", "image_bytes", tf.string, [-1])):
        tensor = meta_graph_pb2.TensorInfo(dtype=dtype.as_datatype_enum)
        tensor.tensor_shape.dim.extend([tensor.tensor_shape.Dim(size=d) for d in dims])
        signature_map.signature_def[name].inputs[key].CopyFrom(tensor)
    sent = []

    class Stub:
        def __init__(self, channel):
            pass

        def GetModelMetadata(self, request, timeout):  # noqa: N802 (the gRPC method's name)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.metadata["signature_def"].Pack(signature_map)
            return response

        def Predict(self, request, timeout):  # noqa: N802
            sent.append(request)
            response = predict_pb2.PredictResponse()
            response.outputs["classes"].CopyFrom(tf.make_tensor_proto(np.array([2], np.int64)))
            response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(np.array([[0.2, 0.1, 0.7]], np.float32)))
            return response

    monkeypatch.setattr(prediction_service_pb2_grpc, "PredictionServiceStub", Stub)
    path = _png(tmp_path / "digit.png")
    assert predict.main([str(path), "--grpc", "127.0.0.1:1", "--signature-name", "serving_bytes"]) == 0
    (request,) = sent
    assert request.model_spec.signature_name == "serving_bytes"
    tensor = request.inputs["image_bytes"]
    assert tensor.dtype == tf.string.as_datatype_enum and list(tensor.string_val) == [path.read_bytes()]
    assert "class 2 (probability 0.7000)" in capsys.readouterr().out
    sent.clear()  # without --signature-name, gRPC keeps sending pixels to serving_default
    assert predict.main([str(path), "--grpc", "127.0.0.1:1"]) == 0
    assert sent[0].model_spec.signature_name == "serving_default" and "images" in sent[0].inputs


def test_predict_refuses_a_signature_the_tflite_file_lacks(tmp_path, monkeypatch, capsys):
    class FakeLiteRT:
        def __init__(self, path, signature="serving_default"):
            self.signatures, self.signature = ["serving_default"], signature
            self.inputs = {"images": PIXELS}

    monkeypatch.setattr(clients, "LiteRTModel", FakeLiteRT)
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(b"")
    image = _png(tmp_path / "digit.png")
    assert predict.main([str(image), "--tflite", str(model), "--signature-name", "serving_bytes"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Signature serving_bytes not found" in err and "serving_default" in err


def test_explain_refuses_a_signature_name(tmp_path, capsys):
    code = predict.main([str(tmp_path / "x.png"), "--model-dir", str(tmp_path), "--signature-name", "serving_bytes",
                         "--explain", str(tmp_path / "o.png")])
    assert code == 2 and "leave out --signature-name" in " ".join(capsys.readouterr().err.split())
