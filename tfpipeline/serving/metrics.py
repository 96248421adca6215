"""Prometheus metrics, written with prometheus_client, served at the monitoring config's path.

  tfpipeline_serving_requests_total{model, api, status}   requests answered, by status code
  tfpipeline_serving_request_latency_seconds{model, api}   time from arrival to answer
  tfpipeline_serving_batch_size                            examples per model call
  tfpipeline_serving_queue_depth{model}                    examples accepted, not yet answered
  tfpipeline_serving_loaded_versions{model}                versions currently AVAILABLE
`api` is TF Serving's method name (`Predict`, `GetModelMetadata`, `GetModelStatus`, ...),
`status` the canonical status code name (`OK`, `INVALID_ARGUMENT`, `UNAVAILABLE`, ...), the
same for REST and gRPC. Each server has its own registry, so nothing is process-global.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 0.25 ms: a small model's batch-1 predict lands in the first few.
_LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                    1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _StateCollector:
    """Gauges read at scrape time from the live model table (no bookkeeping to drift)."""

    def __init__(self, registry_of_models):
        self._models = registry_of_models

    def collect(self):
        depth = GaugeMetricFamily("tfpipeline_serving_queue_depth",
                                  "Examples accepted and not yet answered by a model call",
                                  labels=["model"])
        loaded = GaugeMetricFamily("tfpipeline_serving_loaded_versions",
                                   "Model versions currently available", labels=["model"])
        for name, manager in sorted(self._models.managers.items()):
            servables = manager.servables()
            waiting = sum(b.waiting_rows for s in servables for b in s.batchers.values())
            depth.add_metric([name], waiting)
            loaded.add_metric([name], len(servables))
        yield depth
        yield loaded


class Metrics:
    def __init__(self, models):
        """Args:
            models: the server's ModelRegistry (read at each scrape).
        """
        self.registry = CollectorRegistry()
        self.requests = Counter("tfpipeline_serving_requests", "Requests answered",
                                ["model", "api", "status"], registry=self.registry)
        self.latency = Histogram("tfpipeline_serving_request_latency_seconds",
                                 "Time from a request's arrival to its answer",
                                 ["model", "api"], buckets=_LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_size = Histogram("tfpipeline_serving_batch_size", "Examples per model call",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(models))

    def observe(self, model: str, api: str, status: str, seconds: float) -> None:
        self.requests.labels(model, api, status).inc()
        self.latency.labels(model, api).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
