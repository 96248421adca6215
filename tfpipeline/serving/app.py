"""The aiohttp application: TF Serving's REST routes, JSON errors, and the server's lifetime.

Routes (as TF Serving):
  GET  /v1/models/{name}[/versions/{v}]            model version status
  GET  /v1/models/{name}[/versions/{v}]/metadata   signature defs
  POST /v1/models/{name}[/versions/{v}]:predict    row or columnar predict
and   GET  /monitoring/stats                         request/batching counters (ours)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
from aiohttp import web

from tfpipeline.errors import UserError

from .batching import Arrivals, BatchConfig, Batcher, BatchStats
from .errors import NotFound, RequestError, TooLarge
from .servable import Servable, Signature, load_servable
from .validation import format_predict_response, parse_predict
from .versions import VersionManager

log = logging.getLogger("tfpipeline.serving")

_MODEL = "/v1/models/{name:[^/:]+}"
_VERSION = _MODEL + "/versions/{version:[0-9]+}"


@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    base_path: Path
    host: str = "127.0.0.1"
    port: int = 8501
    batching: BatchConfig = BatchConfig()
    num_batch_threads: int = 2
    intra_op_threads: int = 0  # 0: TensorFlow's default
    inter_op_threads: int = 0
    poll_wait_seconds: float = 2.0
    num_versions: int = 1
    max_body_bytes: int = 16 * 1024 * 1024
    max_instances: int = 1024


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ModelServer:
    """Request handlers over a VersionManager; holds the shared batching state."""

    def __init__(self, config: ServerConfig, manager: VersionManager, executor):
        self.config = config
        self.manager = manager
        self.executor = executor
        self.stats = BatchStats()
        self.arrivals = Arrivals()
        self.responses: Counter = Counter()

    def make_app(self) -> web.Application:
        # client_max_size makes aiohttp stop reading a body (chunked ones too) past the limit.
        app = web.Application(client_max_size=self.config.max_body_bytes,
                              middlewares=[self._json_errors])
        # aiohttp tries routes in order, each a regex match: predict, the hot one, goes first.
        app.router.add_post(_MODEL + ":predict", self.predict)
        app.router.add_post(_VERSION + ":predict", self.predict)
        app.router.add_get(_MODEL, self.status)
        app.router.add_get(_VERSION, self.status)
        app.router.add_get(_MODEL + "/metadata", self.metadata)
        app.router.add_get(_VERSION + "/metadata", self.metadata)
        app.router.add_get("/monitoring/stats", self.monitoring)
        return app

    @web.middleware
    async def _json_errors(self, request: web.Request, handler) -> web.StreamResponse:
        """Every error leaves as {"error": ...}; only real server faults are 500s."""
        try:
            response = await handler(request)
        except RequestError as exc:
            response = error_response(exc.status, exc.message)
        except web.HTTPException as exc:  # no such route, wrong method
            if exc.status < 400:
                raise
            response = error_response(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            response = error_response(500, "Internal server error; see the server log")
        self.responses[response.status] += 1
        return response

    # -- lookups ------------------------------------------------------------------------

    def _check_model(self, request: web.Request) -> int | None:
        name = request.match_info["name"]
        if name != self.config.model_name:
            raise NotFound(f"Servable not found for request: model \"{name}\" is not served "
                           f"here (this server serves \"{self.config.model_name}\")")
        version = request.match_info.get("version")
        return None if version is None else int(version)

    def _servable(self, request: web.Request) -> Servable:
        return self.manager.get(self._check_model(request))

    def _batcher(self, servable: Servable, signature: Signature) -> Batcher:
        batcher = servable.batchers.get(signature.name)
        if batcher is None:
            batcher = Batcher(signature, batchable=signature.batchable,
                              config=self.config.batching, executor=self.executor,
                              stats=self.stats, arrivals=self.arrivals)
            servable.batchers[signature.name] = batcher
        return batcher

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
        version = self._check_model(request)
        return web.json_response({"model_version_status": self.manager.status(version)})

    async def metadata(self, request: web.Request) -> web.Response:
        servable = self._servable(request)
        signature_def = {name: sig.metadata() for name, sig in servable.signatures.items()}
        return web.json_response({
            "model_spec": {"name": self.config.model_name, "signature_name": "",
                           "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": signature_def}},
        })

    async def predict(self, request: web.Request) -> web.Response:
        # Counted as arriving until queued, so a forming batch waits for it (see batching).
        self.arrivals.enter()
        try:
            servable = self._servable(request)  # picked once: a swap cannot pull it away
            body = await self._read_body(request)
            parsed = parse_predict(body, servable.signatures, self.config.max_instances)
            pending = self._batcher(servable, parsed.signature).enqueue(parsed.inputs, parsed.rows)
        finally:
            self.arrivals.leave()
        try:
            outputs = await pending
        except tf.errors.InvalidArgumentError as exc:
            # Validation matches the signature, so this is the model rejecting values.
            raise RequestError(f"Model rejected the input: {exc.message.splitlines()[0]}") from None
        return web.json_response(format_predict_response(parsed, outputs))

    async def monitoring(self, request: web.Request) -> web.Response:
        batching = self.config.batching
        return web.json_response({
            "model": self.config.model_name,
            "available_versions": self.manager.available_versions,
            "batching": {"enabled": batching.enabled, "max_batch_size": batching.max_batch_size,
                         "batch_timeout_micros": round(batching.timeout_seconds * 1e6)},
            **self.stats.as_json(),
            "arriving": self.arrivals.count,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
        })


def bind_socket(host: str, port: int) -> socket.socket:
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        return socket.create_server(address, family=family)
    except OSError as exc:
        raise UserError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Pick another --port "
            "(0 picks a free one) or check --host."
        ) from None


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's thread pools; must run before the first model is loaded.

    A server's model calls already run side by side (batch threads) next to an event loop
    that needs a core of its own. For a small model, splitting one call across cores costs
    more in hand-offs than it gains: on 2 cores this MNIST CNN uses 0.55 ms of CPU per image
    at batch 1 with one intra-op thread and about 0.9 ms with TensorFlow's default of two.
    """
    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op)


async def serve(config: ServerConfig) -> None:
    """Load the model, listen, poll for new versions, and run until SIGINT/SIGTERM."""
    log.info("starting: model %s from %s (batching %s, max batch %d, timeout %d us; "
             "TensorFlow intra-op %d, inter-op %d threads)",
             config.model_name, config.base_path,
             "on" if config.batching.enabled else "off", config.batching.max_batch_size,
             round(config.batching.timeout_seconds * 1e6), config.intra_op_threads,
             config.inter_op_threads)
    configure_threads(config.intra_op_threads, config.inter_op_threads)
    manager = VersionManager(config.model_name, config.base_path, load_servable,
                             config.num_versions)
    await manager.refresh()
    if not manager.available_versions:
        failures = "; ".join(f"version {s['version']}: {s['status']['error_message']}"
                             for s in manager.status())
        raise UserError(
            f"No version of model {config.model_name} under {config.base_path} could be "
            f"loaded ({failures or 'no complete version directories'})."
        )
    # TensorFlow leaves millions of long-lived Python objects; without this, a full garbage
    # collection (triggered by the many small lists JSON parsing makes) walks them all and
    # stalls every request for a few hundred milliseconds.
    gc.freeze()
    sock = bind_socket(config.host, config.port)
    with ThreadPoolExecutor(config.num_batch_threads, thread_name_prefix="model") as executor:
        server = ModelServer(config, manager, executor)
        runner = web.AppRunner(server.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        url = _url(sock)
        log.info("listening on %s", url)
        # A stable, parseable line on stdout: scripts and tests started with --port 0 read it.
        print(f"Serving {config.model_name} at {url}", flush=True)
        poller = None
        if config.poll_wait_seconds > 0:
            poller = asyncio.create_task(manager.poll_forever(config.poll_wait_seconds))
        try:
            await _wait_for_stop_signal()
        finally:
            if poller:
                poller.cancel()
            await runner.cleanup()
            log.info("stopped serving %s", config.model_name)


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
