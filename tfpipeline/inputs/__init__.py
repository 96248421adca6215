"""Input kinds: what every stage after the data asks about the model's input, instead of
assuming images.

An `InputSpec` describes one kind of input (images, text, tables) for one dataset: what the
Keras model takes, what the exported signatures take and run inside the graph, how a user's
file or string becomes a request, how TensorBoard shows samples and mistakes, how an
attribution is drawn, and what TFLite calibrates on. The data stage builds the spec (it knows
the data) and puts it on `DatasetSpec.input`; export, report, predict and the warm-up file only
call its methods. A new kind is a new module here that subclasses `InputSpec` and calls
`register` (docs/inputs.md says what it must provide, with `image.py` as the worked example).

"Examples" below are a batch of raw inputs as the test split holds them in memory
(`report.evaluation.collect`): a NumPy array (uint8 images, string text) or, for several named
inputs, a dict of arrays of equal length. The Keras model is called on examples as they are.

This package may import data and models; nothing under it imports training, tuning, export,
report or serving.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

Examples = Any  # np.ndarray, or dict[str, np.ndarray] for several named inputs

_KINDS: dict[str, type[InputSpec]] = {}


class InputSpec(abc.ABC):
    """One kind of model input, for one dataset. Subclasses are small frozen dataclasses."""

    kind: ClassVar[str]

    # -- identity ---------------------------------------------------------------------------
    @abc.abstractmethod
    def to_json(self) -> dict:
        """What metadata.json records under `dataset.input` (with "kind"); `from_json` reads it back."""

    @classmethod
    @abc.abstractmethod
    def from_json(cls, record: dict) -> InputSpec:
        """The spec `to_json` wrote."""

    # -- export -----------------------------------------------------------------------------
    @abc.abstractmethod
    def signatures(self, model) -> dict[str, Any]:
        """The export's serving functions by signature name, `serving_default` first: each a
        `tf.function` with an input signature, returning `classes` and `probabilities`."""

    @abc.abstractmethod
    def request(self, examples: Examples) -> dict[str, np.ndarray]:
        """`serving_default`'s keyword inputs for a batch of examples."""

    def verify(self, loaded, examples: Examples) -> None:
        """Checks of the reloaded SavedModel beyond `serving_default` (e.g. that another
        signature gives the same classes); raises `errors.ExportVerificationError`."""

    def warmup_requests(self, examples: Examples) -> dict[str, dict[str, np.ndarray]]:
        """TF Serving warm-up requests: signature name → its inputs, from a few examples."""
        return {"serving_default": self.request(examples)}

    def tflite_refusal(self) -> str | None:
        """None if `--export-tflite` works for this input, else the sentence saying why not."""
        return None

    def calibration(self, examples: Examples) -> Iterator[list[np.ndarray]]:
        """TFLite's representative dataset: one `[input]` list per example."""
        raise NotImplementedError(self.tflite_refusal() or "no TFLite calibration")

    # -- predict ----------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, sources: Sequence[str], signature_inputs: dict[str, Any]) -> tuple[list[str], dict]:
        """A user's files or strings → (a label per example, the request's inputs by name) for a
        signature whose inputs are `signature_inputs` (name → `serving.tensors`-style info with
        `dtype` and `shape`). Raises `errors.UserError` naming the source it cannot read."""

    def choose_signature(self, available: Sequence[str]) -> str:
        """Which signature `predict` uses when the user names none."""
        return "serving_default"

    # -- report -----------------------------------------------------------------------------
    @abc.abstractmethod
    def log_samples(self, tag: str, examples: Examples, labels: np.ndarray, predictions: np.ndarray,
                    class_names: Sequence[str], step: int) -> None:
        """Write samples with predicted and true classes to the current TensorBoard writer."""

    def log_attributions(self, model, examples: Examples, labels: np.ndarray, class_names: Sequence[str],
                         step: int) -> None:
        """Write attribution summaries for a few samples and the worst mistakes (optional)."""

    def explain(self, model, example: Examples, out: Path, class_names: Sequence[str]) -> str:
        """`predict --explain`: write the attribution for one example to `out`; return a line."""
        raise NotImplementedError(f"--explain is not available for {self.kind} inputs")


def register(cls: type[InputSpec]) -> type[InputSpec]:
    """Class decorator: make `cls.kind` known to `from_json`."""
    _KINDS[cls.kind] = cls
    return cls


def from_json(record: dict) -> InputSpec:
    """The spec recorded in metadata.json (`dataset.input`)."""
    kind = record.get("kind", "image")
    if kind not in _KINDS:
        raise ValueError(f"Unknown input kind {kind!r}; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind].from_json(record)


def kinds() -> list[str]:
    return sorted(_KINDS)
