"""The server's lifetime: load the models, listen on REST and gRPC, poll, stop on a signal.

One process, one event loop (uvloop's where installed): aiohttp (REST) and grpc.aio (gRPC) both
run in it and share one ServingCore, so both protocols see the same loaded versions and join the
same batches.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import socket
import stat
from concurrent.futures import ThreadPoolExecutor

import grpc
import tensorflow as tf
from aiohttp import web

from tfpipeline.errors import UserError

from .app import RestServer
from .core import ServerConfig, ServingCore
from .errors import RequestError
from .grpc_service import add_services
from .model_config import read_model_config_file
from .models import ModelRegistry
from .warmup_replay import load_and_warm_up

log = logging.getLogger("tfpipeline.serving")


def bind_socket(host: str, port: int, flag: str = "--rest_api_port") -> socket.socket:
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        return socket.create_server(address, family=family)
    except OSError as exc:
        raise UserError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Pick another {flag} "
            "(0 picks a free one) or check --host."
        ) from None


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's thread pools; must run before the first model is loaded.

    A server's model calls already run side by side (batch threads) next to an event loop
    that needs a core of its own. For a small model, splitting one call across cores costs
    more in hand-offs than it gains (docs/serving.md measures the MNIST CNN both ways).
    """
    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op)


async def _start_grpc(config: ServerConfig, core: ServingCore) -> tuple[grpc.aio.Server, int]:
    options = dict([("grpc.so_reuseport", 0),  # a port in use must be an error, not shared
                    ("grpc.max_receive_message_length", config.max_body_bytes),
                    ("grpc.max_send_message_length", -1)])
    options.update(config.grpc_channel_arguments)  # --grpc_channel_arguments, as given
    server = grpc.aio.server(options=list(options.items()),
                             maximum_concurrent_rpcs=config.grpc_max_concurrent_rpcs)
    add_services(server, core)
    address = f"[{config.host}]:{config.grpc_port}" if ":" in config.host \
        else f"{config.host}:{config.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise UserError(f"Cannot listen for gRPC on {address}. Pick another --port (0 picks a "
                        "free one) or check --host.")
    if config.grpc_socket_path:
        _listen_on_socket_path(server, config.grpc_socket_path)
    await server.start()
    return server, port


def _listen_on_socket_path(server: grpc.aio.Server, path: str) -> None:
    """--grpc_socket_path: gRPC over a Unix socket too (clients dial "unix:PATH"). A socket
    file left by an earlier server is replaced, as TF Serving does."""
    try:
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
        bound = server.add_insecure_port(f"unix:{path}")
    except (OSError, RuntimeError):
        bound = 0
    if not bound:
        raise UserError(f"Cannot listen for gRPC on the Unix socket {path}. Check that its "
                        "directory exists and is writable, or change --grpc_socket_path.")


async def _poll_config_file(config: ServerConfig, models: ModelRegistry) -> None:
    """Re-read --model_config_file every --model_config_file_poll_wait_seconds; apply it when
    its text changed. A broken file is logged and the current models keep serving."""
    path = config.model_config_file
    last = path.read_text()
    while True:
        await asyncio.sleep(config.model_config_poll_seconds)
        try:
            text = await asyncio.to_thread(path.read_text)
            if text == last:
                continue
            last = text
            await models.apply(read_model_config_file(path))
            log.info("applied the changed model config file %s", path)
        except (UserError, RequestError, OSError) as exc:
            log.error("model config file %s not applied, keeping the current models: %s",
                      path, getattr(exc, "message", exc))


def run(config: ServerConfig) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop's event loop where it is installed, else asyncio's.

    uvloop (libuv under asyncio's API; a dependency wherever it builds, which is not Windows)
    moves each request through the loop with less Python, so a loaded server answers more
    requests a second; nothing else changes (measured in docs/serving.md, "uvloop").
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))


async def serve(config: ServerConfig) -> None:
    """Load the models, listen, poll for new versions, and run until SIGINT/SIGTERM."""
    batching = config.batching
    log.info("starting: models %s (batching %s, max batch %d, timeout %d us, max enqueued "
             "batches %d; TensorFlow intra-op %d, inter-op %d threads; %s event loop)",
             ", ".join(f"{m.name} from {m.base_path}" for m in config.models),
             "on" if batching.enabled else "off", batching.max_batch_size,
             round(batching.timeout_seconds * 1e6), batching.max_enqueued_batches,
             config.intra_op_threads, config.inter_op_threads,
             type(asyncio.get_running_loop()).__module__.split(".")[0])
    configure_threads(config.intra_op_threads, config.inter_op_threads)
    models = ModelRegistry(functools.partial(load_and_warm_up,
                                             replay_warmup=config.enable_model_warmup))
    try:
        await models.apply(list(config.models))
    except RequestError as exc:
        raise UserError(exc.message) from None
    # TensorFlow leaves millions of long-lived Python objects; without this, a full garbage
    # collection (triggered by the many small lists JSON parsing makes) walks them all and
    # stalls every request for a few hundred milliseconds.
    gc.freeze()
    sock = bind_socket(config.host, config.rest_port)
    with ThreadPoolExecutor(config.num_batch_threads, thread_name_prefix="model") as executor:
        core = ServingCore(config, models, executor)
        grpc_server, grpc_port = await _start_grpc(config, core)
        runner = web.AppRunner(RestServer(core).make_app(), access_log=None,
                               handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        url = _url(sock)
        grpc_host = f"[{config.host}]" if ":" in config.host else config.host
        log.info("listening: REST on %s, gRPC on %s:%d%s", url, grpc_host, grpc_port,
                 f" and unix:{config.grpc_socket_path}" if config.grpc_socket_path else "")
        # Stable, parseable lines on stdout: scripts and tests started with port 0 read them.
        names = ", ".join(m.name for m in config.models)
        print(f"Serving gRPC at {grpc_host}:{grpc_port}", flush=True)
        print(f"Serving {names} at {url}", flush=True)
        tasks = []
        if config.poll_wait_seconds > 0:
            tasks.append(asyncio.create_task(models.poll_forever(config.poll_wait_seconds)))
        if config.model_config_file and config.model_config_poll_seconds > 0:
            tasks.append(asyncio.create_task(_poll_config_file(config, models)))
        try:
            await _wait_for_stop_signal()
        finally:
            for task in tasks:
                task.cancel()
            await grpc_server.stop(grace=5)
            await runner.cleanup()
            log.info("stopped serving %s", names)


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
