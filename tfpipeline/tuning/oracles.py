"""KerasTuner's oracles and tuners with what the search stage (tfpipeline/tuning.py) adds:
each family's defaults are the first trials, state files are saved atomically, and each
trial's memory is freed before the next.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from pathlib import Path
from typing import Any

import keras
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
        if response.get("status") == "RUNNING" and values is not None \
                and "tuner/trial_id" not in values:
            for family in self.start_families:
                if family not in self.starts_done:
                    self.starts_done.append(family)
                    bookkeeping = {k: v for k, v in values.items() if k.startswith("tuner/")}
                    response["values"] = {**bookkeeping, **self._defaults(family)}
                    break
        return response

    def _defaults(self, family: str | None) -> dict[str, Any]:
        hps = self.get_space()
        hps.values = {}
        for hp in hps.space:  # parents come before the hyperparameters they condition
            if hps.is_active(hp):
                hps.values[hp.name] = family if hp.name == FAMILY else hp.default
        return hps.values

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

    # Atomic saves (runstate.write_json); the same files and paths as KerasTuner 1.4's own.
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


class _TrialHooks:
    """Tuner mixin: what each trial needs beyond KerasTuner's own handling."""

    def run_trial(self, trial, *args, **kwargs):
        self.hypermodel.trial_id = trial.trial_id
        self.__dict__.setdefault("trials_run", []).append(trial.trial_id)
        # A trial killed half-way is run again: its new curves replace the old ones.
        shutil.rmtree(self.hypermodel.logdir / "trials" / trial.trial_id, ignore_errors=True)
        started = time.monotonic()
        results = super().run_trial(trial, *args, **kwargs)
        for result in results:
            result["seconds"] = round(time.monotonic() - started, 2)
        return results

    def save(self):  # as BaseTuner.save, written atomically
        if not self._is_worker():
            self.oracle.save()
        write_json(self._get_tuner_fname(), self.get_state())

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if trial.status in ("FAILED", "INVALID") and trial.message:
            print(f"Trial {trial.trial_id} failed: {trial.message.strip().splitlines()[-1]}", flush=True)
        # Free the trial's model, optimizer and traced functions before the next one builds
        # (KerasTuner clears only before building; memory would otherwise grow per trial).
        keras.backend.clear_session()
        gc.collect()


class PipelineTuner(_TrialHooks, kt.Tuner):
    """Random search and Bayesian optimization: KerasTuner's Tuner with our oracle."""


class PipelineHyperband(_TrialHooks, kt.Hyperband):
    """Hyperband's trial logic (continue a trial from its parent's checkpoint for more epochs)
    with our oracle: `kt.Hyperband.__init__` would make its own, so go to `kt.Tuner`'s."""

    def __init__(self, oracle, **kwargs):
        kt.Tuner.__init__(self, oracle=oracle, **kwargs)


def make_tuner(budget: dict, families: tuple[str, ...], auto: bool, hypermodel: kt.HyperModel,
               directory: Path, seed: int):
    objective = kt.Objective(OBJECTIVE, direction="max")
    common = dict(objective=objective, seed=seed, max_consecutive_failed_trials=3)
    if budget["tuner"] == "hyperband":
        oracle = HyperbandOracle(max_epochs=budget["max_epochs"], factor=budget["factor"], **common)
        oracle.max_trials = budget["max_trials"]  # a cap (Oracle.create_trial honours it); None: Hyperband's own
    elif budget["tuner"] == "random":
        oracle = RandomSearchOracle(max_trials=budget["max_trials"], **common)
    else:
        oracle = BayesianOptimizationOracle(max_trials=budget["max_trials"], **common)
    oracle.start_families = tuple(families) if auto else (None,)
    cls = PipelineHyperband if budget["tuner"] == "hyperband" else PipelineTuner
    # overwrite=False: reload a search of the same command (--overwrite is handled by a new run).
    return cls(oracle=oracle, hypermodel=hypermodel, directory=str(directory), project_name="search",
               overwrite=False)
