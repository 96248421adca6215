"""TensorProto <-> NumPy for gRPC requests, checked against a signature as TF Serving does.

Raw numeric tensors (`tensor_content`, what TF Serving's clients send) are read with
`np.frombuffer` and numeric outputs written straight into `tensor_content`, the same bytes
`tf.make_ndarray` / `tf.make_tensor_proto` read and write: those two were the largest Python
cost of a gRPC predict on the event loop (make_tensor_proto re-inspects its deprecated
arguments on every call). Every other encoding (the typed `*_val` fields, DT_STRING) goes
through TensorFlow's functions. Every check runs before any
model call, so a bad request is INVALID_ARGUMENT and never fails a batch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from .errors import RequestError
from .servable import Signature, TensorInfo


def input_arrays(inputs, signature: Signature) -> tuple[dict[str, np.ndarray], int]:
    """Map of input name -> TensorProto to checked arrays, and their shared batch size
    (0 when the inputs disagree on dimension 0 or are scalars)."""
    expected = list(signature.inputs)
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise RequestError(
            f"input tensor alias not found in signature: {', '.join(unknown)}. Inputs expected "
            f"to be in the set {{{', '.join(expected)}}}.")
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise RequestError(f"Missing input tensor(s) {', '.join(missing)}: signature "
                           f"\"{signature.name}\" takes {{{', '.join(expected)}}}.")
    arrays = {name: to_array(inputs[name], signature.inputs[name]) for name in expected}
    sizes = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    rows = sizes.pop() if len(sizes) == 1 else 0
    return arrays, max(rows, 0)


def to_array(proto, info: TensorInfo) -> np.ndarray:
    given = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() \
        else str(proto.dtype)
    if given != info.dt_name:
        raise RequestError(f"Input '{info.name}': expects {info.dt_name} but {given} was "
                           "provided")
    try:
        if proto.tensor_content and info.dtype.kind in "biuf":
            array = np.frombuffer(proto.tensor_content, info.dtype.newbyteorder("<")).reshape(
                [d.size for d in proto.tensor_shape.dim])
        else:
            array = tf.make_ndarray(proto)
    except (ValueError, TypeError) as exc:  # content that does not fill the shape
        raise RequestError(f"Input '{info.name}': the tensor's content does not match its "
                           f"shape: {exc}") from None
    if info.shape is not None:
        ok = array.ndim == len(info.shape) and all(
            want is None or want == got for want, got in zip(info.shape, array.shape))
        if not ok:
            raise RequestError(f"Input '{info.name}' must have shape {info.shape_text()}; got "
                               f"{list(array.shape)}")
    if not array.size and info.batched:
        raise RequestError(f"Input '{info.name}' is empty: send at least one example")
    return array


def output_protos(outputs: dict[str, np.ndarray], wanted: list[str] | None = None) -> dict:
    """Outputs as TensorProtos, restricted to `wanted` (a request's output_filter)."""
    names = wanted or list(outputs)
    return {name: to_proto(outputs[name]) for name in names}


def to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    dtype = array.dtype
    if dtype.kind not in "biuf" or dtype.byteorder == ">":
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(dtype).as_datatype_enum,
                                   tensor_content=np.ascontiguousarray(array).tobytes())
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto
