"""Classify, Regress and MultiInference: TF Serving's tf.Example APIs on any signature.

A signature serves Classify when it has one input named `inputs` (the serialized
tf.Examples) and outputs `classes` (DT_STRING, [batch, n]) and/or `scores` (DT_FLOAT,
[batch, n]); Regress when it has one input `inputs` and one output `outputs` (DT_FLOAT,
[batch] or [batch, 1]). As in TF Serving (whose `--enable_signature_method_name_check` is
off by default) the method name is checked only when that flag is on, so predict-method
signatures of that form serve these APIs too. Checks, codes and messages are TF Serving's.
With the flag on, Predict too serves only signatures of the three methods TF Serving's Predict
accepts (`check_predict_method`, called by both front ends).

The examples go through the same batching queue as a Predict on that signature would, so
concurrent Classify calls on a batchable signature share one model call.
"""

from __future__ import annotations

import numpy as np
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from tfpipeline.signatures import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD
from tfpipeline.signatures import DEFAULT as DEFAULT_SIGNATURE

from .core import ServingCore
from .errors import FailedPrecondition, RequestError, Unimplemented, status_error
from .examples import serialized_examples
from .servable import Servable, Signature

_VERB = {CLASSIFY_METHOD: "classification", REGRESS_METHOD: "regression"}
_PREDICT_METHODS = (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD)


def check_predict_method(method_name: str, check_method: bool) -> None:
    """With `--enable_signature_method_name_check`, Predict (REST and gRPC) serves only
    signatures whose method is predict, classify or regress, as TF Serving's does.

    Raises:
        RequestError: with TF Serving's code (INTERNAL) and message, naming the method found.
    """
    if check_method and method_name not in _PREDICT_METHODS:
        raise status_error("INTERNAL", "Expected prediction signature method_name to be one of {"
                           f"{', '.join(_PREDICT_METHODS)}}}. Was: {method_name}")


def find_signature(servable: Servable, name: str, method: str, check_method: bool,
                   missing: str = "No signature was found with the name: ") -> Signature:
    """The signature `name` (or the default), checked to fit `method`'s input and outputs."""
    name = name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise RequestError(f"{missing}{name}")
    if check_method and signature.method_name != method:
        raise RequestError(f"Expected {_VERB[method]} signature method_name to be {method}. "
                           f"Was: {signature.method_name}")
    _check_form(signature, method)
    return signature


def _check_form(signature: Signature, method: str) -> None:
    described = (f"{signature.name} (inputs {sorted(signature.inputs)}, outputs "
                 f"{sorted(signature.outputs)})")
    if len(signature.inputs) != 1:
        raise RequestError("Expected one input Tensor.")
    outputs = signature.outputs
    if method == CLASSIFY_METHOD and len(outputs) not in (1, 2):
        raise RequestError(f"Expected one or two output Tensors, found {len(outputs)}")
    if method == REGRESS_METHOD and len(outputs) != 1:
        raise RequestError("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise FailedPrecondition(f"No {_VERB[method]} inputs found in SignatureDef: "
                                 f"{described}")
    if method == CLASSIFY_METHOD and not {"classes", "scores"} & set(outputs):
        raise FailedPrecondition(
            "Expected classification signature outputs to contain at least one of \"classes\" "
            f"or \"scores\". Signature was: {described}")
    if method == REGRESS_METHOD and "outputs" not in outputs:
        raise FailedPrecondition(f"No regression outputs found in SignatureDef: {described}")


async def run_examples(core: ServingCore, servable: Servable, signature: Signature,
                       examples: np.ndarray) -> dict[str, np.ndarray]:
    pending = core.enqueue(servable, signature, {"inputs": examples}, len(examples))
    return await core.outputs(pending)


def classification_result(outputs: dict, rows: int) -> classification_pb2.ClassificationResult:
    """TF Serving's ClassificationResult from the `classes` and/or `scores` outputs."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for name, array, dtype in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if array is None:
            continue
        if array.ndim != 2:
            raise RequestError(f"Expected Tensor shape: [batch_size num_classes] but got "
                               f"{list(array.shape)}")
        if (array.dtype.kind == "O") != (dtype == "DT_STRING") or (
                dtype == "DT_FLOAT" and array.dtype != np.float32):
            raise RequestError(f"Expected {name} Tensor of {dtype}. Got: {array.dtype}")
        if array.shape[0] != rows:
            raise RequestError(f"Expected {name} output batch size of {rows}. Got: "
                               f"{array.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise RequestError(f"Tensors class and score should match in dim_size(1). Got "
                           f"{classes.shape[1]} vs. {scores.shape[1]}")
    count = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(rows):
        classifications = result.classifications.add()
        for c in range(count):
            cls = classifications.classes.add()
            if classes is not None:
                cls.label = classes[i, c]
            if scores is not None:
                cls.score = scores[i, c]
    return result


def regression_result(outputs: dict, rows: int) -> regression_pb2.RegressionResult:
    """TF Serving's RegressionResult from the `outputs` output ([batch] or [batch, 1])."""
    values = outputs["outputs"]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise RequestError("Expected output Tensor shape to be either [batch_size] or "
                           f"[batch_size, 1] but got {list(values.shape)}")
    if values.dtype != np.float32:
        raise RequestError(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
    if values.shape[0] != rows:
        raise RequestError(f"Input batch size did not match output batch size: {rows} vs. "
                           f"{values.shape[0]}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1).tolist():
        result.regressions.add().value = value
    return result


def fill_model_spec(target, name: str, signature_name: str, version: int) -> None:
    target.name = name
    target.signature_name = signature_name or DEFAULT_SIGNATURE
    target.version.value = version


async def classify(core: ServingCore, servable: Servable, request):
    """A ClassificationRequest on a servable already looked up from its model_spec."""
    return await _single_task(core, servable, request, CLASSIFY_METHOD,
                              classification_pb2.ClassificationResponse(), classification_result)


async def regress(core: ServingCore, servable: Servable, request):
    """A RegressionRequest on a servable already looked up from its model_spec."""
    return await _single_task(core, servable, request, REGRESS_METHOD,
                              regression_pb2.RegressionResponse(), regression_result)


async def _single_task(core: ServingCore, servable: Servable, request, method: str, response, to_result):
    """Classify and Regress alike: the signature for `method`, the request's examples through
    it, and `to_result` of its outputs in `response`, with the model spec it ran."""
    spec = request.model_spec
    signature = find_signature(servable, spec.signature_name, method, core.config.method_name_check)
    examples = serialized_examples(request.input)
    outputs = await run_examples(core, servable, signature, examples)
    response.result.CopyFrom(to_result(outputs, len(examples)))
    fill_model_spec(response.model_spec, spec.name, spec.signature_name, servable.version)
    return response


def _task_signatures(core: ServingCore, servable: Servable, tasks) -> list[Signature]:
    signatures, seen, input_names = [], set(), set()
    for task in tasks:
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if task.method_name not in _VERB:
            raise Unimplemented(f"Unsupported signature method_name: {task.method_name}")
        if name in seen:
            raise RequestError(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        signature = find_signature(servable, name, task.method_name,
                                   core.config.method_name_check,
                                   missing="Requested signature not found in model graph: ")
        signature_def = servable.signature_defs.get(name)
        input_names.add(signature_def.inputs["inputs"].name if signature_def else name)
        signatures.append(signature)
    if len(input_names) > 1:
        raise RequestError("Input tensor must be the same for all Signatures.")
    return signatures


async def multi_inference(core: ServingCore, servable: Servable, request):
    """A MultiInferenceRequest; every task must name the model of the first (`servable`)."""
    tasks = list(request.tasks)
    if not tasks:
        raise RequestError("MultiInferenceRequest must have at least one task.")
    if len({task.model_spec.name for task in tasks}) > 1:
        raise RequestError("All ModelSpecs in a MultiInferenceRequest must access the same "
                           "model name.")
    signatures = _task_signatures(core, servable, tasks)
    examples = serialized_examples(request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task, signature in zip(tasks, signatures):
        outputs = await run_examples(core, servable, signature, examples)
        result = response.results.add()
        fill_model_spec(result.model_spec, task.model_spec.name,
                        task.model_spec.signature_name, servable.version)
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(classification_result(outputs, len(examples)))
        else:
            result.regression_result.CopyFrom(regression_result(outputs, len(examples)))
    return response
