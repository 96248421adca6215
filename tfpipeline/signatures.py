"""Names shared by the export, the server and the clients: signature keys, input and output
names, TF Serving's method names, and which folder names are versions. One home for each, so
the exporter, the promotion gate, the server and the clients cannot disagree. Imports nothing
heavy (the server's version watcher imports it without TensorFlow)."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT = "serving_default"  # TF Serving's default signature key
IMAGE_BYTES = "serving_bytes"  # encoded image files in (the image input's second signature)

IMAGES = "images"  # serving_default's input for images: uint8 [-1, H, W, C]
TEXT = "text"  # serving_default's input for text: string [-1], one document per element
IMAGE_BYTES_INPUT = "image_bytes"  # serving_bytes' input: string [-1]
CLASSES = "classes"
PROBABILITIES = "probabilities"

TABLE_CLASSIFY = "classify"  # a table's TF Serving classification signature (serialized tf.Examples in)
CLASSIFY_INPUTS = "inputs"  # its input, as TF Serving's Classify API names it
SCORES = "scores"  # its output beside `classes` (the class names)

# SignatureDefs a SavedModel keeps for its loader, not for serving (TF2 exports carry the init
# op's): TensorFlow's `saved_model.constants` INIT_OP_SIGNATURE_KEY and TRAIN_OP_SIGNATURE_KEY.
# TF Serving lists them in a model's metadata but they are not signatures to call.
LOADER_SIGNATURES = frozenset({"__saved_model_init_op", "__saved_model_train_op"})

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# A version folder is named by plain ASCII digits (TF Serving's rule); hidden `.tmp-*` folders
# of an export in progress and `candidates/` never match.
_VERSION_NAME = re.compile(r"[0-9]{1,18}")


def version_dirs(base: Path) -> dict[int, Path]:
    """Version number → folder, for every integer-named folder under `base` (none if `base` is
    missing). An empty or half-copied version folder counts: it holds that number, so an export
    never publishes over it and a server reports it as failing to load instead of skipping it."""
    found: dict[int, Path] = {}
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        if _VERSION_NAME.fullmatch(entry.name) and entry.is_dir():
            found.setdefault(int(entry.name), Path(entry.path))
    return found
