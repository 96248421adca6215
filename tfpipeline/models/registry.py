"""The registry behind `tfpipeline.models`: family name (and input kind) → module, defaults,
builders and search spaces. The package re-exports these names lazily (it imports Keras).
"""


from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import keras

from tfpipeline.data.augmentation import Augmentation
from tfpipeline.errors import UserError
from tfpipeline.models import FAMILY_NAMES, cnn, mlp, rnn, table, transformer


@runtime_checkable
class FamilyHyperparams(Protocol):
    """What every stage may read from a family's `Hyperparams` dataclass (`hp`): training
    reads these; a family may add the optional settings `training.settings_for` looks for
    (`warmup_fraction`, `ema_momentum`, `frozen_layers`, ...)."""

    epochs: int
    batch_size: int  # per replica
    learning_rate: float  # the peak, before any scaling with the number of replicas


FAMILIES: dict[str, ModuleType] = {"mlp": mlp, "cnn": cnn, "rnn": rnn, "transformer": transformer}
assert tuple(FAMILIES) == FAMILY_NAMES  # the names --help lists without importing Keras


def _families(kind: str) -> dict[str, ModuleType]:
    if kind == "text":
        from tfpipeline.models import text  # only text runs pay for importing it

        return text.FAMILIES
    return FAMILIES


def families(kind: str = "image") -> tuple[str, ...]:
    """The families that take inputs of `kind`: what `--model auto` searches across."""
    return tuple(table.FAMILIES) if kind == "table" else tuple(_families(kind))


def family(name: str, kind: str = "image") -> ModuleType:
    """The module of family `name` for inputs of `kind` ("image", "text" or "table"); raises
    `UserError` naming the families for an unknown `name` (or one refused for tables)."""
    if kind == "table":
        return table.family(name)
    families = _families(kind)
    try:
        return families[name]
    except KeyError:
        raise UserError(
            f"Unknown model family {name!r}. Choose one of: {', '.join(FAMILIES)}."
        ) from None


def hyperparams(name: str, overrides: dict[str, Any] | None = None, kind: str = "image") -> FamilyHyperparams:
    """The family's default hyperparameters with `overrides` applied (checked by name and type)."""
    defaults = family(name, kind).Hyperparams()
    fields = {f.name: f for f in dataclasses.fields(defaults)}
    values = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise UserError(
                f"Model family {name!r} has no hyperparameter {key!r}. "
                f"Its hyperparameters are: {', '.join(fields)}."
            )
        default = getattr(defaults, key)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)  # JSON has no tuples
        values[key] = value
    return dataclasses.replace(defaults, **values)


def augmentation(name: str, hp: FamilyHyperparams, seed: int, kind: str = "image") -> Augmentation:
    """The family's training augmentation for `hp` (applied to training batches in the input
    pipeline, `Augmentation.apply`); one without a layer if the family has none."""
    make = getattr(family(name, kind), "augmentation", None)
    return make(hp, seed) if make else Augmentation()


def build(name: str, input_shape, num_classes: int, hp: FamilyHyperparams | None = None, *,
          input=None) -> keras.Model:
    """An uncompiled model of family `name` returning logits.

    Args:
        name: the family.
        input_shape: an image's (height, width, channels); ignored for text and tables.
        num_classes: outputs.
        hp: the family's `Hyperparams` (None: its defaults).
        input: the dataset's input spec (`DatasetSpec.input`); its kind picks the family's
            variant, and a text or table family is built on it. None: images.
    """
    kind = getattr(input, "kind", "image")
    if kind == "table":
        return table.build(name, input, num_classes, hp)
    module = family(name, kind)
    if kind == "text":
        return module.build(input, num_classes, hp or module.Hyperparams())
    return module.build(tuple(input_shape), num_classes, hp or module.Hyperparams())


def search_space(name: str, hp, spec):
    """Family `name`'s KerasTuner space for a `DatasetSpec` (its input kind picks the variant)."""
    spec_input = getattr(spec, "input", None)
    kind = getattr(spec_input, "kind", "image")
    if kind in ("text", "table"):
        return family(name, kind).search_space(hp, spec_input)
    return family(name).search_space(hp, spec.input_shape)
