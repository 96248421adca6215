"""Clients for a model's signatures, wherever it runs: in this process, TF Serving's REST or
gRPC API (ours or TF Serving's own), or a .tflite file under LiteRT.

Each client knows transport only: which signatures the model has, what each one's inputs are
(`inputs.InputInfo`), and how to call one with a dict of named arrays. What goes into those
arrays (pixels, a file's bytes, text) is the input spec's business (`InputSpec.read`), so the
clients serve every kind of input alike. Values are sent as their dtype says: bytes over REST
as `{"b64": ...}`, str as plain JSON strings, numbers as JSON numbers; over gRPC as tensor
protos (DT_STRING for bytes and str).

Neither the REST client nor the TFLite client imports TensorFlow.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tfpipeline import signatures as names
from tfpipeline.errors import UserError
from tfpipeline.inputs import InputInfo

# TF Serving's DataType names → NumPy, for the metadata a REST server reports.
_DTYPES = {"DT_UINT8": "uint8", "DT_INT8": "int8", "DT_INT16": "int16", "DT_FLOAT": "float32",
           "DT_DOUBLE": "float64", "DT_HALF": "float16", "DT_INT32": "int32", "DT_INT64": "int64",
           "DT_BOOL": "bool", "DT_STRING": "object"}
_TIMEOUT = 60  # seconds for one call


def latest_version_dir(model_dir: Path) -> tuple[int, Path]:
    """The highest version under an export base, or `model_dir` itself when it is a version.

    Returns:
        (version number, its folder); the number is 0 for a bare version folder.

    Raises:
        UserError: `model_dir` does not exist or holds no version.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"Model directory {model_dir} does not exist")
    versions = names.version_dirs(model_dir)
    if versions:
        latest = max(versions)
        return latest, versions[latest]
    if (model_dir / "saved_model.pb").is_file():  # a version directory itself
        return 0, model_dir
    raise UserError(f"No SavedModel versions under {model_dir} (expected {model_dir}/1/)")


def _missing(signature: str, available, where: str) -> UserError:
    return UserError(f"Signature {signature} not found {where} (it has {', '.join(sorted(available))})")


# -- in this process ----------------------------------------------------------------------------

class LocalClient:
    """The latest version under an export base (or a version folder), loaded with TensorFlow."""

    def __init__(self, model_dir: Path):
        version, self.path = latest_version_dir(model_dir)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        from tfpipeline.serving.servable import load_servable

        self._tf = tf
        try:
            # The server's own loader, so a local prediction runs the model as served.
            self._servable = load_servable(self.path, version)  # keeps the session alive
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise UserError(f"Cannot load the SavedModel in {self.path}: {str(exc).strip().splitlines()[0]}") from None
        self._signatures = self._servable.signatures
        self.signatures = sorted(self._signatures)
        self.where = str(self.path)

    def metadata(self) -> dict | None:
        """The version's metadata.json, None if it has none (not exported by the pipeline)."""
        try:
            return json.loads((self.path / "metadata.json").read_text())
        except (OSError, ValueError):
            return None

    def inputs(self, signature: str) -> dict[str, InputInfo]:
        if signature not in self._signatures:
            raise _missing(signature, self._signatures, f"in {self.path}")
        return {k: InputInfo(k, v.dtype, v.shape) for k, v in self._signatures[signature].inputs.items()}

    def predict(self, signature: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._signatures[signature](arrays)
        except self._tf.errors.InvalidArgumentError as exc:
            raise UserError(f"The model refused the input: {exc.message.strip().splitlines()[-1]}") from None


# -- TF Serving's REST API ----------------------------------------------------------------------

class RestClient:
    """A model on a TF Serving REST server: /metadata for its signatures, :predict to call one."""

    def __init__(self, server: str, model_name: str):
        self.base = f"{server.rstrip('/')}/v1/models/{model_name}"
        self.where = f"at {self.base}"
        metadata = self._call(self.base + "/metadata")
        try:
            self._defs = metadata["metadata"]["signature_def"]["signature_def"]
        except (KeyError, TypeError):
            raise UserError(f"The server at {self.base} did not describe the model's signatures") from None
        self.signatures = sorted(set(self._defs) - names.LOADER_SIGNATURES)

    def metadata(self) -> dict | None:
        return None  # a server does not publish our metadata.json

    def _call(self, url: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
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

    def inputs(self, signature: str) -> dict[str, InputInfo]:
        if signature not in self._defs:
            raise _missing(signature, self._defs, self.where)
        described = {}
        for name, info in self._defs[signature].get("inputs", {}).items():
            shape = info.get("tensor_shape", {})
            dims = None if shape.get("unknown_rank") else tuple(
                None if int(d["size"]) < 0 else int(d["size"]) for d in shape.get("dim", []))
            dtype = _DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise UserError(f"Input '{name}' of {signature} is {info.get('dtype')}, which this command cannot send")
            described[name] = InputInfo(name, np.dtype(dtype), dims)
        return described

    def predict(self, signature: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Columnar ("inputs") names each input; TF Serving's REST API reads {"b64": ...} as bytes.
        payload = {"signature_name": signature, "inputs": {k: _to_json(v) for k, v in arrays.items()}}
        outputs = self._call(self.base + ":predict", payload)["outputs"]
        if not isinstance(outputs, dict):  # a single output is given without its name
            outputs = {names.PROBABILITIES: outputs}
        return {k: np.asarray(v) for k, v in outputs.items()}


def _to_json(array: np.ndarray):
    """An array as TF Serving's REST API reads it: bytes as {"b64": ...}, the rest as JSON values."""
    if array.dtype.kind in "OS":
        return _nested(array, lambda v: {"b64": base64.b64encode(v).decode("ascii")} if isinstance(v, bytes) else v)
    return array.tolist()


def _nested(value, convert):
    if isinstance(value, np.ndarray):  # iterating an object array gives its elements themselves
        return [_nested(row, convert) for row in value] if value.ndim else convert(value.item())
    return convert(value)


# -- TF Serving's gRPC API ----------------------------------------------------------------------

class GrpcClient:
    """A model on a TF Serving gRPC server (tensorflow-serving-api's PredictionServiceStub):
    GetModelMetadata for its signatures, Predict with tensor protos both ways (no JSON)."""

    def __init__(self, target: str, model_name: str):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

        self._grpc, self._tf = grpc, tf
        self.target, self.model_name = target, model_name
        self.where = f"on {target} for model {model_name}"
        self._channel = grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model_name
        response = self._call(self._stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        self._defs = dict(signature_map.signature_def)
        self.signatures = sorted(set(self._defs) - names.LOADER_SIGNATURES)

    def metadata(self) -> dict | None:
        return None

    def _call(self, method, request):
        try:
            return method(request, timeout=_TIMEOUT)
        except self._grpc.RpcError as exc:
            raise UserError(f"gRPC server at {self.target} answered {exc.code().name}: {exc.details()}") from None

    def inputs(self, signature: str) -> dict[str, InputInfo]:
        if signature not in self._defs:
            raise _missing(signature, self._defs, self.where)
        described = {}
        for name, info in self._defs[signature].inputs.items():
            dtype = self._tf.dtypes.as_dtype(info.dtype)
            dims = None if info.tensor_shape.unknown_rank else tuple(
                None if d.size < 0 else d.size for d in info.tensor_shape.dim)
            described[name] = InputInfo(name, np.dtype(object if dtype == self._tf.string else dtype.as_numpy_dtype),
                                        dims)
        return described

    def predict(self, signature: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        for name, value in arrays.items():  # object arrays of bytes or str become DT_STRING
            request.inputs[name].CopyFrom(self._tf.make_tensor_proto(value))
        response = self._call(self._stub.Predict, request)
        return {k: self._tf.make_ndarray(v) for k, v in response.outputs.items()}


# -- a .tflite file under LiteRT ----------------------------------------------------------------

class LiteRTModel:
    """A .tflite file run by the LiteRT interpreter (`ai-edge-litert`, the runtime a device uses)
    through one of its signatures; no TensorFlow.

    Args:
        path_or_content: the .tflite file, or its bytes.
        num_threads: the interpreter's threads (None: its default).
        signature: the signature to run; `--export-tflite` writes `serving_default` only.

    Raises:
        UserError: LiteRT is not installed, or the file has no such signature.
    """

    def __init__(self, path_or_content: Path | bytes, num_threads: int | None = None,
                 signature: str = names.DEFAULT):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise UserError(f"Running a .tflite model needs the LiteRT interpreter, which is not installed ({exc}). "
                            "Install it with: pip install 'tfpipeline[tflite]' (the ai-edge-litert package).") from None
        source = {"model_content": path_or_content} if isinstance(path_or_content, bytes) else {
            "model_path": str(path_or_content)}
        self.interpreter = Interpreter(**source, num_threads=num_threads)
        self.signatures = sorted(self.interpreter.get_signature_list())
        if signature not in self.signatures:
            raise UserError(f"The TFLite model has no signature {signature} (it has {', '.join(self.signatures)}); "
                            f"--export-tflite writes {names.DEFAULT} only.")
        self.signature = signature
        self.runner = self.interpreter.get_signature_runner(signature)
        self.inputs = {name: InputInfo(name, np.dtype(details["dtype"]),
                                       tuple(None if d < 0 else int(d) for d in details["shape_signature"]))
                       for name, details in self.runner.get_input_details().items()}

    def predict(self, arrays: dict[str, np.ndarray], batch_size: int = 500) -> dict[str, np.ndarray]:
        """Run the signature on named input arrays, `batch_size` rows per call."""
        rows = len(next(iter(arrays.values())))
        outputs: dict[str, list[np.ndarray]] = {}
        for start in range(0, rows, batch_size):
            batch = {name: np.ascontiguousarray(value[start:start + batch_size]) for name, value in arrays.items()}
            for key, value in self.runner(**batch).items():
                outputs.setdefault(key, []).append(np.array(value))
        return {key: np.concatenate(parts) for key, parts in outputs.items()}


class TFLiteClient:
    """`model_int8.tflite` (--export-tflite) as a client; its version's metadata.json, when it sits
    beside the file, gives the input spec."""

    def __init__(self, path: Path, signature: str = names.DEFAULT):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"TFLite model {path} does not exist (--export-tflite writes <version>/model_int8.tflite)")
        try:
            self.model = LiteRTModel(path, signature=signature)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"Cannot load {path} as a TFLite model: {exc}") from None
        self.path, self.signatures, self.where = path, self.model.signatures, str(path)

    def metadata(self) -> dict | None:
        try:
            return json.loads((self.path.parent / "metadata.json").read_text())
        except (OSError, ValueError):
            return None

    def inputs(self, signature: str) -> dict[str, InputInfo]:
        if signature != self.model.signature:
            raise _missing(signature, self.signatures, f"in {self.path}")
        return self.model.inputs

    def predict(self, signature: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.predict(arrays)
