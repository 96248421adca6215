"""One loaded model version: its signatures described in plain Python and ready to call.

Any SavedModel with signatures works; nothing here knows about project model code. The
description (`TensorInfo`) is what validation checks requests against; the metadata
endpoints report the SavedModel's own SignatureDef protos, so both agree with the model
actually loaded.

Every SavedModel, TF1 or TF2, runs in a TF1 session (`session_loader`), as TF Serving runs
every model: the graph of its "serve" MetaGraph, variables restored and init ops run, each
signature a callable fed and fetched by the tensor names its SignatureDef gives. One loader
serves what `tf.saved_model.load` cannot (Estimator and `tf.compat.v1` exports, reference
variables, signatures without shapes), and a call skips the Python work of a TF2 concrete
function (binding and checking its arguments, converting each one), which is most of a
one-example call: the session calls the default CNN's signature in about half the time and a
table row's in about a quarter (docs/serving.md). A signature is a function from named arrays
to named arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from tfpipeline.export.warmup import read_meta_graph
from tfpipeline.signatures import LOADER_SIGNATURES, PREDICT_METHOD

from .errors import FailedPrecondition
from .session_loader import open_session, session_call


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype and shape of one signature input or output (None = any size)."""

    name: str
    dtype: np.dtype
    dt_name: str
    shape: tuple[int | None, ...] | None  # None: unknown rank

    @classmethod
    def from_proto(cls, name: str, proto) -> "TensorInfo":
        """From a SignatureDef's TensorInfo; reference dtypes (DT_FLOAT_REF) read as values."""
        dtype = tf.as_dtype(proto.dtype).base_dtype
        dims = None
        if proto.HasField("tensor_shape") and not proto.tensor_shape.unknown_rank:
            dims = tuple(None if d.size < 0 else d.size for d in proto.tensor_shape.dim)
        return cls(name, np.dtype(dtype.as_numpy_dtype), types_pb2.DataType.Name(
            dtype.as_datatype_enum), dims)

    @property
    def batched(self) -> bool:
        """True when dimension 0 is a free batch dimension, so rows can be merged or split."""
        return bool(self.shape) and self.shape[0] is None

    @property
    def type_name(self) -> str:
        """TensorFlow's short name for the dtype, as TF Serving's messages print it."""
        return tf.as_dtype(self.dtype).name.replace("float32", "float").replace(
            "float64", "double")

    def shape_text(self, skip_batch: bool = False) -> str:
        dims = self.shape[1:] if skip_batch else self.shape
        return "[" + ", ".join("-1" if d is None else str(d) for d in dims) + "]"


@dataclass(eq=False)
class Signature:
    """A callable signature that takes and returns NumPy arrays keyed by tensor name.

    `run` is the loader's call; it raises `tf.errors.OpError` when the graph rejects the
    values (the server answers those with the error's own status code).
    """

    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    method_name: str = PREDICT_METHOD

    @property
    def batchable(self) -> bool:
        """Requests may be merged only if every input and output has a free batch dimension."""
        return bool(self.inputs) and all(
            t.batched for t in (*self.inputs.values(), *self.outputs.values()))

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(arrays)


@dataclass(eq=False)
class Servable:
    """One loaded version. `root` keeps the loaded object (or session) and its variables alive."""

    version: int
    path: Path
    signatures: dict[str, Signature]
    root: Any = field(repr=False)
    load_seconds: float = 0.0
    # The SavedModel's own SignatureDef protos (graph tensor names, method names, defaults),
    # which both metadata endpoints return as TF Serving does: all of them, the loader's
    # `__saved_model_init_op` included, though only `signatures` can be called.
    signature_defs: dict = field(default_factory=dict, repr=False)
    # Per-signature request batchers, created by the server on first use and stored here so
    # they live exactly as long as this version does (in-flight requests keep both alive).
    batchers: dict[str, Any] = field(default_factory=dict, repr=False)

    def predict_signature(self, name: str) -> Signature | None:
        """The signature a Predict request names (REST and gRPC): the callable one, or None
        where the SavedModel has that SignatureDef but nothing to call (the loader's
        `__saved_model_init_op`), which each front end refuses in TF Serving's own way.

        Raises:
            FailedPrecondition: no SignatureDef of that name, with TF Serving's message.
        """
        signature = self.signatures.get(name)
        if signature is None and name not in self.signature_defs:
            raise FailedPrecondition(f"Serving signature key \"{name}\" not found.")
        return signature


def warm_up(signature: Signature) -> None:
    """Run one row of zeros so the first real request does not pay for lazy initialisation.

    Skipped for signatures without inputs (they may change state, like a counter's
    increment) and for those whose input shapes are not fully known apart from the batch
    size.
    """
    arrays = {}
    for name, info in signature.inputs.items():
        if not info.batched or any(d is None for d in info.shape[1:]):
            return
        if info.dtype.kind not in "biuf":
            return
        arrays[name] = np.zeros((1, *info.shape[1:]), info.dtype)
    if arrays:
        signature(arrays)


def _load_in_session(path: Path, meta_graph) -> tuple[Any, dict[str, Signature]]:
    session = open_session(path, list(meta_graph.meta_info_def.tags) or ["serve"])
    signatures = {}
    for name, signature_def in meta_graph.signature_def.items():
        if name in LOADER_SIGNATURES:
            continue
        inputs = {k: TensorInfo.from_proto(k, v) for k, v in signature_def.inputs.items()}
        outputs = {k: TensorInfo.from_proto(k, v) for k, v in signature_def.outputs.items()}
        signatures[name] = Signature(name, inputs, outputs, session_call(session, signature_def),
                                     signature_def.method_name)
    return session, signatures


def load_servable(path: Path, version: int) -> Servable:
    """Load a SavedModel directory in a session, describe its signatures and warm them up.

    Raises whatever TensorFlow raises for a broken directory; the caller records it.
    """
    start = time.monotonic()
    meta_graph = read_meta_graph(path)
    root, signatures = _load_in_session(path, meta_graph)
    if not signatures:
        raise ValueError(f"{path} has no signatures to serve")
    for signature in signatures.values():
        warm_up(signature)
    return Servable(version, Path(path), signatures, root, time.monotonic() - start,
                    signature_defs=dict(meta_graph.signature_def))
