"""Predict request JSON -> arrays checked against the signature, and outputs -> response JSON.

Formats are TF Serving's: row (`instances`, a list with one entry per example) and columnar
(`inputs`, one value or an object of named values). The checks here are TF Serving's own
(JSON form, input names, value types against the signature's dtypes, with its messages
where its tests assert them), so a bad request is a 400 and never fails a batch. The shape
is the request's: it goes to the graph as sent, and the graph accepts it or answers with its
own error, as in TF Serving.

DT_STRING inputs take JSON strings (sent as their UTF-8 bytes) or, for binary values, TF
Serving's `{"b64": "<base64>"}` objects, in row and columnar format alike. DT_STRING outputs
come back as `{"b64": ...}` when the output's name ends in `_bytes` (TF Serving's rule) or
when the bytes are not UTF-8 text, which JSON could not carry; otherwise as strings.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from tfpipeline.signatures import DEFAULT as DEFAULT_SIGNATURE

from . import fastpath
from .errors import RequestError
from .servable import Servable, Signature, TensorInfo


@dataclass
class PredictRequest:
    signature: Signature
    inputs: dict[str, np.ndarray]
    rows: int  # size of dimension 0 shared by all inputs, 0 when they differ (columnar only)
    row_format: bool


def parse_json_object(body: bytes) -> dict:
    if not body.strip():
        raise RequestError("JSON Parse error: The document is empty (Malformed JSON: send a "
                           "JSON object)")
    try:
        data = json.loads(body)
    except RecursionError:
        raise RequestError("Malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError(f"JSON Parse error: Invalid value (Malformed JSON in request "
                           f"body: {exc})") from None
    if not isinstance(data, dict):
        raise RequestError("Request body must be a JSON object, e.g. {\"instances\": [...]}")
    return data


def parse_predict(body: bytes, servable: Servable, max_instances: int) -> PredictRequest:
    request = _parse_plain(body, servable.signatures, max_instances)
    if request is not None:
        return request
    data = parse_json_object(body)
    signature = _pick_signature(data.get("signature_name"), servable)
    has_rows, has_columns = "instances" in data, "inputs" in data
    if has_rows == has_columns:
        raise RequestError(
            "Request must have exactly one of 'instances' (row format) or 'inputs' "
            f"(columnar format); it has {'both' if has_rows else 'neither'}"
        )
    if has_rows:
        inputs = _parse_rows(data["instances"], signature, max_instances)
    else:
        inputs = _parse_columns(data["inputs"], signature, max_instances)
    sizes = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    rows = sizes.pop() if len(sizes) == 1 else 0
    return PredictRequest(signature, inputs, max(rows, 0), has_rows)


def _parse_plain(body: bytes, signatures: Mapping[str, Signature],
                 max_instances: int) -> PredictRequest | None:
    """The common body (plain integers for the default signature's one input) without building
    a Python list per number; None sends the body through the general parser instead."""
    signature = signatures.get(DEFAULT_SIGNATURE)
    info = signature and fastpath.accepts(signature)
    if not info:
        return None
    parsed = fastpath.parse(body, info, max_instances)
    if parsed is None:
        return None
    array, row_format = parsed
    return PredictRequest(signature, {info.name: array}, len(array), row_format)


def _pick_signature(given: Any, servable: Servable) -> Signature:
    name = DEFAULT_SIGNATURE if given is None or given == "" else given
    if not isinstance(name, str):
        raise RequestError(f"JSON Value: {json.dumps(name)} not formatted correctly. "
                           "'signature_name' key must be a string value.")
    signature = servable.predict_signature(name)
    if signature is None or not signature.inputs:
        # TF Serving reads the JSON by the signature's inputs; with none (the loader's
        # `__saved_model_init_op`, or a signature without inputs) it answers this.
        raise RequestError(f"Failed to get input map for signature: {given or 'DEFAULT'}")
    return signature


def _parse_rows(instances: Any, signature: Signature, max_instances: int) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise RequestError("'instances' must be a list with one entry per example")
    if not instances:
        raise RequestError("No values in 'instances' array: send at least one example")
    _check_count(len(instances), max_instances, "'instances'")
    names = list(signature.inputs)
    if all(isinstance(item, dict) and not _is_b64(item) for item in instances):
        # Objects of named inputs, one per example (required when there are several inputs).
        for i, item in enumerate(instances):
            _check_names(set(item), names, f"instances[{i}]")
        columns = {n: [item[n] for item in instances] for n in names}
    elif len(names) == 1:
        columns = {names[0]: instances}
    else:
        raise RequestError(
            "instances is a plain list, but expecting list of objects as multiple input "
            f"tensors required as per tensorinfo_map ({', '.join(names)})")
    return {n: to_array(v, signature.inputs[n], row_format=True) for n, v in columns.items()}


def _parse_columns(inputs: Any, signature: Signature, max_instances: int) -> dict[str, np.ndarray]:
    names = list(signature.inputs)
    if isinstance(inputs, dict) and not (_is_b64(inputs) and len(names) == 1):
        # A tensor is never an object (a lone {"b64": ...} is a value), so this names inputs.
        _check_names(set(inputs), names, "'inputs'")
        columns = inputs
    elif len(names) == 1:
        columns = {names[0]: inputs}
    else:
        raise RequestError(
            "inputs is a plain value/list, but expecting an object as multiple input tensors "
            f"required as per tensorinfo_map ({', '.join(names)})")
    arrays = {}
    for name in names:
        value = columns[name]
        if isinstance(value, list):
            _check_count(len(value), max_instances, f"input '{name}'")
        arrays[name] = to_array(value, signature.inputs[name], row_format=False)
    return arrays


def _check_count(count: int, max_instances: int, what: str) -> None:
    if count > max_instances:
        raise RequestError(
            f"{what} has {count} examples; this server accepts at most {max_instances} per "
            "request (see --max-instances): split the request"
        )


def _check_names(given: set, expected: list[str], where: str) -> None:
    missing = [n for n in expected if n not in given]
    unknown = sorted(str(n) for n in given - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(unknown)}")
        # TF Serving's wording first: clients match on it.
        lead = (f"JSON object: does not have named input: {unknown[0]}" if unknown
                else f"Missing named input: {missing[0]} in {where} object.")
        raise RequestError(f"{lead} ({where}: {'; '.join(parts)}; expected: "
                           f"{', '.join(expected)})")


def to_array(value: Any, info: TensorInfo, row_format: bool) -> np.ndarray:
    """Convert one input's JSON value to an array of the signature's dtype, or raise 400.

    `value` carries the batch dimension: in row format it is the list of instances.
    """
    where = f"Input '{info.name}'"
    if info.dtype.kind == "O":
        return _string_array(value, where, info)
    try:
        array = np.array(value)
    except (ValueError, TypeError):  # ragged nesting
        raise RequestError(f"{where} is not a rectangular nested list of numbers") from None
    return _convert_dtype(array, info, where)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _string_array(value: Any, where: str, info: TensorInfo) -> np.ndarray:
    """A DT_STRING input: nested lists of strings / {"b64": ...} to an object array of bytes."""
    shape: list[int] = []

    def leaf(item: Any) -> bytes:
        if isinstance(item, str):
            return item.encode("utf-8")
        if _is_b64(item):
            if not isinstance(item["b64"], str):
                raise RequestError(f"{where}: the value of \"b64\" must be a base64 string")
            try:
                return base64.b64decode(item["b64"], validate=True)
            except binascii.Error as exc:
                raise RequestError(f"{where}: invalid base64 in {{\"b64\": ...}}: {exc}") from None
        if isinstance(item, dict):
            raise RequestError(f"{where}: an object in a DT_STRING tensor must be "
                               f"{{\"b64\": \"...\"}}; got keys {sorted(item)}")
        raise RequestError(f"{where}: JSON Value: {json.dumps(item)} Type: "
                           f"{_json_type(item)} is not of expected type: {info.type_name} "
                           "(send strings, or {\"b64\": \"...\"} for binary data)")

    ragged = RequestError(f"{where} is not a rectangular nested list of strings")
    rank: list[int] = []  # set by the first leaf: every leaf must be at that depth
    leaves: list[bytes] = []

    def walk(item: Any, depth: int) -> None:
        if not isinstance(item, list):
            if not rank:
                rank.append(depth)
            if depth != rank[0]:
                raise ragged
            leaves.append(leaf(item))
            return
        if rank and depth >= rank[0]:
            raise ragged
        if depth == len(shape):
            shape.append(len(item))
        elif shape[depth] != len(item):
            raise ragged
        for child in item:
            walk(child, depth + 1)

    walk(value, 0)
    if rank and rank[0] != len(shape):  # e.g. [[], ["a"]]: an empty list beside a leaf
        raise ragged
    # Filled one by one: assigning a list would go through a NumPy bytes array, which drops
    # trailing NUL bytes.
    array = np.empty(tuple(shape), dtype=object)
    flat = array.reshape(-1)
    for i, item in enumerate(leaves):
        flat[i] = item
    return array


def _json_type(value: Any) -> str:
    """rapidjson's name for a JSON value's type, which TF Serving's messages print."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {str: "String", dict: "Object", list: "Array"}.get(type(value), "Number")


def _convert_dtype(array: np.ndarray, info: TensorInfo, where: str) -> np.ndarray:
    kind, target = array.dtype.kind, info.dtype
    expected = (f"{info.dt_name} ({_describe_kind(target)}): not of expected type: "
                f"{info.type_name}")
    if kind in "US":
        raise RequestError(f"{where} contains strings; expected {expected}")
    if kind == "O":
        raise RequestError(
            f"{where} contains values that are not numbers (null, objects, or integers too "
            f"large to represent); expected {expected}"
        )
    if target.kind in "iu":
        if kind == "f":
            if array.size and not np.isfinite(array).all():
                raise RequestError(f"{where} contains NaN or Infinity; expected {expected}")
            raise RequestError(f"{where} contains non-integer numbers; expected {expected}")
        if kind not in "iu":
            raise RequestError(f"{where} has {_describe_kind(array.dtype)}; expected {expected}")
        limits = np.iinfo(target)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise RequestError(
                f"{where} has values outside [{limits.min}, {limits.max}] "
                f"(got {array.min()}..{array.max()}); expected {expected}"
            )
    elif target.kind == "f":
        # Integers are valid JSON for float tensors; NaN and Infinity are allowed, as in
        # TF Serving's JSON mapping for DT_FLOAT and DT_DOUBLE.
        if kind not in "iuf":
            raise RequestError(f"{where} has {_describe_kind(array.dtype)}; expected {expected}")
    elif target.kind == "b":
        if kind != "b":
            raise RequestError(f"{where} has {_describe_kind(array.dtype)}; expected {expected}")
    else:
        raise RequestError(f"{where} is {info.dt_name}, which this server does not accept over JSON")
    return array.astype(target, copy=False)


def _describe_kind(dtype: np.dtype) -> str:
    return {"i": "integers", "u": "integers", "f": "numbers", "b": "booleans"}.get(
        dtype.kind, str(dtype))


def format_predict_response(request: PredictRequest, outputs: dict[str, np.ndarray]) -> dict:
    """TF Serving's response: one output is given bare, several by name; row format turns
    named outputs into one object per example."""
    ordered = {k: outputs[k] for k in request.signature.outputs if k in outputs}
    if not request.row_format:
        if len(ordered) == 1:
            return {"outputs": _to_json(*next(iter(ordered.items())))}
        return {"outputs": {k: _to_json(k, v) for k, v in ordered.items()}}
    for name, value in ordered.items():
        if value.ndim == 0 or value.shape[0] != request.rows:
            raise RequestError(
                f"Output '{name}' has no per-example dimension, so it cannot be returned in row "
                "format; send 'inputs' (columnar format) instead"
            )
    if len(ordered) == 1:
        return {"predictions": _to_json(*next(iter(ordered.items())))}
    columns = {k: _to_json(k, v) for k, v in ordered.items()}
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(request.rows)]}


def _to_json(name: str, array: np.ndarray):
    if array.dtype.kind == "O":  # string outputs come back as bytes
        as_b64 = name.endswith("_bytes")
        return np.vectorize(lambda b: _string_to_json(b, as_b64), otypes=[object])(array).tolist()
    # tolist gives Python floats holding the exact float32 values, so a client that converts
    # back to float32 gets bit-identical numbers.
    return array.tolist()


def _string_to_json(value: bytes, as_b64: bool):
    if not as_b64:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}
