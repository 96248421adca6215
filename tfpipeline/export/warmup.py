"""TF Serving's warm-up file: `<SavedModel>/assets.extra/tf_serving_warmup_requests`.

The file is a TFRecord of `tensorflow.serving.PredictionLog` protos. TF Serving (and our own
server, tfpipeline.serving) replays them when it loads a version and reports the version
AVAILABLE only after, so the first real request does not pay for graph tracing and lazy
initialisation. The writer reads the signatures from the SavedModel itself and writes one
`PredictLog` per signature, built from a few real sample images:
  - a numeric input with shape [batch, H, W, C] gets the images in the input's dtype;
  - a DT_STRING input [batch] gets the same images encoded as PNG bytes.
A signature with inputs of any other kind is skipped (there is no meaningful sample for it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving reads at most this many


def warmup_path(savedmodel_dir: Path) -> Path:
    return Path(savedmodel_dir) / WARMUP_DIR / WARMUP_FILE


def _signature_defs(savedmodel_dir: Path) -> dict:
    """The SignatureDefs of the serving meta graph, read from saved_model.pb (no load)."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(savedmodel_dir) / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    return {}


def _sample_for(info, images: np.ndarray) -> np.ndarray | None:
    """`images` in the form the signature input `info` (a TensorInfo proto) takes, or None."""
    dtype = tf.dtypes.as_dtype(info.dtype)
    shape = tf.TensorShape(None if info.tensor_shape.unknown_rank
                           else [None if d.size < 0 else d.size for d in info.tensor_shape.dim])
    if dtype == tf.string and shape.is_compatible_with([len(images)]):
        return np.array([tf.io.encode_png(tf.constant(p)).numpy() for p in images], dtype=object)
    if dtype != tf.string and dtype.is_numpy_compatible and \
            shape.is_compatible_with(images.shape):
        return images.astype(dtype.as_numpy_dtype)
    return None


def build_requests(savedmodel_dir: Path, images: np.ndarray,
                   model_name: str = "") -> list[prediction_log_pb2.PredictionLog]:
    """One PredictionLog per signature of the SavedModel at `savedmodel_dir` that `images`
    (uint8, [N, H, W, C]) can feed.

    Args:
        savedmodel_dir: a SavedModel directory (saved_model.pb and variables/).
        images: a few real sample images, uint8 [N, H, W, C]; 2 or 3 are plenty.
        model_name: written into each request's model_spec; servers ignore it on warm-up.
    """
    images = np.asarray(images)
    if images.ndim != 4 or not len(images) or images.dtype != np.uint8:
        raise ValueError(f"images must be a non-empty uint8 [N, H, W, C] array; got "
                         f"{images.dtype} of shape {list(images.shape)}")
    logs = []
    for name, signature_def in sorted(_signature_defs(savedmodel_dir).items()):
        samples = {key: _sample_for(info, images) for key, info in signature_def.inputs.items()}
        if not samples or any(v is None for v in samples.values()):
            continue
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = name
        for key, value in samples.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(savedmodel_dir: Path, images: np.ndarray, model_name: str = "") -> Path:
    """Write the warm-up file into `savedmodel_dir`; returns its path.

    Args:
        savedmodel_dir: the SavedModel directory (before it is published).
        images: a few real sample images, uint8 [N, H, W, C].
        model_name: written into each request's model_spec.
    """
    logs = build_requests(savedmodel_dir, images, model_name)
    if not logs:
        raise ValueError(f"no signature of {savedmodel_dir} takes images shaped "
                         f"{list(np.shape(images))}; cannot write a warm-up file")
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
