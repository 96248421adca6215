"""TensorProto <-> NumPy for gRPC requests, checked against a signature as TF Serving does.

Inputs: the names must be the signature's and the dtypes its dtypes (TF Serving's own
checks); the shape is the request's and goes to the graph as sent, which may accept it
or refuse it with its own error. Raw numeric tensors (`tensor_content`, what TF Serving's
clients send) are read with `np.frombuffer`; every other encoding through
`tf.make_ndarray`.

Outputs: TF Serving's default encoding, the typed `*_val` fields (`float_val`, ...),
written here from flat arrays without going through `tf.make_tensor_proto`; with
`--enable_serialization_as_tensor_content` the raw `tensor_content` bytes instead, which
clients decode faster for large outputs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from .errors import RequestError
from .servable import Signature, TensorInfo

# dtype -> the repeated TensorProto field TensorFlow's AsProtoField writes it to.
_FIELDS = {"float32": "float_val", "float64": "double_val", "int32": "int_val",
           "int16": "int_val", "int8": "int_val", "uint8": "int_val", "uint16": "int_val",
           "int64": "int64_val", "uint32": "uint32_val", "uint64": "uint64_val",
           "bool": "bool_val", "complex64": "scomplex_val", "complex128": "dcomplex_val"}


def input_arrays(inputs, signature: Signature) -> tuple[dict[str, np.ndarray], int]:
    """Map of input name -> TensorProto to checked arrays, and their shared batch size
    (0 when the inputs disagree on dimension 0 or are scalars)."""
    check_input_names(list(inputs), list(signature.inputs))
    arrays = {name: to_array(inputs[name], signature.inputs[name]) for name in inputs}
    sizes = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    rows = sizes.pop() if len(sizes) == 1 else 0
    return arrays, max(rows, 0)


def check_input_names(given: list[str], expected: list[str]) -> None:
    """TF Serving's checks and messages for the set of input aliases of a request, against
    the signature's input names."""
    expected = sorted(expected)
    if set(given) == set(expected):
        return
    extra = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    if len(given) != len(expected):
        raise RequestError(
            f"input size does not match signature: {len(given)}!={len(expected)} "
            f"len({{{','.join(sorted(given))}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: "
            f"{{{','.join(missing)}}}.")
    raise RequestError(f"input tensor alias not found in signature: {extra[0]}. Inputs "
                       f"expected to be in the set {{{','.join(expected)}}}.")


def to_array(proto, info: TensorInfo) -> np.ndarray:
    given = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() \
        else str(proto.dtype)
    if given != info.dt_name:
        raise RequestError(f"Input '{info.name}': expects {info.dt_name} but {given} was "
                           "provided")
    try:
        if proto.tensor_content and info.dtype.kind in "biuf":
            return np.frombuffer(proto.tensor_content, info.dtype.newbyteorder("<")).reshape(
                [d.size for d in proto.tensor_shape.dim])
        return tf.make_ndarray(proto)
    except (ValueError, TypeError) as exc:  # content that does not fill the shape
        raise RequestError(f"Input '{info.name}': the tensor's content does not match its "
                           f"shape: {exc}") from None


def check_output_filter(wanted: list[str], signature: Signature) -> None:
    seen = set()
    for alias in wanted:
        if alias not in signature.outputs:
            raise RequestError(
                f"output tensor alias not found in signature: {alias} Outputs expected to "
                f"be in the set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise RequestError(f"duplicate output tensor alias: {alias}")
        seen.add(alias)


def output_protos(outputs: dict[str, np.ndarray], wanted: list[str] | None = None,
                  as_content: bool = False) -> dict:
    """Outputs as TensorProtos, restricted to `wanted` (a request's output_filter)."""
    names = wanted or list(outputs)
    encode = to_content_proto if as_content else to_field_proto
    return {name: encode(np.asarray(outputs[name])) for name in names}


def _with_shape(proto: tensor_pb2.TensorProto, shape) -> tensor_pb2.TensorProto:
    proto.tensor_shape.SetInParent()  # present for scalars too, as TensorFlow writes it
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def to_field_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """TF Serving's default encoding: values in the dtype's typed repeated field."""
    dtype = array.dtype
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(dtype).as_datatype_enum)
    _with_shape(proto, array.shape)
    flat = array.reshape(-1)
    if dtype.kind == "O":
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif dtype.kind in "SU":
        proto.string_val.extend(np.char.encode(flat.astype(str)).tolist() if dtype.kind == "U"
                                else flat.tolist())
    elif dtype == np.float16 or dtype.name == "bfloat16":
        proto.half_val.extend(flat.view(np.uint16).tolist())
    elif dtype.kind == "c":
        pairs = np.stack([flat.real, flat.imag], axis=-1).reshape(-1)
        getattr(proto, _FIELDS[dtype.name]).extend(pairs.tolist())
    else:
        getattr(proto, _FIELDS[dtype.name]).extend(flat.tolist())
    return proto


def to_content_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """`--enable_serialization_as_tensor_content`: numeric values as raw bytes."""
    dtype = array.dtype
    if dtype.kind not in "biufc" or dtype.byteorder == ">":
        return to_field_proto(array)
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(dtype).as_datatype_enum,
                                   tensor_content=np.ascontiguousarray(array).tobytes())
    return _with_shape(proto, array.shape)
