"""Input kinds: what every stage after the data asks about the model's input, instead of
assuming images.

An `InputSpec` describes one kind of input (images, text, tables) for one dataset: what the
Keras model takes, what the exported signatures take and run inside the graph, how a user's
file or string becomes a request, how TensorBoard shows samples and mistakes, how an
attribution is drawn, and what TFLite calibrates on. The data stage builds the spec (it knows
the data) and puts it on `DatasetSpec.input`; export, report, predict and the warm-up file only
call its methods. A new kind is a new module here that subclasses `InputSpec`, is decorated
with `register` and is named in `KIND_MODULES` (docs/inputs.md says what it must provide,
with `image.py` as the worked example). `InputInfo` is how a signature's inputs are described
to a spec, and `count`/`take` count and slice examples of either form.

"Examples" below are a batch of raw inputs as the test split holds them in memory
(`report.evaluation.collect`): a NumPy array (uint8 images, string text) or, for several named
inputs, a dict of arrays of equal length. The Keras model is called on examples as they are.

This package may import data and models; nothing under it imports training, tuning, export,
report or serving.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tfpipeline import signatures as names
from tfpipeline.errors import UserError

Examples = Any  # np.ndarray, or dict[str, np.ndarray] for several named inputs

_KINDS: dict[str, type[InputSpec]] = {}


@dataclasses.dataclass(frozen=True)
class InputInfo:
    """One input of a signature as a client sees it (`serving.clients`); `serving.servable.TensorInfo`
    has the same fields.

    Args:
        name: the input's name in the signature.
        dtype: its NumPy dtype (`object` for strings).
        shape: its dimensions, None for any size; None for an unknown rank.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None


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

    def signature_metadata(self, examples: Examples) -> dict:
        """What metadata.json records under `export.signatures` (signature name → a description
        of its input), after `verify` checked them on `examples`. By default `serving_default`'s
        inputs as `request` builds them."""
        one = self.request(take(examples, slice(0, 1)))
        return {names.DEFAULT: {"inputs": {name: {"dtype": str(value.dtype), "shape": [-1, *value.shape[1:]]}
                                           for name, value in one.items()}}}

    def method_names(self) -> dict[str, str]:
        """Signature name → its method name, for signatures that are not TF Serving predict
        signatures (e.g. a classify one); the export writes them into saved_model.pb."""
        return {}

    def warmup_requests(self, examples: Examples) -> dict[str, dict[str, np.ndarray]]:
        """TF Serving warm-up requests: signature name → its inputs, from a few examples."""
        return {names.DEFAULT: self.request(examples)}

    def tflite_refusal(self) -> str | None:
        """None if `--export-tflite` works for this input, else the sentence saying why not."""
        return None

    def calibration(self, examples: Examples) -> Iterator[dict[str, np.ndarray]]:
        """TFLite's representative dataset: `serving_default`'s inputs (name → a batch of one)
        per example."""
        raise NotImplementedError(self.tflite_refusal() or "no TFLite calibration")

    # -- predict ----------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, sources: Sequence[str], signature_inputs: dict[str, Any]) -> tuple[list[str], dict]:
        """A user's files or strings → (a label per example, the request's inputs by name) for a
        signature whose inputs are `signature_inputs` (name → `serving.tensors`-style info with
        `dtype` and `shape`). Raises `errors.UserError` naming the source it cannot read."""

    def choose_signature(self, available: Sequence[str]) -> str:
        """Which signature `predict` uses when the user names none."""
        return names.DEFAULT

    @classmethod
    def from_signature(cls, inputs: dict[str, InputInfo]) -> InputSpec | None:
        """The spec of a model without our metadata.json (a server's, TF Serving's), from its
        `serving_default` inputs; None when they are not this kind's."""
        return None

    def random_examples(self, count: int, seed: int = 0) -> Examples:
        """`count` valid examples (any content): `predict --explain` checks the model it rebuilt
        from the metadata against the SavedModel on them."""
        raise NotImplementedError(f"no random {self.kind} examples")

    # -- report -----------------------------------------------------------------------------
    @abc.abstractmethod
    def log_samples(self, split: str, examples: Examples, labels: np.ndarray, predictions: np.ndarray,
                    class_names: Sequence[str], step: int) -> None:
        """Write samples with predicted and true classes to the current TensorBoard writer
        (`split`: "test" or "validation", for the descriptions)."""

    def log_attributions(self, model, examples: Examples, labels: np.ndarray, class_names: Sequence[str],
                         step: int) -> None:
        """Write attribution summaries for a few samples and the worst mistakes (optional)."""

    def log_embeddings(self, model, logdir: Path) -> None:
        """Write what TensorBoard's Projector shows (learned embeddings with their labels) into
        `logdir` (optional)."""

    def explain(self, model, source: str, out: Path, class_names: Sequence[str]) -> str:
        """`predict --explain`: read the user's file or string `source`, write the attribution
        for it to `out`; return the line to print."""
        raise UserError(f"--explain is not available for {self.kind} inputs")


def register(cls: type[InputSpec]) -> type[InputSpec]:
    """Class decorator: make `cls.kind` known to `from_json`."""
    _KINDS[cls.kind] = cls
    return cls


def from_json(record: dict) -> InputSpec:
    """The spec recorded in metadata.json (`dataset.input`).

    Raises:
        ValueError: the record names a kind no module registered.
    """
    kind = record.get("kind", "image")
    _load_kinds(kind)
    if kind not in _KINDS:
        raise ValueError(f"Unknown input kind {kind!r}; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind].from_json(record)


def from_signature(inputs: dict[str, InputInfo], where: str = "the model") -> InputSpec:
    """The spec of a model known only by its `serving_default` inputs (no metadata.json).

    Raises:
        UserError: no registered kind recognises the inputs.
    """
    for kind in KIND_MODULES:  # images first: they alone need no TensorFlow (a .tflite under LiteRT)
        _load_kinds(kind)
        spec = _KINDS[kind].from_signature(inputs)
        if spec is not None:
            return spec
    described = ", ".join(f"{i.name} {i.dtype} {'unknown rank' if i.shape is None else list(i.shape)}"
                          for i in inputs.values()) or "none"
    raise UserError(f"Cannot tell what {names.DEFAULT} of {where} takes (inputs: {described}); this command "
                    f"handles {', '.join(sorted(_KINDS))} inputs, e.g. images as one numeric [batch, H, W, C] input.")


#: Each kind's module, in the order `from_signature` tries them (registration: one line here).
KIND_MODULES = {"image": "tfpipeline.inputs.image", "text": "tfpipeline.inputs.text",
                "table": "tfpipeline.inputs.table"}


def kinds() -> list[str]:
    """The registered kinds' names."""
    _load_kinds()
    return sorted(_KINDS)


def count(examples: Examples) -> int:
    """How many examples a batch holds."""
    if isinstance(examples, dict):
        return len(next(iter(examples.values())))
    return len(examples)


def take(examples: Examples, index) -> Examples:
    """The examples at `index` (a slice or an index array), of every named input alike."""
    if isinstance(examples, dict):
        return {name: values[index] for name, values in examples.items()}
    return examples[index]


def ensemble_members(model) -> list:
    """The members of an ensemble model (`training.ensemble.combine` names them member0, member1,
    ...), else `[model]`: attributions are computed per member and averaged, which is the
    ensemble's own attribution when, as here, it averages the members' probabilities."""
    members = [layer for layer in getattr(model, "layers", []) if layer.name.startswith("member")
               and layer.name[len("member"):].isdigit()]
    return members or [model]


def _load_kinds(*only: str) -> None:
    """Import the kinds' modules (or those of `only`), so `register` has run for each (they
    import this one). One at a time: text and tables import TensorFlow, images do not."""
    import importlib

    for kind in only or KIND_MODULES:
        if kind in KIND_MODULES:
            importlib.import_module(KIND_MODULES[kind])
