"""Accuracy of an export's `serving_bytes` on the raw test files of a folder dataset.

    python -m bench.bytes_accuracy EXPORT_VERSION_DIR

Reads the dataset folder and split from the version's metadata.json, sends every test file's
bytes (as they are on disk: JPEG or PNG, any size) through `serving_bytes`, and prints that
accuracy next to the metadata's test accuracy (issue 14, acceptance 1: within 1 point).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tfpipeline import start_tensorflow_quietly

start_tensorflow_quietly()  # TensorFlow loads here, without its C++ start-up noise

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfpipeline.data import folders  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bytes_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", type=Path, help="an exported version folder, e.g. exported/digits/1")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    metadata = json.loads((args.version / "metadata.json").read_text())
    dataset = metadata["dataset"]["source"]
    if dataset.get("kind") != "folder":
        raise SystemExit(f"{args.version} was not trained on a folder dataset")
    held = dataset["split"]["held_out"]
    fraction = next(iter(held.values()))["fraction"] if held else metadata.get("validation_fraction", 0.1)
    seed = metadata["training"]["seed"]
    idx = folders.index(dataset["path"], validation_fraction=fraction, seed=seed)
    files, labels = idx.files["test"], np.array(idx.labels["test"])
    serve = tf.saved_model.load(str(args.version)).signatures["serving_bytes"]
    classes = []
    for start in range(0, len(files), args.batch):
        raw = [Path(p).read_bytes() for p in files[start:start + args.batch]]
        classes.append(serve(image_bytes=tf.constant(raw))["classes"].numpy())
    accuracy = float((np.concatenate(classes) == labels).mean())
    reported = metadata["metrics"]["test"]["accuracy"]
    print(f"serving_bytes on {len(files)} raw test files: {accuracy:.2%}; metadata test accuracy "
          f"{reported:.2%}; difference {100 * (accuracy - reported):+.2f} points")
    return 0 if abs(accuracy - reported) <= 0.01 else 1


if __name__ == "__main__":
    raise SystemExit(main())
