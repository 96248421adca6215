"""Why did the model decide? `predict --explain` on an exported version.

The attribution itself belongs to the input kind (`InputSpec.explain`; for images,
integrated gradients on the pixels: tfpipeline/inputs/image_report.py, and
docs/explanations.md). This module rebuilds the Keras model of an exported version from its
metadata.json (family, hyperparameters, input spec) with the SavedModel's own variables, so
that gradients can flow through the very computation that is served, and hands it to the spec.
The TensorBoard attribution images at the end of a run come from `InputSpec.log_attributions`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfpipeline import inputs
from tfpipeline import signatures as names
from tfpipeline.errors import UserError
from tfpipeline.inputs import InputSpec


def read_metadata(version_dir: Path) -> dict:
    """An exported version's metadata.json.

    Raises:
        UserError: it is missing or unreadable (a SavedModel not written by the pipeline).
    """
    try:
        return json.loads((Path(version_dir) / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--explain needs the version's metadata.json (written by the pipeline's export); "
                        f"cannot read it in {version_dir}: {exc}") from None


def input_spec(metadata: dict, serve) -> InputSpec:
    """The input spec recorded in metadata.json (`dataset.input`); for an export made before the
    spec was recorded, the one `serving_default`'s inputs describe."""
    record = metadata.get("dataset", {}).get("input")
    if record is not None:
        return inputs.from_json(record)
    described = {name: inputs.InputInfo(name, np.dtype(spec.dtype.as_numpy_dtype),
                                        None if spec.shape.rank is None else tuple(spec.shape.as_list()))
                 for name, spec in serve.structured_input_signature[1].items()}
    return inputs.from_signature(described)


def explain_file(version_dir: Path, source: str, out: Path) -> str:
    """`predict --explain`: the attribution of `source` (a file or string) by the exported version
    at `version_dir`, written to `out`; returns the line to print."""
    model, spec = load_exported(version_dir)
    class_names = read_metadata(version_dir)["dataset"]["class_names"]
    return spec.explain(model, source, out, class_names)


def load_exported(version_dir: Path) -> tuple[keras.Model, InputSpec]:
    """The Keras model of an exported version: rebuilt from its metadata.json (family and
    hyperparameters) with the SavedModel's own variables, checked against its signature.

    The SavedModel's signature takes the model's input dtype only (for images uint8: no gradient
    reaches it); the rebuilt model computes the same function and can be fed floats.

    Returns:
        The rebuilt model and the version's input spec.

    Raises:
        UserError: no usable metadata.json, or the rebuilt model differs from the SavedModel.
    """
    from tfpipeline import models
    from tfpipeline.training import ensemble

    version_dir = Path(version_dir)
    metadata = read_metadata(version_dir)
    try:
        family, hyperparameters = metadata["model"]["family"], metadata["model"]["hyperparameters"]
        num_classes = len(metadata["dataset"]["class_names"])
        members = int(metadata["model"].get("members", 1))
    except (KeyError, TypeError) as exc:
        raise UserError(f"--explain needs the version's metadata.json (written by the pipeline's export); "
                        f"{version_dir}/metadata.json has no {exc}") from None
    loaded = tf.saved_model.load(str(version_dir))
    serve = loaded.signatures[names.DEFAULT]
    spec = input_spec(metadata, serve)
    hp = models.hyperparams(family, hyperparameters, kind=spec.kind)
    # Images are built on the signature's shape; text and tables on their spec (`input=`).
    shape = tuple(next(iter(serve.structured_input_signature[1].values())).shape[1:]) if spec.kind == "image" else ()
    model = ensemble.combine([models.build(family, shape, num_classes, hp, input=spec) for _ in range(members)])
    # Keras's exporter saves the model's variables in `model.variables` order. Names agree but
    # for the number Keras appends to auto-named ones (dropout's seed_generator_22 in one
    # process is seed_generator_3 in another), so compare them without it, and the shapes.
    saved, mine = list(loaded.variables), list(model.variables)
    if len(saved) != len(mine) or any(
            _unnumbered(a.name.removesuffix(":0")) != _unnumbered(b.path) or tuple(a.shape) != tuple(b.shape)
            for a, b in zip(saved, mine)):
        raise UserError(f"The SavedModel in {version_dir} does not hold the variables of a {family} model with "
                        f"its metadata's hyperparameters; --explain cannot rebuild it.")
    for source, variable in zip(saved, mine):
        variable.assign(source)
    probe = spec.random_examples(4)
    expected = serve(**{k: tf.constant(v) for k, v in spec.request(probe).items()})[names.PROBABILITIES]
    got = tf.nn.softmax(model(tf.nest.map_structure(tf.constant, probe), training=False), -1)
    if not np.allclose(expected.numpy(), got.numpy(), atol=1e-4):
        raise UserError(f"The model rebuilt from {version_dir}/metadata.json does not reproduce the SavedModel's "
                        "outputs; --explain cannot explain it.")
    return model, spec


def _unnumbered(name: str) -> str:
    return re.sub(r"_\d+(?=/|$)", "", name)
