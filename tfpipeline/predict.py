"""Classify image files with an exported model, locally or through a running server.

    python -m tfpipeline.predict digit.png other.jpg --model-dir exported/mnist
    python -m tfpipeline.predict digit.png --server http://127.0.0.1:8501 [--model-name mnist]
    python -m tfpipeline.predict digit.png --grpc 127.0.0.1:8500 [--model-name mnist]
    python -m tfpipeline.predict --tflite exported/mnist/1/model_int8.tflite digit.png

A model with a `serving_bytes` signature (every export since issue 14) gets the files' bytes
as they are: the model decodes and resizes them itself, exactly as in training. An older
model (or --signature-name serving_default) gets pixels: images are converted here to the
signature's input, grayscale or RGB by its channel count and resized to its height and width.
Prints one line per file: class and its probability.
The --server mode talks plain TF Serving REST, so it works against TF Serving itself too,
and does not import TensorFlow. The --grpc mode uses TF Serving's published gRPC client
(tensorflow-serving-api's PredictionServiceStub), so it works against TF Serving too.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfpipeline import argtypes
from tfpipeline.errors import UserError

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_CHUNK = 256  # examples per request/call: stays under the server's --max-instances default


@dataclass
class InputSpec:
    """What the signature's single input wants: (height, width, channels), None = any."""

    name: str
    height: int | None
    width: int | None
    channels: int | None
    dtype: str  # numpy dtype name


def load_image(path: Path, spec: InputSpec) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = _MODES.get(spec.channels or 1)
            if mode is None:
                raise UserError(f"The model wants {spec.channels} channels; images have 1, 3 or 4")
            image = image.convert(mode)
            size = (spec.width or image.width, spec.height or image.height)
            if image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            pixels = np.asarray(image)
    except (FileNotFoundError, IsADirectoryError, UnidentifiedImageError, OSError) as exc:
        raise UserError(f"Cannot read image {path}: {exc}") from None
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    return pixels.astype(spec.dtype)


def _spec_from_dims(name: str, dims: list[int | None], dtype: str) -> InputSpec:
    if len(dims) != 4:
        raise UserError(
            f"Input '{name}' has shape {dims}; this command handles image inputs [batch, H, W, C]")
    height, width, channels = dims[1:]
    return InputSpec(name, height, width, channels, dtype)


def _classify(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Class and its probability per example, from `classes` + `probabilities` if present."""
    if "probabilities" in outputs:
        probabilities = np.asarray(outputs["probabilities"], dtype=np.float64)
    elif len(outputs) == 1:
        probabilities = np.asarray(next(iter(outputs.values())), dtype=np.float64)
    else:
        raise UserError(f"Cannot tell which output holds probabilities: {sorted(outputs)}")
    if "classes" in outputs:
        classes = np.asarray(outputs["classes"]).astype(np.int64).reshape(-1)
    else:
        classes = probabilities.argmax(-1)
    return classes, probabilities[np.arange(len(classes)), classes]


# -- through a server ---------------------------------------------------------------------

_DTYPES = {"DT_UINT8": "uint8", "DT_FLOAT": "float32", "DT_DOUBLE": "float64",
           "DT_INT32": "int32", "DT_INT64": "int64"}


class ServerModel:
    def __init__(self, server: str, model_name: str, signature: str = "serving_default"):
        self.base = f"{server.rstrip('/')}/v1/models/{model_name}"
        self.signature = signature
        metadata = self._call(self.base + "/metadata")
        try:
            sig = metadata["metadata"]["signature_def"]["signature_def"][signature]
            (name, info), = sig["inputs"].items()
        except (KeyError, ValueError):
            raise UserError(f"Signature {signature} with a single input not found at {self.base}")
        dims = [int(d["size"]) for d in info["tensor_shape"]["dim"]]
        dims = [None if d < 0 else d for d in dims]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise UserError(f"Input '{name}' is {info['dtype']}; images need a numeric input")
        self.spec = _spec_from_dims(name, dims, dtype)

    def _call(self, url: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            raise UserError(f"Server answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"Cannot reach the server at {url}: {reason}") from None

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        payload = {"signature_name": self.signature, "inputs": {self.spec.name: batch.tolist()}}
        outputs = self._call(self.base + ":predict", payload)["outputs"]
        if not isinstance(outputs, dict):  # a single output is given without its name
            outputs = {"probabilities": outputs}
        return {k: np.asarray(v) for k, v in outputs.items()}


# -- through a server's gRPC API ------------------------------------------------------------

class GrpcModel:
    """TF Serving's gRPC PredictionService: metadata for the input, Predict with raw
    tensor_content both ways (no JSON)."""

    def __init__(self, target: str, model_name: str, signature: str = "serving_default"):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

        self._grpc, self._tf = grpc, tf
        self.target, self.model_name, self.signature = target, model_name, signature
        self._channel = grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model_name
        response = self._call(self._stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        if signature not in signature_map.signature_def:
            raise UserError(f"Signature {signature} not found on {target} for model {model_name}")
        inputs = signature_map.signature_def[signature].inputs
        if len(inputs) != 1:
            raise UserError(f"Signature {signature} has {len(inputs)} inputs; images need one")
        (name, info), = inputs.items()
        dtype = tf.dtypes.as_dtype(info.dtype)
        if not (dtype.is_integer or dtype.is_floating):
            raise UserError(f"Input '{name}' is {dtype.name}; images need a numeric input")
        dims = [None if d.size < 0 else d.size for d in info.tensor_shape.dim]
        self.spec = _spec_from_dims(name, dims, np.dtype(dtype.as_numpy_dtype).name)

    def _call(self, method, request):
        try:
            return method(request, timeout=60)
        except self._grpc.RpcError as exc:
            raise UserError(f"gRPC server at {self.target} answered {exc.code().name}: "
                            f"{exc.details()}") from None

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = self.signature
        request.inputs[self.spec.name].CopyFrom(self._tf.make_tensor_proto(batch))
        response = self._call(self._stub.Predict, request)
        return {k: self._tf.make_ndarray(v) for k, v in response.outputs.items()}


# -- encoded files to serving_bytes --------------------------------------------------------

BYTES_SIGNATURE = "serving_bytes"


def read_file_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read image {path}: {exc.strerror or exc}") from None
    if not data:
        raise UserError(f"Image {path} is empty (0 bytes)")
    return data


class ServerBytesModel:
    """`serving_bytes` on a TF Serving REST server: files sent as `{"b64": ...}` strings."""

    _call = ServerModel._call  # the same HTTP errors and timeouts as the pixel mode

    def __init__(self, base: str, input_name: str):
        self.base, self.input_name = base, input_name

    @classmethod
    def find(cls, server: str, model_name: str) -> "ServerBytesModel | None":
        """The server's model if it has a string `serving_bytes` signature, else None."""
        base = f"{server.rstrip('/')}/v1/models/{model_name}"
        metadata = cls._call(None, base + "/metadata")
        try:
            sig = metadata["metadata"]["signature_def"]["signature_def"][BYTES_SIGNATURE]
            (name, info), = sig["inputs"].items()
        except (KeyError, ValueError, TypeError):
            return None
        return cls(base, name) if info.get("dtype") == "DT_STRING" else None

    def predict(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
        # Columnar ("inputs") names the input; TF Serving's REST API reads {"b64": ...} as bytes.
        values = [{"b64": base64.b64encode(data).decode("ascii")} for data in encoded]
        payload = {"signature_name": BYTES_SIGNATURE, "inputs": {self.input_name: values}}
        outputs = self._call(self.base + ":predict", payload)["outputs"]
        if not isinstance(outputs, dict):
            outputs = {"probabilities": outputs}
        return {k: np.asarray(v) for k, v in outputs.items()}


class LocalBytesModel:
    """`serving_bytes` of an exported model, in this process."""

    def __init__(self, signature):
        self.signature = signature
        (self.input_name,) = signature.inputs

    @classmethod
    def find(cls, model_dir: Path) -> "LocalBytesModel | None":
        """The model's `serving_bytes` signature if it has one, else None."""
        from tfpipeline.serving.versions import discover_versions

        if not model_dir.is_dir():
            raise UserError(f"Model directory {model_dir} does not exist")
        versions = discover_versions(model_dir)
        if versions:
            path = versions[max(versions)]
        elif (model_dir / "saved_model.pb").is_file():
            path = model_dir
        else:
            raise UserError(f"No SavedModel versions under {model_dir} (expected {model_dir}/1/)")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        from tfpipeline.serving.servable import describe_signature

        root = tf.saved_model.load(str(path))
        if BYTES_SIGNATURE not in root.signatures:
            return None
        model = cls(describe_signature(BYTES_SIGNATURE, root.signatures[BYTES_SIGNATURE]))
        model.root = root  # keeps the variables alive
        return model

    def predict(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        try:
            return self.signature({self.input_name: np.array(encoded, dtype=object)})
        except tf.errors.InvalidArgumentError as exc:
            raise UserError(f"The model cannot decode an image: {exc.message.strip().splitlines()[-1]}") from None


def predict_bytes(model, paths: list[Path]) -> None:
    """Send each file's bytes to `serving_bytes` (any size: the model resizes) and print its class."""
    for start in range(0, len(paths), _CHUNK):
        chunk = paths[start:start + _CHUNK]
        classes, probabilities = _classify(model.predict([read_file_bytes(p) for p in chunk]))
        for path, cls, prob in zip(chunk, classes, probabilities):
            print(f"{path}: class {int(cls)} (probability {prob:.4f})")


def find_bytes_model(args: argparse.Namespace):
    """The model's serving_bytes, unless another signature was asked for; None if it has none."""
    if args.signature_name not in (None, BYTES_SIGNATURE) or getattr(args, "tflite", None):
        return None  # a TFLite file has the pixel signature only
    if args.grpc:
        return None  # over gRPC, pixels go as raw tensor_content (no JSON to save)
    if args.server:
        model = ServerBytesModel.find(args.server, args.model_name)
    else:
        model = LocalBytesModel.find(args.model_dir)
    if model is None and args.signature_name == BYTES_SIGNATURE:
        raise UserError(f"The model has no {BYTES_SIGNATURE} signature taking a string input")
    return model


# -- in this process ----------------------------------------------------------------------

class LocalModel:
    def __init__(self, model_dir: Path, signature: str = "serving_default"):
        from tfpipeline.serving.versions import discover_versions

        if not model_dir.is_dir():
            raise UserError(f"Model directory {model_dir} does not exist")
        versions = discover_versions(model_dir)
        if versions:
            version = max(versions)
            path = versions[version]
        elif (model_dir / "saved_model.pb").is_file():  # a version directory itself
            version, path = 0, model_dir
        else:
            raise UserError(f"No SavedModel versions under {model_dir} (expected {model_dir}/1/)")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from tfpipeline.serving.servable import load_servable

        servable = load_servable(path, version)
        if signature not in servable.signatures:
            raise UserError(f"{path} has no signature {signature}")
        self.signature = servable.signatures[signature]
        if len(self.signature.inputs) != 1:
            raise UserError(f"Signature {signature} has several inputs; images need one")
        (info,) = self.signature.inputs.values()
        if info.shape is None:
            raise UserError(f"Input '{info.name}' has unknown rank")
        self.spec = _spec_from_dims(info.name, list(info.shape), info.dtype.name)

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.signature({self.spec.name: batch})


# -- an int8 .tflite under LiteRT (issue 17, tfpipeline/quantize.py) -------------------------

class TFLiteFileModel:
    """`model_int8.tflite` (--export-tflite) run by the LiteRT interpreter; no TensorFlow."""

    def __init__(self, path: Path):
        from tfpipeline.export.tflite import LiteRTModel

        if not path.is_file():
            raise UserError(f"TFLite model {path} does not exist (--export-tflite writes <version>/model_int8.tflite)")
        try:
            self.model = LiteRTModel(path)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"Cannot load {path} as a TFLite model: {exc}") from None
        dims = [None if d < 0 else d for d in self.model.input_shape]
        self.spec = _spec_from_dims(self.model.input_name, dims, self.model.input_dtype.name)

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.model.predict(batch)


# -- --explain: the attribution overlay (issue 17, tfpipeline/explain.py) ---------------------

def explain_image(model_dir: Path | None, image_path: Path, out: Path) -> str:
    """Write `out`: the image beside its integrated-gradients map for the predicted class,
    computed on the exported version's model (the highest under --model-dir, or that version)."""
    if model_dir is None:
        raise UserError("--explain computes gradients through the model itself: give --model-dir "
                        "(not --server or --tflite)")
    from tfpipeline.serving.versions import discover_versions

    if not model_dir.is_dir():
        raise UserError(f"Model directory {model_dir} does not exist")
    versions = discover_versions(model_dir)
    version_dir = versions[max(versions)] if versions else model_dir
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfpipeline.report import explain

    model = explain.load_exported(version_dir)
    height, width, channels = model.input_shape[1:]
    image = load_image(image_path, InputSpec("images", height, width, channels, "uint8"))
    names = json.loads((Path(version_dir) / "metadata.json").read_text())["dataset"]["class_names"]
    predicted, probability = explain.overlay_png(model, image, out, names)
    return (f"{image_path}: class {names[predicted]} (probability {probability:.4f}); "
            f"attributions written to {out}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tfpipeline.predict",
                                description="Print the predicted class of each image file.")
    p.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-dir", type=Path,
                       help="exported base path (its highest version is used) or a version dir")
    where.add_argument("--server", help="TF Serving REST address, e.g. http://127.0.0.1:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", type=argtypes.host_port,
                       help="TF Serving gRPC address, e.g. 127.0.0.1:8500")
    where.add_argument("--tflite", type=Path, metavar="FILE",
                       help="an int8 model_int8.tflite (--export-tflite), run with the LiteRT interpreter")
    p.add_argument("--model-name", default="mnist", help="model name on the server (default mnist)")
    p.add_argument("--signature-name", default=None,
                   help=f"{BYTES_SIGNATURE} (the files' bytes; the default when the model has it) or "
                        "serving_default (pixels converted here)")
    p.add_argument("--explain", type=Path, metavar="OUT.png",
                   help="with --model-dir and one image: write the image beside its integrated-gradients "
                        "attribution map for the predicted class (docs/explanations.md)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.explain is not None:
            if len(args.images) != 1:
                raise UserError(f"--explain writes one picture: give one image, not {len(args.images)}")
            print(explain_image(args.model_dir, args.images[0], args.explain))
            return 0
        bytes_model = find_bytes_model(args)
        if bytes_model is not None:
            predict_bytes(bytes_model, args.images)
            return 0
        signature = args.signature_name or "serving_default"
        if args.grpc:
            model = GrpcModel(args.grpc, args.model_name, signature)
        elif args.server:
            model = ServerModel(args.server, args.model_name, signature)
        elif args.tflite:
            model = TFLiteFileModel(args.tflite)
        else:
            model = LocalModel(args.model_dir, signature)
        images = [load_image(path, model.spec) for path in args.images]
        # Images can only share a batch when the model fixes their size.
        step = _CHUNK if model.spec.height and model.spec.width else 1
        for start in range(0, len(images), step):
            chunk = args.images[start:start + step]
            classes, probabilities = _classify(model.predict(np.stack(images[start:start + step])))
            for path, cls, prob in zip(chunk, classes, probabilities):
                print(f"{path}: class {int(cls)} (probability {prob:.4f})")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
