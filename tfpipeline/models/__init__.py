"""Model families and the registry that maps `--model NAME` to a builder.

Each family is one short module with a `Hyperparams` dataclass (architecture and the
training settings that suit it, all with working defaults; `FamilyHyperparams` is what every
stage may rely on) and `build(input_shape, num_classes, hp) -> keras.Model`, an uncompiled
functional model that takes raw `uint8` images and returns logits. `search_space(kt_hp)`
declares the family's KerasTuner space with those defaults.

Owns: the families, their layers (`layers`) and search-space helpers (`space`).

May import: errors and data (the augmentation a family trains with). It imports nothing from
training, tuning, distribute, export, report or serving (tests/test_layout.py checks this).
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import keras

from tfpipeline.data.augmentation import Augmentation
from tfpipeline.errors import UserError
from tfpipeline.models import cnn, mlp, rnn, transformer


@runtime_checkable
class FamilyHyperparams(Protocol):
    """What every stage may read from a family's `Hyperparams` dataclass (`hp`): training
    reads these; a family may add the optional settings `training.settings_for` looks for
    (`warmup_fraction`, `ema_momentum`, `frozen_layers`, ...)."""

    epochs: int
    batch_size: int  # per replica
    learning_rate: float  # the peak, before any scaling with the number of replicas


FAMILIES: dict[str, ModuleType] = {"mlp": mlp, "cnn": cnn, "rnn": rnn, "transformer": transformer}


def family(name: str) -> ModuleType:
    """The family's module; raises `UserError` naming the families for an unknown `name`."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(
            f"Unknown model family {name!r}. Choose one of: {', '.join(FAMILIES)}."
        ) from None


def hyperparams(name: str, overrides: dict[str, Any] | None = None) -> FamilyHyperparams:
    """The family's default hyperparameters with `overrides` applied (checked by name and type)."""
    defaults = family(name).Hyperparams()
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


def augmentation(name: str, hp: FamilyHyperparams, seed: int) -> Augmentation:
    """The family's training augmentation for `hp` (applied to training batches in the input
    pipeline, `Augmentation.apply`); one without a layer if the family has none."""
    make = getattr(family(name), "augmentation", None)
    return make(hp, seed) if make else Augmentation()


def build(name: str, input_shape, num_classes: int, hp: FamilyHyperparams | None = None) -> keras.Model:
    """The family's uncompiled model for `input_shape` and `num_classes`; `hp` None: its defaults."""
    module = family(name)
    return module.build(tuple(input_shape), num_classes, hp or module.Hyperparams())
