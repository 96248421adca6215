"""GetModelMetadata's answer: the SavedModel's own SignatureDefs, for gRPC and REST.

REST gives TF Serving's JSON: the `SignatureDefMap` printed with proto field names and every
field, set or not (tensor `name`, `method_name`, `defaults`, sizes as strings, `-1` for a free
dimension), inside `{"model_spec": ..., "metadata": {"signature_def": ...}}`. Both come from
the same protos, so they always agree with each other and with the loaded model.
"""

from __future__ import annotations

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from .servable import Servable


def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature_def)
    return signature_map


def metadata_json(model_name: str, servable: Servable) -> dict:
    """The REST `/metadata` body for one loaded version."""
    signature_defs = json_format.MessageToDict(
        signature_def_map(servable), preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True)
    return {
        "model_spec": {"name": model_name, "signature_name": "",
                       "version": str(servable.version)},
        "metadata": {"signature_def": signature_defs},
    }
