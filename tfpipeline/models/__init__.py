"""Model families and the registry that maps `--model NAME` to a builder.

Each family is one short module with a `Hyperparams` dataclass (architecture and the
training settings that suit it, all with working defaults) and
`build(input_shape, num_classes, hp) -> keras.Model`, an uncompiled functional model that
takes raw `uint8` images and returns logits.

Tables have their own variants of the families that take them (`tfpipeline.models.table`):
`family`, `hyperparams` and `build` pick them when told the input kind is "table".
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import keras

from tfpipeline.data.augmentation import Augmentation
from tfpipeline.errors import UserError
from tfpipeline.models import cnn, mlp, rnn, table, transformer

FAMILIES: dict[str, ModuleType] = {"mlp": mlp, "cnn": cnn, "rnn": rnn, "transformer": transformer}


def family(name: str, kind: str = "image") -> ModuleType:
    if kind == "table":
        return table.family(name)
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(
            f"Unknown model family {name!r}. Choose one of: {', '.join(FAMILIES)}."
        ) from None


def hyperparams(name: str, overrides: dict[str, Any] | None = None, kind: str = "image"):
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


def augmentation(name: str, hp, seed: int) -> Augmentation:
    """The family's training augmentation for `hp` (applied to training batches in the input
    pipeline, `Augmentation.apply`); one without a layer if the family has none."""
    make = getattr(family(name), "augmentation", None)
    return make(hp, seed) if make else Augmentation()


def build(name: str, input_shape, num_classes: int, hp=None, input=None) -> keras.Model:
    """The family's model; `input` (the dataset's `InputSpec`) picks a table variant for a table."""
    if input is not None and input.kind == "table":
        return table.build(name, input, num_classes, hp)
    module = family(name)
    return module.build(tuple(input_shape), num_classes, hp or module.Hyperparams())
