"""KerasTuner's tuners with what the search stage adds: each trial's curves and timing, atomic
state files, each trial's memory freed before the next; `make_tuner` builds one for a budget.
"""

from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path

import keras
import keras_tuner as kt

from tfpipeline.config import SearchBudget
from tfpipeline.runstate import write_json
from tfpipeline.tuning.oracles import (
    OBJECTIVE,
    BayesianOptimizationOracle,
    HyperbandOracle,
    RandomSearchOracle,
)

MAX_CONSECUTIVE_FAILED_TRIALS = 3


class _TrialHooks:
    """Tuner mixin: what each trial needs beyond KerasTuner's own handling."""

    def run_trial(self, trial, *args, **kwargs):
        self.hypermodel.trial_id = trial.trial_id
        self.__dict__.setdefault("trials_run", []).append(trial.trial_id)
        # A trial killed half-way is run again: its new curves replace the old ones.
        shutil.rmtree(self.hypermodel.setup.logdir / "trials" / trial.trial_id, ignore_errors=True)
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


def make_tuner(budget: SearchBudget, hypermodel: kt.HyperModel, directory: Path, *, start_families: tuple,
               seed: int):
    """The tuner and oracle `budget` asks for, reloading a search of the same command in
    `directory / "search"` if there is one.

    Args:
        budget: the search's size (`SearchSettings.budget`).
        hypermodel: builds and fits each trial's model.
        directory: the run's state folder.
        start_families: the families whose defaults are the first trials; `(None,)` for the
            single family's.
        seed: the oracle's seed.
    """
    objective = kt.Objective(OBJECTIVE, direction="max")
    common = dict(objective=objective, seed=seed, max_consecutive_failed_trials=MAX_CONSECUTIVE_FAILED_TRIALS)
    if budget.tuner == "hyperband":
        oracle = HyperbandOracle(max_epochs=budget.max_epochs, factor=budget.factor, **common)
        oracle.max_trials = budget.max_trials  # a cap (Oracle.create_trial honours it); None: Hyperband's own
    elif budget.tuner == "random":
        oracle = RandomSearchOracle(max_trials=budget.max_trials, **common)
    else:
        oracle = BayesianOptimizationOracle(max_trials=budget.max_trials, **common)
    oracle.start_families = tuple(start_families)
    cls = PipelineHyperband if budget.tuner == "hyperband" else PipelineTuner
    # overwrite=False: reload a search of the same command (--overwrite is handled by a new run).
    return cls(oracle=oracle, hypermodel=hypermodel, directory=str(directory), project_name="search",
               overwrite=False)
