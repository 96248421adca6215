"""What REST and gRPC share: the model table, the batching queues, the model threads, the
metrics. Both front ends call `ServingCore.predict`, so a request reaches the same loaded
version and joins the same batch whichever protocol it came by."""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from .batching import Arrivals, BatchConfig, Batcher, BatchStats
from .errors import status_error
from .metrics import Metrics
from .models import ModelRegistry
from .servable import Servable, Signature


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs; built by tfpipeline.serve from the command line."""

    models: tuple = ()  # ModelSpec, from --model_name/--model_base_path or --model_config_file
    model_config_file: Path | None = None
    model_config_poll_seconds: float = 0.0
    host: str = "127.0.0.1"
    rest_port: int = 8501
    grpc_port: int = 8500
    batching: BatchConfig = BatchConfig()
    num_batch_threads: int = 2
    intra_op_threads: int = 0  # 0: TensorFlow's default
    inter_op_threads: int = 0
    poll_wait_seconds: float = 2.0
    max_body_bytes: int = 16 * 1024 * 1024
    max_instances: int = 1024
    rest_timeout_seconds: float = 30.0
    prometheus_path: str | None = None
    grpc_max_concurrent_rpcs: int | None = None
    grpc_socket_path: str | None = None  # also serve gRPC on this Unix socket
    grpc_channel_arguments: tuple = ()  # (name, value) pairs for the gRPC server
    tensor_content: bool = False  # --enable_serialization_as_tensor_content
    method_name_check: bool = False  # --enable_signature_method_name_check
    enable_model_warmup: bool = True


class ServingCore:
    def __init__(self, config: ServerConfig, models: ModelRegistry, executor: Executor):
        self.config = config
        self.models = models
        self.executor = executor
        self.stats = BatchStats()
        self.arrivals = Arrivals()
        self.responses: Counter = Counter()  # HTTP status -> count (REST)
        self.metrics = Metrics(models)
        self.stats.on_batch = self.metrics.batch_size.observe

    def metric_model(self, name: str) -> str:
        """A model name for metric labels: unknown names would let clients grow the series."""
        return name if name in self.models.managers else "(unknown)"

    def record(self, model: str, api: str, status: str, start: float) -> None:
        self.metrics.observe(self.metric_model(model), api, status, time.monotonic() - start)

    def batcher(self, servable: Servable, signature: Signature) -> Batcher:
        batcher = servable.batchers.get(signature.name)
        if batcher is None:
            batcher = Batcher(signature, batchable=signature.batchable,
                              config=self.config.batching, executor=self.executor,
                              stats=self.stats, arrivals=self.arrivals)
            servable.batchers[signature.name] = batcher
        return batcher

    def enqueue(self, servable: Servable, signature: Signature, inputs: dict[str, np.ndarray],
                rows: int):
        """Queue validated inputs (raises Unavailable when full); await the result with
        `outputs`. Only inputs that all share dimension 0 (`rows`) may join a batch."""
        mergeable = bool(inputs) and all(a.ndim and a.shape[0] == rows for a in inputs.values())
        return self.batcher(servable, signature).enqueue(inputs, rows, mergeable)

    @staticmethod
    async def outputs(pending) -> dict[str, np.ndarray]:
        try:
            return await pending
        except tf.errors.OpError as exc:
            # Requests are passed to the graph as sent (shapes included), so this is the
            # model refusing them: its own error and status code, as TF Serving answers.
            raise status_error(_CODE_NAMES.get(exc.error_code, "UNKNOWN"),
                               model_error(exc.message)) from None


_CODE_NAMES = {getattr(tf.errors, name): name for name in (
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED")}


def model_error(message: str) -> str:
    """The line of a TensorFlow error that says what is wrong: graph errors wrap it in
    "Graph execution error:", "Detected at node ..." and "[[{{node ...}}]]" lines."""
    noise = ("Graph execution error:", "Detected at node", "<stack traces unavailable>", "[[")
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(noise)]
    text = useful[-1] if useful else message.strip()
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", text)
