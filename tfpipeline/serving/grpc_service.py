"""TF Serving's gRPC API: the servicers generated in the published tensorflow-serving-api.

  PredictionService.Predict, Classify, Regress, MultiInference, GetModelMetadata
  ModelService.GetModelStatus, HandleReloadConfigRequest

They run on grpc.aio in the server's one event loop, next to the REST app, and go through
the same ServingCore: same loaded versions, same batching queues, same metrics. Status codes
are TF Serving's (see errors.py): NOT_FOUND for an unknown model or version, INVALID_ARGUMENT
for a bad input, a missing ModelSpec or name, or an unknown label, FAILED_PRECONDITION for
an unknown Predict signature, UNAVAILABLE when the queue is full; a graph's own error keeps
its code. Outputs use the typed `*_val` fields unless the server was started with
`--enable_serialization_as_tensor_content`.
"""

from __future__ import annotations

import functools
import logging
import time

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfpipeline.errors import UserError
from tfpipeline.signatures import DEFAULT as DEFAULT_SIGNATURE

from . import inference
from .core import ServingCore
from .errors import RequestError
from .metadata import signature_def_map
from .model_config import specs_from_proto
from .tensors import check_input_names, check_output_filter, input_arrays, output_protos

log = logging.getLogger("tfpipeline.serving")

_STATES = get_model_status_pb2.ModelVersionStatus.State


def _code(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name)


def _rpc(api: str):
    """Answer RequestErrors with their status code, record metrics, and log real faults."""

    def wrap(method):
        @functools.wraps(method)
        async def handler(self, request, context):
            start = time.monotonic()
            model = request.model_spec.name if hasattr(request, "model_spec") else ""
            try:
                response = await method(self, request, context)
            except RequestError as exc:
                self.core.record(model, api, exc.code, start)
                await context.abort(_code(exc.code), exc.message)
            except Exception:
                log.exception("internal error in gRPC %s", api)
                self.core.record(model, api, "INTERNAL", start)
                await context.abort(grpc.StatusCode.INTERNAL,
                                    "Internal server error; see the server log")
            self.core.record(model, api, "OK", start)
            return response

        return handler

    return wrap


def _lookup(core: ServingCore, request, field: str = "model_spec"):
    """The servable a request's ModelSpec names: latest, `version`, or `version_label`."""
    if not request.HasField(field):
        raise RequestError("Missing ModelSpec")
    spec = getattr(request, field)
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None
    return core.models.servable(spec.name, version, label)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_rpc("Predict")
    async def Predict(self, request, context):
        servable = _lookup(self.core, request)
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.predict_signature(name)
        method = signature.method_name if signature is not None else servable.signature_defs[name].method_name
        inference.check_predict_method(method, self.core.config.method_name_check)
        if signature is None:
            # The loader's own SignatureDef: TF Serving finds it and refuses the request on its
            # inputs (it has none); with none sent, we refuse it as nothing to call.
            check_input_names(list(request.inputs), [])
            raise RequestError(f"Serving signature key \"{name}\" is the loader's, not one to call.")
        wanted = list(request.output_filter)
        check_output_filter(wanted, signature)
        arrays, rows = input_arrays(request.inputs, signature)
        if rows > self.core.config.max_instances:
            raise RequestError(f"The request has {rows} examples; this server accepts at most "
                               f"{self.core.config.max_instances} per request "
                               "(see --max-instances): split the request")
        outputs = await self.core.outputs(self.core.enqueue(servable, signature, arrays, rows))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        protos = output_protos(outputs, wanted, self.core.config.tensor_content)
        for key, proto in protos.items():
            response.outputs[key].CopyFrom(proto)
        return response

    @_rpc("GetModelMetadata")
    async def GetModelMetadata(self, request, context):
        fields = list(request.metadata_field)
        if not fields:
            raise RequestError("GetModelMetadataRequest must specify at least one "
                               "metadata_field (\"signature_def\")")
        unsupported = [f for f in fields if f != "signature_def"]
        if unsupported:
            raise RequestError(f"Metadata field {unsupported[0]} is not supported "
                               "(supported: signature_def)")
        servable = _lookup(self.core, request)
        signature_map = signature_def_map(servable)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    @_rpc("Classify")
    async def Classify(self, request, context):
        return await inference.classify(self.core, _lookup(self.core, request), request)

    @_rpc("Regress")
    async def Regress(self, request, context):
        return await inference.regress(self.core, _lookup(self.core, request), request)

    @_rpc("MultiInference")
    async def MultiInference(self, request, context):
        if not request.tasks:
            raise RequestError("MultiInferenceRequest must have at least one task.")
        servable = _lookup(self.core, request.tasks[0])
        return await inference.multi_inference(self.core, servable, request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_rpc("GetModelStatus")
    async def GetModelStatus(self, request, context):
        if not request.HasField("model_spec"):
            raise RequestError("Missing ModelSpec")
        spec = request.model_spec
        manager = self.core.models.manager(spec.name)
        version = spec.version.value if spec.HasField("version") else None
        if spec.WhichOneof("version_choice") == "version_label":
            version = manager.resolve_label(spec.version_label)
        response = get_model_status_pb2.GetModelStatusResponse()
        for row in manager.status(version):
            status = response.model_version_status.add()
            status.version = int(row["version"])
            status.state = _STATES.Value(row["state"])
            status.status.error_code = _code(row["status"]["error_code"]).value[0]
            status.status.error_message = row["status"]["error_message"]
        return response

    async def HandleReloadConfigRequest(self, request, context):
        start = time.monotonic()
        response = model_management_pb2.ReloadConfigResponse()
        try:
            specs = specs_from_proto(request.config, where="ReloadConfigRequest.config")
            await self.core.models.apply(specs)
        except UserError as exc:
            code, message = "INVALID_ARGUMENT", str(exc)
        except RequestError as exc:
            code, message = exc.code, exc.message
        else:
            self.core.record("", "HandleReloadConfigRequest", "OK", start)
            log.info("reloaded the model config over gRPC: %s",
                     ", ".join(spec.name for spec in specs))
            return response
        log.error("config reload refused: %s", message)
        self.core.record("", "HandleReloadConfigRequest", code, start)
        response.status.error_code = _code(code).value[0]
        response.status.error_message = message
        await context.abort(_code(code), message)


def add_services(server: grpc.aio.Server, core: ServingCore) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
