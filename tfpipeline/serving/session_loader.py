"""A SavedModel in a TF1 session, called the way TF Serving calls it.

TF Serving runs every model in a session, feeding and fetching tensors by graph name, and so
does our server (`servable`), TF2 exports included: their MetaGraph holds the same graph,
their variables a saver and their tables an init op. That also serves what
`tf.saved_model.load` cannot: TF 1.x exports whose signatures carry no shapes, or whose
variables are reference variables (`DT_FLOAT_REF` outputs).

A signature becomes a callable made with the session's `MakeCallable` (through
`Session._make_callable_from_options`), not `Session.run`: `run` checks each fed array's
shape against the placeholder in Python and refuses what the graph itself would accept
(TF Serving passes `[3]` to a `[-1, 1]` placeholder, and `y = 0.5x + 2` computes it).
Callables are made once per set of fed and fetched tensors and reused; a session and its
callables are safe to call from several threads at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2


def open_session(path: Path, tags: list[str]):
    """A session holding the SavedModel's graph, variables restored and init ops run.

    Args:
        path: the version directory.
        tags: the MetaGraph's tags (TF Serving loads the "serve" graph).

    Returns:
        The `tf.compat.v1.Session`; it must stay referenced while the model is served.
    """
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads())
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    with _quiet_tensorflow_logger():
        tf.compat.v1.saved_model.loader.load(session, tags, str(path))
    return session


@contextlib.contextmanager
def _quiet_tensorflow_logger():
    """Hold back TensorFlow's Python log below ERROR: the TF1 loader announces its own
    deprecation (it is not going away from TF Serving's way of running models) and each
    variable restore, on every load; neither tells a server's reader anything."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def session_call(session, signature_def) -> Callable[[dict[str, np.ndarray]], dict]:
    """A function from {input alias: array} to {output alias: array} for one signature.

    Args:
        session: from `open_session`.
        signature_def: the SignatureDef proto (its TensorInfos name the graph tensors).

    Returns:
        The function; it raises `tf.errors.OpError` when the graph rejects the values.
    """
    callables: dict[tuple, object] = {}
    lock = threading.Lock()
    outputs = list(signature_def.outputs)

    def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        aliases = tuple(arrays)
        handle = callables.get(aliases)
        if handle is None:
            with lock:
                options = config_pb2.CallableOptions(
                    feed=[signature_def.inputs[a].name for a in aliases],
                    fetch=[signature_def.outputs[a].name for a in outputs])
                handle = session._make_callable_from_options(options)
                callables[aliases] = handle
        values = handle(*(np.asarray(arrays[a]) for a in aliases))
        return dict(zip(outputs, values))

    return run
