"""tf.Example inputs of Classify, Regress and MultiInference: TF Serving's `Input` proto
from JSON (REST) and to the serialized-string tensor a signature takes (both APIs).

JSON (TF Serving's REST API): `{"examples": [{feature: value | [values]}, ...], "context":
{...}}`. A JSON number with a decimal point or exponent is a float feature, a plain integer
or a boolean an int64 one, a string or `{"b64": ...}` a bytes one; the values of one feature
must share a kind. With `context`, each example is the context's features plus its own (its
own win on a name clash): serializing the context and then the example gives exactly that
message, the merge protobuf parsing defines.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import input_pb2

from .errors import RequestError

_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def serialized_examples(request_input) -> np.ndarray:
    """An `Input` proto as the 1-D DT_STRING tensor of serialized tf.Examples.

    Raises:
        RequestError: the input holds no examples ("Input is empty.", as TF Serving says).
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples, context = request_input.example_list.examples, b""
    elif kind == "example_list_with_context":
        examples = request_input.example_list_with_context.examples
        context = request_input.example_list_with_context.context.SerializeToString()
    else:
        examples, context = [], b""
    if not examples:
        raise RequestError("Input is empty.")
    values = np.empty(len(examples), dtype=object)
    for i, example in enumerate(examples):
        values[i] = context + example.SerializeToString()
    return values


def input_from_json(data: dict) -> input_pb2.Input:
    """The `examples` and `context` of a REST classify/regress body as an `Input` proto."""
    request_input = input_pb2.Input()
    examples = data.get("examples")
    if "examples" not in data:
        raise RequestError("When method is classify or regress, key 'examples' is expected "
                           "and was not found")
    if not isinstance(examples, list):
        raise RequestError("Expecting 'examples' value to be an list/array")
    if not examples:
        raise RequestError("'examples' value is an empty array")
    if "context" in data:
        target = request_input.example_list_with_context
        _fill_example(data["context"], target.context)
    else:
        target = request_input.example_list
    for item in examples:
        _fill_example(item, target.examples.add())
    return request_input


def _fill_example(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise RequestError(f"Example must be JSON object but got JSON {_type_name(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_value(item, name, feature)


def _type_name(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {str: "String", dict: "Object", list: "Array"}.get(type(value), "Number")


def _add_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    if isinstance(value, bool):
        _list(feature, "int64_list", name).value.append(int(value))
    elif isinstance(value, str):
        _list(feature, "bytes_list", name).value.append(value.encode("utf-8"))
    elif isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            data = base64.b64decode(value["b64"], validate=True)
        except binascii.Error:
            raise RequestError("Unable to base64 decode") from None
        _list(feature, "bytes_list", name).value.append(data)
    elif isinstance(value, float):
        if abs(value) > np.finfo(np.float32).max and np.isfinite(value):
            raise RequestError(f"Cannot convert JSON value: {value} to float without loss of "
                               "precision.")
        _list(feature, "float_list", name).value.append(value)
    elif isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise RequestError(f"Feature: {name} has uint64 element. Only int64 is supported.")
        _list(feature, "int64_list", name).value.append(value)
    else:
        raise RequestError(f"Feature: {name} has element with unexpected JSON type: "
                           f"{_type_name(value)}")


def _list(feature: feature_pb2.Feature, kind: str, name: str):
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise RequestError(f"Unexpected element type in feature: {name} expecting type: "
                           f"{_KIND_NAMES[current]}")
    return getattr(feature, kind)
