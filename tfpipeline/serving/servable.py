"""One loaded model version: its signatures described in plain Python and ready to call.

Any SavedModel with signatures works; nothing here knows about project model code. The
description (`TensorInfo`) is what validation checks requests against and what the metadata
endpoint reports, so both always agree with the model actually loaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

# TF Serving reports dtypes by their DataType enum names; these are the ones that are not
# simply "DT_" + the dtype's name.
_DT_NAMES = {"float16": "DT_HALF", "float32": "DT_FLOAT", "float64": "DT_DOUBLE"}

# Keras and tf.saved_model export predict signatures; the loaded object does not expose the
# method name, and predict is the only verb this server implements.
PREDICT_METHOD = "tensorflow/serving/predict"


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype and shape of one signature input or output (None = any size)."""

    name: str
    dtype: np.dtype
    dt_name: str
    shape: tuple[int | None, ...] | None  # None: unknown rank

    @classmethod
    def from_spec(cls, name: str, spec: tf.TensorSpec) -> "TensorInfo":
        dims = None if spec.shape.rank is None else tuple(spec.shape.as_list())
        dt_name = _DT_NAMES.get(spec.dtype.name, "DT_" + spec.dtype.name.upper())
        return cls(name, np.dtype(spec.dtype.as_numpy_dtype), dt_name, dims)

    @property
    def batched(self) -> bool:
        """True when dimension 0 is a free batch dimension, so rows can be merged or split."""
        return bool(self.shape) and self.shape[0] is None

    def shape_text(self, skip_batch: bool = False) -> str:
        dims = self.shape[1:] if skip_batch else self.shape
        return "[" + ", ".join("-1" if d is None else str(d) for d in dims) + "]"

    def metadata(self) -> dict:
        # TF Serving's JSON for a TensorInfo proto: int64 sizes are strings, unknown is -1.
        # It also reports the graph tensor name, which loaded signatures do not expose through
        # public APIs and REST clients never need, so it is left out.
        if self.shape is None:
            shape = {"dim": [], "unknown_rank": True}
        else:
            dims = [{"size": str(-1 if d is None else d), "name": ""} for d in self.shape]
            shape = {"dim": dims, "unknown_rank": False}
        return {"dtype": self.dt_name, "tensor_shape": shape}


@dataclass(eq=False)
class Signature:
    """A callable signature that takes and returns NumPy arrays keyed by tensor name."""

    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    function: Callable[..., dict[str, tf.Tensor]]

    @property
    def batchable(self) -> bool:
        """Requests may be merged only if every input and output has a free batch dimension."""
        return all(t.batched for t in (*self.inputs.values(), *self.outputs.values()))

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.function(**{k: tf.constant(v) for k, v in arrays.items()})
        return {k: v.numpy() for k, v in results.items()}

    def metadata(self) -> dict:
        return {
            "inputs": {k: v.metadata() for k, v in self.inputs.items()},
            "outputs": {k: v.metadata() for k, v in self.outputs.items()},
            "method_name": PREDICT_METHOD,
        }


@dataclass(eq=False)
class Servable:
    """One loaded version. `root` keeps the loaded object, and so its variables, alive."""

    version: int
    path: Path
    signatures: dict[str, Signature]
    root: Any = field(repr=False)
    load_seconds: float = 0.0
    # The SavedModel's own SignatureDef protos (graph tensor names, method names), which
    # gRPC GetModelMetadata returns as TF Serving does.
    signature_defs: dict = field(default_factory=dict, repr=False)
    # Per-signature request batchers, created by the server on first use and stored here so
    # they live exactly as long as this version does (in-flight requests keep both alive).
    batchers: dict[str, Any] = field(default_factory=dict, repr=False)


def describe_signature(name: str, function) -> Signature:
    _, kwargs = function.structured_input_signature
    inputs = {k: TensorInfo.from_spec(k, spec) for k, spec in kwargs.items()}
    outputs = {k: TensorInfo.from_spec(k, spec) for k, spec in function.structured_outputs.items()}
    return Signature(name, inputs, outputs, function)


def warm_up(signature: Signature) -> None:
    """Run one row of zeros so the first real request does not pay for lazy initialisation.

    Skipped for signatures whose input shapes are not fully known apart from the batch size.
    """
    arrays = {}
    for name, info in signature.inputs.items():
        if not info.batched or any(d is None for d in info.shape[1:]):
            return
        if info.dtype.kind not in "biuf":
            return
        arrays[name] = np.zeros((1, *info.shape[1:]), info.dtype)
    signature(arrays)


def read_signature_defs(path: Path) -> dict:
    """Signature name -> SignatureDef proto, from the SavedModel's serving meta graph."""
    saved_model = saved_model_pb2.SavedModel()
    pb, pbtxt = Path(path) / "saved_model.pb", Path(path) / "saved_model.pbtxt"
    if pb.is_file():
        saved_model.ParseFromString(pb.read_bytes())
    else:
        text_format.Parse(pbtxt.read_text(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    return dict(saved_model.meta_graphs[0].signature_def) if saved_model.meta_graphs else {}


def load_servable(path: Path, version: int) -> Servable:
    """Load a SavedModel directory, describe its signatures and warm them up.

    Raises whatever TensorFlow raises for a broken directory; the caller records it.
    """
    start = time.monotonic()
    root = tf.saved_model.load(str(path))
    signatures = {name: describe_signature(name, fn) for name, fn in root.signatures.items()}
    if not signatures:
        raise ValueError(f"{path} has no signatures to serve")
    for signature in signatures.values():
        warm_up(signature)
    signature_defs = read_signature_defs(path)
    return Servable(version, Path(path), signatures, root, time.monotonic() - start,
                    signature_defs={k: v for k, v in signature_defs.items() if k in signatures})
