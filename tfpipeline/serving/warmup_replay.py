"""Load a version and replay its warm-up file before it may be served.

The loader VersionManager calls: `load_servable`, then every PredictLog of the version's
`assets.extra/tf_serving_warmup_requests` (tfpipeline.export.warmup) is run through its signature.
The version stays LOADING meanwhile and becomes AVAILABLE only once all have run; a record
that does not match the model fails the load, as in TF Serving.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tfpipeline.export.warmup import read_warmup_requests
from tfpipeline.signatures import DEFAULT as DEFAULT_SIGNATURE

from .errors import RequestError
from .servable import Servable, load_servable
from .tensors import input_arrays

log = logging.getLogger("tfpipeline.serving")


def replay(servable: Servable) -> int:
    """Run the warm-up records; returns how many ran. Raises ValueError on a bad record."""
    logs = read_warmup_requests(servable.path)
    for i, record in enumerate(logs):
        kind = record.WhichOneof("log_type")
        if kind != "predict_log":
            raise ValueError(f"warm-up record {i} is a {kind}; only predict_log records are "
                             "supported (these models expose predict signatures)")
        request = record.predict_log.request
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name)
        if signature is None:
            raise ValueError(f"warm-up record {i} asks for signature \"{name}\", which the "
                             f"model does not have")
        try:
            arrays, _ = input_arrays(request.inputs, signature)
        except RequestError as exc:
            raise ValueError(f"warm-up record {i} does not fit signature \"{name}\": "
                             f"{exc.message}") from None
        signature(arrays)
    return len(logs)


def load_and_warm_up(path: Path, version: int, replay_warmup: bool = True) -> Servable:
    """Load a version and, unless `replay_warmup` is False (--enable_model_warmup=false),
    replay its warm-up file."""
    servable = load_servable(path, version)
    if not replay_warmup:
        return servable
    start = time.monotonic()
    count = replay(servable)
    if count:
        servable.load_seconds += time.monotonic() - start
        log.info("replayed %d warm-up requests for version %d from %s", count, version, path)
    return servable
