"""KerasTuner's oracles with what the search stage adds: each family's defaults are the first
trials, and the oracle's state files are saved atomically (the tuners are in `tuners.py`).
"""

from __future__ import annotations

import os
from typing import Any

import keras_tuner as kt

from tfpipeline.runstate import write_json

FAMILY = "family"  # the hyperparameter that picks the family with --model auto
OBJECTIVE = "val_accuracy"


class _StartFromDefaults:
    """Oracle mixin: before its own choices, the oracle proposes each family's defaults once.
    (And it saves its state atomically.)

    So the defaults always compete (a tuned model is never a worse starting point than an
    untuned one), and `--model auto` tries every family early. Kept in the oracle's saved
    state, so a resumed or distributed search proposes each start exactly once.
    """

    start_families: tuple[str | None, ...] = (None,)  # None: the single family's defaults

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        values = response.get("values")
        # Only fresh trials: a Hyperband round that continues a trial keeps its values.
        fresh = response.get("status") == "RUNNING" and values is not None and "tuner/trial_id" not in values
        if fresh:
            for family in self.start_families:
                if family not in self.starts_done:
                    self.starts_done.append(family)
                    bookkeeping = {k: v for k, v in values.items() if k.startswith("tuner/")}
                    response["values"] = {**bookkeeping, **self._defaults(family)}
                    break
        return response

    def _defaults(self, family: str | None) -> dict[str, Any]:
        kt_hp = self.get_space()
        kt_hp.values = {}
        for param in kt_hp.space:  # parents come before the hyperparameters they condition
            if kt_hp.is_active(param):
                kt_hp.values[param.name] = family if param.name == FAMILY else param.default
        return kt_hp.values

    @property
    def starts_done(self) -> list:
        if not hasattr(self, "_starts_done"):
            self._starts_done = []
        return self._starts_done

    def get_state(self):
        return {**super().get_state(), "starts_done": self.starts_done}

    def set_state(self, state):
        super().set_state(state)
        self._starts_done = list(state.get("starts_done", []))

    def reload(self):
        """KerasTuner's reload, then what a kill can leave half-done. A trial whose file was
        written but not the oracle's state (a kill inside `create_trial`) is dropped: the next
        trial takes its id and values, as in an uninterrupted search. A trial still listed as
        running, which KerasTuner sends to run again from its start: not run again if it had
        ended (`end_trial` saves the state before it takes the trial off that list, the tuner's
        save after it); otherwise without what its file may hold of a report made before the
        kill (between `update_trial` and `end_trial`), so its new run is scored alone, as a
        first run is."""
        super().reload()
        for trial_id in set(self.trials) - set(self.start_order):
            del self.trials[trial_id]
        self._retry_queue = [trial_id for trial_id in self._retry_queue if trial_id not in self.end_order]
        for trial_id in self._retry_queue:
            trial = self.trials[trial_id]
            trial.metrics, trial.score, trial.best_step = type(trial.metrics)(), None, 0

    # Atomic saves (runstate.write_json) to the same files and paths as KerasTuner's own, which
    # a kill mid-write would leave cut short (tfpipeline/training/internals.py lists the helpers).
    def save(self):
        write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        write_json(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())


class HyperbandOracle(_StartFromDefaults, kt.oracles.HyperbandOracle):
    pass


class RandomSearchOracle(_StartFromDefaults, kt.oracles.RandomSearchOracle):
    pass


class BayesianOptimizationOracle(_StartFromDefaults, kt.oracles.BayesianOptimizationOracle):
    pass
