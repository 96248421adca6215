"""The search stage: `search(...)` runs (or resumes) KerasTuner over the families'
hyperparameters and returns what it found.

Its parts: the hypermodel (`hypermodel.py`), oracles and tuners (`oracles.py`, `tuners.py`),
trial records and the choice of a trial (`records.py`), a search over several machines
(`distributed.py`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import keras

from tfpipeline import data as data_lib
from tfpipeline import models, training
from tfpipeline.config import PipelineConfig, SearchBudget, SearchSettings
from tfpipeline.errors import UserError
from tfpipeline.runstate import RunState
from tfpipeline.tuning import distributed, records
from tfpipeline.tuning.hypermodel import PipelineHyperModel, TrialData, TrialSetup, encode
from tfpipeline.tuning.oracles import OBJECTIVE
from tfpipeline.tuning.tuners import make_tuner

TRIAL_PATIENCE = 3  # early stopping inside a trial, on validation accuracy


@dataclasses.dataclass
class SearchResult:
    """What the search found (on a distributed search's worker: only which trials it ran)."""

    family: str | None
    hyperparams: Any  # the family's Hyperparams, epochs set to those the chosen trial was scheduled for
    best: dict | None  # the best trial's record
    records: list[dict]
    info: dict  # budget, families, where things went: the metadata's "search" block
    worker: str | None = None  # KERASTUNER_TUNER_ID of a worker; None on the chief or alone

    def to_json(self) -> dict:
        best = None if self.best is None else {
            "trial_id": self.best["trial_id"], "family": self.family, "score": self.best["score"],
            "epochs": self.best["epochs"], "epochs_trained": self.best["epochs_trained"],
            "epochs_scheduled": self.best["epochs_scheduled"],
            "hyperparameters": self.best["hyperparameters"]}
        return {**self.info, "best": best, "trials": self.records}


def identity(config: PipelineConfig, settings: SearchSettings) -> dict:
    """What defines "the same search", for its resume key (tfpipeline/runstate.py)."""
    return {"dataset": config.dataset, "families": list(families_of(config, settings)),
            "budget": settings.budget(config.quick, config.kind).to_json(), "fixed": config.pinned(),
            "seed": config.seed, "quick": config.quick, "validation_fraction": config.validation_fraction,
            **config.input_identity(),
            **training.optimizer_options(config)}  # only the options set: older keys stay valid


def families_of(config: PipelineConfig, settings: SearchSettings) -> tuple[str, ...]:
    """The families searched: all that take the run's kind (or `settings.families`) with `--model auto`,
    else `config.model`."""
    return tuple(settings.families or models.families(config.kind)) if config.model == "auto" else (config.model,)


def search(config: PipelineConfig, settings: SearchSettings, datasets: data_lib.Datasets, state: RunState,
           logdir: Path) -> SearchResult:
    """Run (or resume) the search on `datasets` and return what it found.

    Args:
        config: the run (seed, dataset, pinned hyperparameters, quick).
        settings: the search's settings; `settings.budget(config.quick, config.kind)` its size.
        datasets: the prepared train / validation datasets (unbatched).
        state: the run's state folder (`state.run_dir / "search"` holds KerasTuner's project).
        logdir: the run's TensorBoard folder; trials log to `logdir / "trials"`.

    Returns:
        A `SearchResult`: the chosen family, its hyperparameters and epochs, and every trial.
        On a distributed search's worker, only which trials it ran (`worker` set).

    Raises:
        UserError: the saved search cannot be reloaded, the search stopped after failed
            trials, or no trial completed.
    """
    families = families_of(config, settings)
    auto = config.model == "auto"
    budget = settings.budget(config.quick, config.kind)
    this_role = distributed.role()
    if settings.overwrite and state.created and config.run_name:  # same id as a dropped run
        shutil.rmtree(logdir / "trials", ignore_errors=True)
    spec = datasets.spec
    num_search = settings.search_examples(spec.num_examples["train"], config.quick)
    verbose = training.default_verbosity() if config.verbose is None else config.verbose
    setup = TrialSetup(config=config, families=families, fixed=config.pinned(), spec=spec,
                       data=TrialData(_weighted(config, datasets, datasets.train.take(num_search)),
                                      datasets.validation, config.seed, datasets.batched),
                       num_search=num_search, max_epochs=budget.max_epochs, logdir=logdir, run_id=state.run_id,
                       verbose=verbose)
    hypermodel = PipelineHyperModel(setup)
    directory = state.run_dir
    resumed = (directory / "search" / "oracle.json").exists()
    try:
        tuner = make_tuner(budget, hypermodel, directory, start_families=families if auto else (None,),
                           seed=config.seed)
    except (RuntimeError, json.JSONDecodeError) as exc:  # a state file cut short by a kill mid-write
        raise UserError(f"Cannot reload the search in {directory / 'search'}: {exc}. Run with --overwrite to "
                        "start it afresh.") from exc
    _announce(setup, budget, tuner, role=this_role, resumed=resumed, directory=directory / "search")
    started = time.monotonic()
    try:
        tuner.search(epochs=budget.max_epochs, verbose=verbose, callbacks=[keras.callbacks.EarlyStopping(
            monitor=OBJECTIVE, mode="max", patience=TRIAL_PATIENCE)])
    except RuntimeError as exc:  # KerasTuner stops after some failed trials in a row
        raise UserError(f"The search stopped: {str(exc).strip().splitlines()[0]} Recent trials failed; their "
                        f"messages are above and in {directory / 'search'}/trial_*/trial.json.") from exc
    info = {**budget.to_json(), "objective": f"{OBJECTIVE} (max)", "families": list(families), "auto": auto,
            "fixed": {k: encode(v) for k, v in config.pinned().items()}, "search_examples": num_search,
            "validation_examples": spec.num_examples["validation"], "trial_patience": TRIAL_PATIENCE,
            "seed": config.seed, "distributed": this_role == "chief", "resumed": resumed,
            "directory": str(directory / "search"), "trials_logdir": str(logdir / "trials"),
            "seconds_this_session": round(time.monotonic() - started, 1)}
    if this_role == "worker":
        return _worker_result(tuner, info)
    return _best(tuner, hypermodel, info, directory, epochs=config.epochs)


def _weighted(config: PipelineConfig, datasets: data_lib.Datasets, train):
    """The trials' training examples with `--class-weight balanced` (tables) as sample weights."""
    if config.kind != "table" or config.table.class_weight != "balanced":
        return train
    from tfpipeline.data import table

    return table.balanced(datasets, train)[0]


def _worker_result(tuner, info: dict) -> SearchResult:
    mine = getattr(tuner, "trials_run", [])
    print(f"\nWorker {distributed.tuner_id()} ran {len(mine)} trial{'s' if len(mine) != 1 else ''}: "
          f"{', '.join(mine) or 'none'}. The chief trains the best and exports.", flush=True)
    return SearchResult(None, None, None, [], {**info, "trials_run": mine}, worker=distributed.tuner_id())


def _best(tuner, hypermodel: PipelineHyperModel, info: dict, directory: Path, *, epochs: int | None) -> SearchResult:
    """The chosen trial's family and hyperparameters (`records.choose`), for the epochs it was
    scheduled for (or `epochs`, the user's --epochs), and the table of every trial."""
    trials = records.trial_records(tuner.oracle, hypermodel.families, info["auto"])
    completed = [r for r in trials if r["status"] == "COMPLETED"]
    if not completed:
        raise UserError(f"No trial of the search completed ({len(trials)} tried); see the messages above. "
                        "Try another --learning-rate, or --no-tune.")
    best, selection = records.choose(trials, info["validation_examples"])
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / "trials.csv"
    records.write_csv(trials, csv_path)
    print(f"\nSearch finished: {len(completed)} of {len(trials)} trials completed in "
          f"{info['seconds_this_session']:.0f} s this session.\n{records.table(trials, best['trial_id'])}\n"
          f"Trials table: {csv_path}\nChosen: trial {best['trial_id']}, {selection}.", flush=True)
    family, hparams = hypermodel.family_hyperparams(tuner.oracle.trials[best["trial_id"]].hyperparameters.copy())
    # The epochs its schedule spans, not those of its best score or of its early stop: a trial
    # stopped or peaking midway had not settled (docs/tuning.md, "Retrain").
    hparams = dataclasses.replace(hparams, epochs=epochs or best["epochs_scheduled"] or info["max_epochs"])
    info = {**info, "trials_csv": str(csv_path), "trials_completed": len(completed), "selection": selection,
            "epochs_from": "--epochs" if epochs else f"trial {best['trial_id']}"}
    return SearchResult(family, hparams, best, trials, info)


def _announce(setup: TrialSetup, budget: SearchBudget, tuner, *, role: str, resumed: bool, directory: Path) -> None:
    """What the search will do, and on the chief where its oracle listens."""
    if budget.tuner == "hyperband":
        size = f"Hyperband, trials of up to {budget.max_epochs} epochs, factor {budget.factor}"
        size += f", at most {budget.max_trials} trials" if budget.max_trials else ""
    else:
        size = f"{budget.tuner} search, {budget.max_trials} trials of up to {budget.max_epochs} epochs"
    examples = setup.spec.num_examples
    print(f"Hyperparameter search {setup.run_id}: {size}; families {', '.join(setup.families)}; trials train on "
          f"{setup.num_search:,} of {examples['train']:,} training examples and score validation accuracy on "
          f"{examples['validation']:,}.\n  search directory {directory}", flush=True)
    if role == "alone" or role == "chief":
        done = [t for t in tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED")]
        if resumed:
            print(f"Resuming the search: {len(done)} finished trial{'s' if len(done) != 1 else ''} kept "
                  f"({', '.join(sorted(t.trial_id for t in done)) or 'none'}); unfinished ones run again.", flush=True)
        space = tuner.oracle.get_space()
        print("  search space: " + "; ".join(_describe(param) for param in space.space), flush=True)
    if role == "chief":
        print(f"Chief: serving the oracle on {distributed.oracle_address()}; workers ({distributed.ENV_TUNER_ID}"
              "=tuner0, tuner1, ...) run the trials. Waiting for them to finish the search.", flush=True)


def _describe(param) -> str:
    """One KerasTuner hyperparameter of the space as "name values"."""
    config = param.get_config()
    if "values" in config:
        text = "|".join(str(v) for v in config["values"])
    elif "min_value" in config:
        text = f"{config['min_value']}..{config['max_value']}" + (" log" if config.get("sampling") == "log" else "")
    else:
        text = str(config.get("value", "true|false"))
    return f"{param.name} {text}"
