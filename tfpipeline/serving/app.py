"""The aiohttp application: TF Serving's REST routes and JSON errors.

Routes (as TF Serving; `[...]` is `/versions/{v}` or `/labels/{label}`, both optional):
  GET  /v1/models/{name}[...]              model version status
  GET  /v1/models/{name}[...]/metadata     signature defs (TF Serving's JSON, every field)
  POST /v1/models/{name}[...]:predict      row or columnar predict
  POST /v1/models/{name}[...]:classify     tf.Examples (`examples`, `context`) -> classes
  POST /v1/models/{name}[...]:regress      tf.Examples -> values
and  GET  /monitoring/stats                request/batching counters (ours)
     GET  <prometheus path>                Prometheus text, when a monitoring config enables it
Any other request under /v1/ is 400 "Malformed request" (INVALID_ARGUMENT), as in TF
Serving; errors carry the HTTP status TF Serving maps their code to (errors.HTTP_STATUS).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from tensorflow_serving.apis import classification_pb2, regression_pb2

from . import inference
from .core import ServingCore
from .errors import DeadlineExceeded, RequestError, TooLarge
from .examples import input_from_json
from .metadata import metadata_json
from .metrics import CONTENT_TYPE
from .servable import Servable
from .validation import format_predict_response, parse_json_object, parse_predict

log = logging.getLogger("tfpipeline.serving")

_MODEL = "/v1/models/{name:[^/:]+}"
_VERSION = _MODEL + "/versions/{version:[0-9]+}"
_LABEL = _MODEL + "/labels/{label:[^/:]+}"
_PREFIXES = (_MODEL, _VERSION, _LABEL)

# TF Serving's API names, so REST and gRPC requests share metric labels.
_API = {"predict": "Predict", "status": "GetModelStatus", "metadata": "GetModelMetadata",
        "classify": "Classify", "regress": "Regress"}
_CODE_BY_HTTP = {200: "OK", 400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
                 413: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
                 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_MAX_VERSION = (1 << 63) - 1


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class RestServer:
    """Request handlers over the shared ServingCore."""

    def __init__(self, core: ServingCore):
        self.core = core
        self.config = core.config

    def make_app(self) -> web.Application:
        # client_max_size makes aiohttp stop reading a body (chunked ones too) past the limit.
        app = web.Application(client_max_size=self.config.max_body_bytes,
                              middlewares=[self._json_errors])
        # aiohttp tries routes in order, each a regex match: predict, the hot one, goes first.
        for prefix in _PREFIXES:
            app.router.add_post(prefix + ":predict", self.predict)
        for prefix in _PREFIXES:
            app.router.add_post(prefix + ":classify", self.classify)
            app.router.add_post(prefix + ":regress", self.regress)
            app.router.add_get(prefix, self.status)
            app.router.add_get(prefix + "/metadata", self.metadata)
        app.router.add_get("/monitoring/stats", self.monitoring)
        if self.config.prometheus_path:
            app.router.add_get(self.config.prometheus_path, self.prometheus)
        # Last, so it only sees what no route above took (a known path with the wrong
        # method included): TF Serving answers those INVALID_ARGUMENT, not 404 or 405.
        app.router.add_route("*", "/v1/{tail:.*}", self.malformed)
        return app

    @web.middleware
    async def _json_errors(self, request: web.Request, handler) -> web.StreamResponse:
        """Every error leaves as {"error": ...}; only real server faults are 500s."""
        start = time.monotonic()
        code = None
        try:
            response = await handler(request)
        except RequestError as exc:
            response, code = error_response(exc.status, exc.message), exc.code
        except web.HTTPException as exc:  # no such route, wrong method
            if exc.status < 400:
                raise
            response = error_response(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            response = error_response(500, "Internal server error; see the server log")
        self.core.responses[response.status] += 1
        name = request.match_info.get("name")
        api = _API.get(getattr(handler, "__name__", ""))
        if name is not None and api is not None:
            code = code or _CODE_BY_HTTP.get(response.status, "UNKNOWN")
            self.core.record(name, api, code, start)
        return response

    # -- lookups ------------------------------------------------------------------------

    @staticmethod
    def _spec(request: web.Request) -> tuple[str, int | None, str | None]:
        version = request.match_info.get("version")
        if version is not None and int(version) > _MAX_VERSION:
            raise RequestError(f"Failed to convert version: {version} to numeric.")
        return (request.match_info["name"], None if version is None else int(version),
                request.match_info.get("label"))

    def _servable(self, request: web.Request) -> Servable:
        return self.core.models.servable(*self._spec(request))

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        too_large = TooLarge(f"Request body is larger than {limit} bytes (see --max-body-bytes)")
        if request.content_length is not None and request.content_length > limit:
            raise too_large  # refuse before reading any of it
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None

    # -- handlers -----------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        name, version, label = self._spec(request)
        manager = self.core.models.manager(name)
        if label is not None:
            version = manager.resolve_label(label)
        return web.json_response({"model_version_status": manager.status(version)})

    async def metadata(self, request: web.Request) -> web.Response:
        servable = self._servable(request)
        return web.json_response(metadata_json(request.match_info["name"], servable))

    async def _within_timeout(self, handler, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(self.config.rest_timeout_seconds):
                return await handler(request)
        except TimeoutError:
            raise DeadlineExceeded(
                f"Request timed out after {self.config.rest_timeout_seconds * 1000:.0f} ms "
                "(--rest_api_timeout_in_ms)") from None

    async def predict(self, request: web.Request) -> web.Response:
        return await self._within_timeout(self._predict, request)

    async def classify(self, request: web.Request) -> web.Response:
        return await self._within_timeout(self._classify, request)

    async def regress(self, request: web.Request) -> web.Response:
        return await self._within_timeout(self._regress, request)

    async def _predict(self, request: web.Request) -> web.Response:
        # Counted as arriving until queued, so a forming batch waits for it (see batching).
        self.core.arrivals.enter()
        try:
            servable = self._servable(request)  # picked once: a swap cannot pull it away
            body = await self._read_body(request)
            parsed = parse_predict(body, servable, self.config.max_instances)
            inference.check_predict_method(parsed.signature.method_name, self.config.method_name_check)
            pending = self.core.enqueue(servable, parsed.signature, parsed.inputs, parsed.rows)
        finally:
            self.core.arrivals.leave()
        outputs = await self.core.outputs(pending)
        return web.json_response(format_predict_response(parsed, outputs))

    async def _examples_request(self, request: web.Request, proto):
        """The servable and a Classification/RegressionRequest from a REST body."""
        servable = self._servable(request)
        data = parse_json_object(await self._read_body(request))
        signature_name = data.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise RequestError("JSON Value: not formatted correctly. 'signature_name' key "
                               "must be a string value.")
        proto.model_spec.name = request.match_info["name"]
        proto.model_spec.signature_name = signature_name
        proto.input.CopyFrom(input_from_json(data))
        return servable, proto

    async def _classify(self, request: web.Request) -> web.Response:
        servable, proto = await self._examples_request(
            request, classification_pb2.ClassificationRequest())
        response = await inference.classify(self.core, servable, proto)
        results = [[[c.label, c.score] for c in item.classes]
                   for item in response.result.classifications]
        return web.json_response({"results": results})

    async def _regress(self, request: web.Request) -> web.Response:
        servable, proto = await self._examples_request(
            request, regression_pb2.RegressionRequest())
        response = await inference.regress(self.core, servable, proto)
        return web.json_response({"results": [r.value for r in response.result.regressions]})

    async def malformed(self, request: web.Request) -> web.Response:
        if request.method == "GET" and request.path.rstrip("/") == "/v1/models":
            raise RequestError("Missing model name in request.")
        raise RequestError(f"Malformed request: {request.method} {request.path}")

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.core.metrics.text(),
                            headers={"Content-Type": CONTENT_TYPE})

    async def monitoring(self, request: web.Request) -> web.Response:
        batching = self.config.batching
        return web.json_response({
            "models": {name: m.available_versions
                       for name, m in sorted(self.core.models.managers.items())},
            "batching": {"enabled": batching.enabled, "max_batch_size": batching.max_batch_size,
                         "batch_timeout_micros": round(batching.timeout_seconds * 1e6),
                         "max_enqueued_batches": batching.max_enqueued_batches},
            **self.core.stats.as_json(),
            "arriving": self.core.arrivals.count,
            "responses": {str(k): v for k, v in sorted(self.core.responses.items())},
        })
