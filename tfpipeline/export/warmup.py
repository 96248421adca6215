"""TF Serving's warm-up file: `<SavedModel>/assets.extra/tf_serving_warmup_requests`.

The file is a TFRecord of `tensorflow.serving.PredictionLog` protos. TF Serving (and our own
server, tfpipeline.serving) replays them when it loads a version and reports the version
AVAILABLE only after, so the first real request does not pay for graph tracing and lazy
initialisation. The writer knows no kind of input: it writes one `PredictLog` per request it
is given (the input spec's `warmup_requests`: signature name → its inputs, built from a few
real test examples), after checking each names a signature and inputs the SavedModel has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving reads at most this many


def warmup_path(savedmodel_dir: Path) -> Path:
    return Path(savedmodel_dir) / WARMUP_DIR / WARMUP_FILE


def read_meta_graph(path: Path):
    """The SavedModel's serving MetaGraphDef (tagged "serve", else the first one), read from
    saved_model.pb (or .pbtxt) without loading anything: its SignatureDefs name every input
    a warm-up request must give, and the server serves and describes them (`tfpipeline.serving`).

    Raises:
        ValueError: the file holds no MetaGraph.
    """
    saved_model = saved_model_pb2.SavedModel()
    pb, pbtxt = Path(path) / "saved_model.pb", Path(path) / "saved_model.pbtxt"
    if pb.is_file():
        saved_model.ParseFromString(pb.read_bytes())
    else:
        text_format.Parse(pbtxt.read_text(), saved_model)
    if not saved_model.meta_graphs:
        raise ValueError(f"{path} holds no MetaGraph")
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    return saved_model.meta_graphs[0]


def build_requests(savedmodel_dir: Path, requests: dict[str, dict[str, np.ndarray]],
                   model_name: str = "") -> list[prediction_log_pb2.PredictionLog]:
    """One PredictionLog per request, in signature-name order.

    Args:
        savedmodel_dir: a SavedModel directory (saved_model.pb and variables/).
        requests: signature name → its inputs by name (`InputSpec.warmup_requests`).
        model_name: written into each request's model_spec; servers ignore it on warm-up.

    Raises:
        ValueError: a request names a signature the SavedModel lacks, or not exactly its inputs.
    """
    signature_defs = read_meta_graph(savedmodel_dir).signature_def
    logs = []
    for name, arrays in sorted(requests.items()):
        if name not in signature_defs:
            raise ValueError(f"{savedmodel_dir} has no signature {name} (it has {sorted(signature_defs)})")
        if set(arrays) != set(signature_defs[name].inputs):
            raise ValueError(f"the warm-up request for {name} has inputs {sorted(arrays)}; the signature "
                             f"takes {sorted(signature_defs[name].inputs)}")
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = name
        for key, value in arrays.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(savedmodel_dir: Path, requests: dict[str, dict[str, np.ndarray]],
                          model_name: str = "") -> Path:
    """Write the warm-up file into `savedmodel_dir`.

    Args:
        savedmodel_dir: the SavedModel directory (before it is published).
        requests: signature name → its inputs by name (`InputSpec.warmup_requests`).
        model_name: written into each request's model_spec.

    Returns:
        The file's path.

    Raises:
        ValueError: no requests, or one that does not fit the SavedModel (`build_requests`).
    """
    logs = build_requests(savedmodel_dir, requests, model_name)
    if not logs:
        raise ValueError(f"no warm-up requests for {savedmodel_dir}; cannot write a warm-up file")
    path = warmup_path(savedmodel_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(savedmodel_dir: Path) -> list[prediction_log_pb2.PredictionLog]:
    """The PredictionLog records of a SavedModel's warm-up file ([] when it has none)."""
    path = warmup_path(savedmodel_dir)
    if not path.is_file():
        return []
    logs = []
    for record in tf.data.TFRecordDataset(str(path)).take(MAX_RECORDS + 1):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    if len(logs) > MAX_RECORDS:
        raise ValueError(f"{path} has more than {MAX_RECORDS} warm-up records (TF Serving's "
                         "limit)")
    return logs
