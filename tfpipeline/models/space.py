"""Helpers for the families' `search_space(kt_hp)` functions (KerasTuner hyperparameters).

Each family's `search_space(kt_hp) -> Hyperparams` declares its tunables with the dataclass
default as `default=`, so the first trial of a search (see `tfpipeline.tuning`) is the
family's own defaults and a tuned model starts from what an untuned run would train.

With `--model auto` every family's `search_space` also runs while another family is
chosen, inside an inactive KerasTuner conditional scope: there every `kt_hp.X(...)` returns
None and the result is thrown away. So `search_space` only passes values on; anything it
computes from a value goes through a helper here that lets None through.
"""

from __future__ import annotations

from typing import Any


def options(*values: Any) -> list[Any]:
    """Choice values without duplicates, in order: a family default that equals one of the
    listed alternatives (or is changed to one later) must not appear twice."""
    return list(dict.fromkeys(values))


def joined(values: tuple[int, ...]) -> str:
    """A tuple as one Choice value: KerasTuner values are scalars. "32,64" is also how the
    HParams table shows a tuple (tensorboard_logs), so runs and trials line up."""
    return ",".join(str(v) for v in values)


def ints(text: str | None) -> tuple[int, ...] | None:
    """Inverse of `joined`; None (inactive scope) stays None."""
    return None if text is None else tuple(int(v) for v in str(text).split(","))
