"""Hyperparameter search (KerasTuner): the pipeline's optional search stage.

`search(...)` takes the prepared datasets and returns a `SearchResult`: the best family, its
hyperparameters and epochs, and every trial. The pipeline (tfpipeline/pipeline.py) then trains,
evaluates, gates and exports the best exactly as it does without a search. This module keeps
only KerasTuner's concerns: the HyperModel, the oracles, trial records and the state that lets a
search resume or run on several machines.

- Each family declares its space next to its builder (`search_space(hp)` in
  tfpipeline/models/<family>.py) with the family's defaults as the space's defaults, and the
  first trial of each family *is* those defaults: the search starts from what an untuned run
  trains. `--model auto` adds a `family` choice and puts every family's space in a conditional
  scope (as AutoKeras does).
- Trials train on the first `search_fraction` of the training split for up to `max_epochs`
  epochs (Hyperband: `factor`), with a warmup + cosine schedule over the epochs each trial
  trains and early stopping, and are scored by their best validation accuracy.
- Resume: re-running an interrupted command reloads the search (KerasTuner, overwrite=False):
  finished trials keep their ids and scores; a trial killed half-way runs again from its start.
  The search lives in `<work-dir>/<dataset>/tune-<model>-<hash>/<run-id>/search/`
  (tfpipeline/runstate.py); each trial's curves and HParams session in
  `<logdir>/<dataset>/<run-id>/trials/<trial-id>/`.
- Distributed: KerasTuner's own chief/worker mode. Every process runs the same command; the
  environment says which is which (KERASTUNER_TUNER_ID=chief|tuner0|tuner1..., and
  KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT: where the chief's oracle listens). The chief
  serves the oracle over gRPC and runs no trials; workers ask it for trials until the budget is
  spent; then the chief's pipeline trains the best and exports.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp_api

from tfpipeline import data as data_lib
from tfpipeline import models, training
from tfpipeline.config import PipelineConfig, SearchSettings
from tfpipeline.errors import UserError
from tfpipeline.report import tensorboard as tensorboard_logs
from tfpipeline.runstate import RunState
from tfpipeline.training import freezing
from tfpipeline.tuning.oracles import FAMILY, OBJECTIVE, make_tuner

ENV_TUNER_ID, ENV_ORACLE_IP, ENV_ORACLE_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"
TRIAL_PATIENCE = 3  # early stopping inside a trial, on validation accuracy


# --- the search space -------------------------------------------------------------------

def _encode(value: Any) -> bool | int | float | str:
    """A hyperparameter value as KerasTuner stores it (scalars; tuples as "32,64")."""
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else value


class PipelineHyperModel(kt.HyperModel):
    """Builds a trial's model through the registry, compiles it with our training code, and
    fits it with a TensorBoard run and HParams session of its own."""

    def __init__(self, config, families: tuple[str, ...], fixed: dict[str, Any], spec, trial_data,
                 num_search: int, max_epochs: int, logdir: Path, run_id: str, verbose: int):
        super().__init__(name="tfpipeline")
        self.config, self.families, self.spec, self.trial_data = config, families, spec, trial_data
        self.num_search, self.max_epochs, self.logdir, self.run_id, self.verbose = (
            num_search, max_epochs, logdir, run_id, verbose)
        # Validated overrides (--hparam, --learning-rate, --batch-size), with their types fixed.
        self.fixed = {name: {k: getattr(models.hyperparams(name, fixed), k) for k in fixed} for name in families}
        self.trial_id = "unknown"  # set by the tuner before each trial

    def family_hyperparams(self, hp: kt.HyperParameters):
        """(family, its Hyperparams) for these hyperparameter values; declares the space."""
        if len(self.families) == 1:
            family = self.families[0]
            # Fixed first: the family's own declaration of the same name then returns it, so
            # the oracle does not spend trials varying what the user pinned.
            for name, value in self.fixed[family].items():
                hp.Fixed(name, _encode(value))
            chosen = models.family(family).search_space(hp, self.spec.input_shape)
        else:
            family = hp.Choice(FAMILY, list(self.families), default=self.families[0])
            chosen = None
            for name in self.families:
                # Name scopes keep each family's names apart ("cnn/dropout", "mlp/dropout").
                with hp.conditional_scope(FAMILY, [name]), hp.name_scope(name):
                    declared = models.family(name).search_space(hp, self.spec.input_shape)
                if name == family:
                    chosen = declared
        return family, dataclasses.replace(chosen, **self.fixed[family])

    @staticmethod
    def trial_epochs(hp: kt.HyperParameters, max_epochs: int) -> tuple[int, int]:
        """(epochs to reach, epoch to start from): Hyperband sets both per round."""
        return hp.values.get("tuner/epochs", max_epochs), hp.values.get("tuner/initial_epoch", 0)

    def build(self, hp):
        family, fhp = self.family_hyperparams(hp)
        # Same seed for every trial (KerasTuner has just cleared the session): trials differ by
        # their hyperparameters only, and a trial run again after a kill starts from the same weights.
        keras.utils.set_random_seed(self.config.seed)
        epochs, initial = self.trial_epochs(hp, self.max_epochs)
        try:
            model = models.build(family, self.spec.input_shape, self.spec.num_classes, fhp)
        except ValueError as exc:  # e.g. a patch size that does not divide the image
            raise kt.errors.FailedTrialError(f"{family}: {exc}") from exc
        # One warmup + cosine cycle over the epochs this trial trains: a Hyperband round that
        # continues a trial from its checkpoint starts a new cycle (a warm restart).
        settings = training.settings_for(dataclasses.replace(fhp, epochs=max(1, epochs - initial)),
                                         self.num_search, early_stopping_patience=0,
                                         **training.optimizer_options(self.config))
        return training.compile_model(model, settings)

    def fit(self, hp, model, *args, callbacks=None, epochs=1, initial_epoch=0, **kwargs):
        family, fhp = self.family_hyperparams(hp)
        train, validation = self.trial_data.pipelines(fhp.batch_size)
        augmentation = models.augmentation(family, fhp, self.config.seed)
        train = augmentation.apply(train)
        logdir = self.logdir / "trials" / self.trial_id
        # The row the HParams dashboard shows: the same names as a run's row
        # (tensorboard_logs.run_hparams), plus the trial id; trial_id groups one session per trial.
        row = tensorboard_logs.run_hparams(dataclasses.replace(self.config, model=family),
                                           dataclasses.replace(fhp, epochs=epochs), model.count_params())
        row["trial"] = self.trial_id
        writer = tf.summary.create_file_writer(str(logdir))  # ours to close: the callback only drops it
        callbacks = [  # a frozen start as the final training has; then the weight average, so
            # the tuner's best-epoch checkpoint and early stopping see averaged weights.
            *freezing.callbacks(getattr(fhp, "frozen_layers", ()), getattr(fhp, "frozen_stem_epochs", 0)),
            *training.weight_averaging_callbacks(getattr(model.optimizer, "use_ema", False)),
            *(callbacks or []),
            keras.callbacks.TerminateOnNaN(),
            *augmentation.callbacks(),
            keras.callbacks.TensorBoard(str(logdir), histogram_freq=0, write_graph=False),
            hp_api.KerasCallback(writer, row, trial_id=f"{self.config.dataset}/{self.run_id}/trials/{self.trial_id}"),
        ]
        try:
            history = model.fit(train, validation_data=validation, epochs=epochs, initial_epoch=initial_epoch,
                                callbacks=callbacks, shuffle=False, verbose=self.verbose)
        finally:
            writer.close()
        return _trial_metrics(history)


def _trial_metrics(history: keras.callbacks.History) -> dict[str, float]:
    """What the oracle records for a trial: its best epoch's metrics, and when that was."""
    logs = history.history
    losses = logs.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise kt.errors.FailedTrialError("the training loss became NaN or infinite")
    scores = logs.get(OBJECTIVE, [])
    if len(scores) != len(history.epoch):
        raise kt.errors.FailedTrialError(f"no {OBJECTIVE} for every epoch")
    best = max(range(len(scores)), key=lambda i: scores[i])  # the first of equal bests: fewer epochs
    return {
        OBJECTIVE: float(scores[best]),
        "val_loss": float(logs["val_loss"][best]),
        "accuracy": float(logs["accuracy"][best]),
        "loss": float(logs["loss"][best]),
        # Epochs counted from the trial's start (a Hyperband round continues its parent).
        "best_epoch": history.epoch[best] + 1,
        "epochs": history.epoch[-1] + 1,
    }


class _TrialData:
    """Batched trial pipelines, one pair per batch size (families differ), built once: the
    decoded examples stay cached across trials instead of being re-read for each."""

    def __init__(self, train: tf.data.Dataset, validation: tf.data.Dataset, seed: int, batched=None):
        self.train, self.validation, self.seed = train, validation, seed
        # data.Datasets.batched: the cache plan's choice of memory cache and shuffle buffer.
        self.batched = batched or (lambda batch_size, seed: data_lib.batched(batch_size, seed))
        self._pipelines: dict[int, tuple[tf.data.Dataset, tf.data.Dataset]] = {}

    def pipelines(self, batch_size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        if batch_size not in self._pipelines:
            self._pipelines[batch_size] = (
                self.batched(batch_size, self.seed)(self.train, True),
                self.batched(batch_size, self.seed)(self.validation, False),
            )
        return self._pipelines[batch_size]


# --- trials as records ---------------------------------------------------------------------

def _metric(trial, name: str):
    return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None


def trial_records(oracle, hypermodel: PipelineHyperModel, auto: bool) -> list[dict]:
    """Every trial the oracle knows: id, status, family, hyperparameters, score, epochs, seconds."""
    records = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        values = dict(trial.hyperparameters.values)
        family = values.pop(FAMILY, None) if auto else hypermodel.families[0]
        searched = {}
        for name, value in values.items():
            if name.startswith("tuner/"):
                continue
            searched[name.split("/", 1)[1] if auto and "/" in name else name] = value
        epochs = _metric(trial, "best_epoch")
        records.append({
            "trial_id": trial.trial_id,
            "status": trial.status,
            "family": family,
            "score": trial.score,
            "epochs": int(epochs) if epochs is not None else None,  # where the score was reached
            "epochs_trained": int(_metric(trial, "epochs") or 0) or None,
            # Hyperband: the epochs its round was given, which its learning-rate schedule spans
            # (early stopping may end it sooner); other tuners give every trial max_epochs.
            "epochs_scheduled": values.get("tuner/epochs"),
            "seconds": _metric(trial, "seconds"),
            "val_loss": _metric(trial, "val_loss"),
            "continues": values.get("tuner/trial_id"),  # Hyperband: the trial this round continued
            "hyperparameters": searched,
        })
    return records


def write_csv(records: list[dict], path: Path) -> None:
    names = sorted({name for r in records for name in r["hyperparameters"]})
    columns = ["trial_id", "status", "family", "score", "epochs", "epochs_trained", "epochs_scheduled", "seconds", "val_loss", "continues"]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + names)
        for r in records:
            writer.writerow([r[c] for c in columns] + [r["hyperparameters"].get(n, "") for n in names])
    tmp.replace(path)


def _table(records: list[dict], best_id: str | None) -> str:
    lines = [f"  {'trial':<6} {'family':<12} {'status':<10} {'val acc':>8} {'epochs':>6} {'seconds':>8}"]
    for r in records:
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        mark = "  <- chosen" if r["trial_id"] == best_id else ""
        lines.append(f"  {r['trial_id']:<6} {r['family'] or '-':<12} {r['status']:<10} {score:>8} "
                     f"{r['epochs'] or '-':>6} {seconds:>8}{mark}")
    return "\n".join(lines)


# --- distributed search --------------------------------------------------------------------

def role() -> str:
    """"alone", or KerasTuner's distributed "chief" / "worker" (from its environment)."""
    if ENV_ORACLE_IP not in os.environ:
        return "alone"
    missing = [name for name in (ENV_ORACLE_PORT, ENV_TUNER_ID) if not os.environ.get(name)]
    if missing:
        raise UserError(f"{ENV_ORACLE_IP} is set, so this is a distributed search, but {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not: set {ENV_TUNER_ID}=chief on one process "
                        f"and tuner0, tuner1, ... on the others, and {ENV_ORACLE_PORT} to the chief's port.")
    if not os.environ[ENV_ORACLE_PORT].isdigit():
        raise UserError(f"{ENV_ORACLE_PORT} must be a port number, got {os.environ[ENV_ORACLE_PORT]!r}.")
    return "chief" if "chief" in os.environ[ENV_TUNER_ID] else "worker"


def wait_for_chief(timeout: float = 3600) -> None:
    """A worker starts once the chief listens: the chief has then also written run.json."""
    host, port = os.environ[ENV_ORACLE_IP], int(os.environ[ENV_ORACLE_PORT])
    print(f"Worker {os.environ[ENV_TUNER_ID]}: waiting for the chief's oracle at {host}:{port}...", flush=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(f"No chief answered at {host}:{port} within {timeout:.0f} s: start the same "
                                f"command with {ENV_TUNER_ID}=chief there.") from None
            time.sleep(1)


# --- the stage -------------------------------------------------------------------------------

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
            "budget": settings.budget(config.quick), "fixed": config.pinned(), "seed": config.seed,
            "quick": config.quick, "validation_fraction": config.validation_fraction, **config.input_identity(),
            **training.optimizer_options(config)}  # only the options set: older keys stay valid


def families_of(config: PipelineConfig, settings: SearchSettings) -> tuple[str, ...]:
    return tuple(settings.families or models.FAMILIES) if config.model == "auto" else (config.model,)


def search(config: PipelineConfig, settings: SearchSettings, datasets: data_lib.Datasets, state: RunState,
           logdir: Path) -> SearchResult:
    """Run (or resume) the search on `datasets` and return what it found.

    Args:
        config: the run (seed, dataset, pinned hyperparameters, quick).
        settings: the search's settings; `settings.budget(config.quick)` its size.
        datasets: the prepared train / validation datasets (unbatched).
        state: the run's state folder (`state.run_dir / "search"` holds KerasTuner's project).
        logdir: the run's TensorBoard folder; trials log to `logdir / "trials"`.
    """
    families, auto, budget, this_role = families_of(config, settings), config.model == "auto", \
        settings.budget(config.quick), role()
    if settings.overwrite and state.created and config.run_name:  # same id as a dropped run
        shutil.rmtree(logdir / "trials", ignore_errors=True)
    spec = datasets.spec
    num_search = max(1, round(spec.num_examples["train"] * budget["search_fraction"]))
    trial_data = _TrialData(datasets.train.take(num_search), datasets.validation, config.seed, datasets.batched)
    directory = state.run_dir
    resumed = (directory / "search" / "oracle.json").exists()
    verbose = training.default_verbosity() if config.verbose is None else config.verbose
    hypermodel = PipelineHyperModel(config, families, config.pinned(), spec, trial_data, num_search,
                                    budget["max_epochs"], logdir, state.run_id, verbose)
    try:
        tuner = make_tuner(budget, families, auto, hypermodel, directory, config.seed)
    except (RuntimeError, json.JSONDecodeError) as exc:  # a state file cut short by a kill mid-write
        raise UserError(f"Cannot reload the search in {directory / 'search'}: {exc}. Run with --overwrite to "
                        "start it afresh.") from exc
    _announce(this_role, state.run_id, directory, budget, families, num_search, spec, tuner, resumed)
    started = time.monotonic()
    try:
        tuner.search(epochs=budget["max_epochs"], verbose=verbose, callbacks=[keras.callbacks.EarlyStopping(
            monitor=OBJECTIVE, mode="max", patience=TRIAL_PATIENCE)])
    except RuntimeError as exc:  # KerasTuner stops after 3 failed trials in a row
        raise UserError(f"The search stopped: {str(exc).strip().splitlines()[0]} Recent trials failed; their "
                        f"messages are above and in {directory / 'search'}/trial_*/trial.json.") from exc
    info = {**budget, "objective": f"{OBJECTIVE} (max)", "families": list(families), "auto": auto,
            "fixed": {k: _encode(v) for k, v in config.pinned().items()}, "search_examples": num_search,
            "validation_examples": spec.num_examples["validation"], "trial_patience": TRIAL_PATIENCE,
            "seed": config.seed, "distributed": this_role == "chief", "resumed": resumed,
            "directory": str(directory / "search"), "trials_logdir": str(logdir / "trials"),
            "seconds_this_session": round(time.monotonic() - started, 1)}
    if this_role == "worker":
        return _worker_result(tuner, info)
    return _best(tuner, hypermodel, auto, info, directory, config.epochs)


def _worker_result(tuner, info: dict) -> SearchResult:
    mine = getattr(tuner, "trials_run", [])
    print(f"\nWorker {os.environ[ENV_TUNER_ID]} ran {len(mine)} trial{'s' if len(mine) != 1 else ''}: "
          f"{', '.join(mine) or 'none'}. The chief trains the best and exports.", flush=True)
    return SearchResult(None, None, None, [], {**info, "trials_run": mine}, worker=os.environ[ENV_TUNER_ID])


def _best(tuner, hypermodel: PipelineHyperModel, auto: bool, info: dict, directory: Path,
          epochs: int | None) -> SearchResult:
    """The chosen trial's family and hyperparameters (`choose`), for the epochs it was
    scheduled for (or `epochs`, the user's --epochs), and the table of every trial."""
    records = trial_records(tuner.oracle, hypermodel, auto)
    completed = [r for r in records if r["status"] == "COMPLETED"]
    if not completed:
        raise UserError(f"No trial of the search completed ({len(records)} tried); see the messages above. "
                        "Try another --learning-rate, or --no-tune.")
    best, selection = choose(records, info["validation_examples"])
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / "trials.csv"
    write_csv(records, csv_path)
    print(f"\nSearch finished: {len(completed)} of {len(records)} trials completed in "
          f"{info['seconds_this_session']:.0f} s this session.\n{_table(records, best['trial_id'])}\n"
          f"Trials table: {csv_path}\nChosen: trial {best['trial_id']}, {selection}.", flush=True)
    family, fhp = hypermodel.family_hyperparams(tuner.oracle.trials[best["trial_id"]].hyperparameters.copy())
    # The epochs its schedule spans, not those of its best score or of its early stop: a trial
    # stopped or peaking midway had not settled (docs/tuning.md, "Retrain").
    fhp = dataclasses.replace(fhp, epochs=epochs or best["epochs_scheduled"] or info["max_epochs"])
    info = {**info, "trials_csv": str(csv_path), "trials_completed": len(completed), "selection": selection,
            "epochs_from": "--epochs" if epochs else f"trial {best['trial_id']}"}
    return SearchResult(family, fhp, best, records, info)


def choose(records: list[dict], num_validation: int) -> tuple[dict, str]:
    """The trial to train, and why: the best validation accuracy, unless a family's defaults
    scored within one standard error of it (the one-standard-error rule).

    Trials are scored on a few thousand validation images, so scores a standard error apart
    (sqrt(p(1-p)/n): 0.13 points at 99% on 6,000 images) are a tie, and a trial that wins one
    by a few images is as likely to be worse as better on new data. The defaults are the
    measured choice (tfpipeline/models), so a tie goes to them. Each family's first trial is its
    defaults (the oracle proposes them first); a Hyperband trial that continues it has the
    same hyperparameters.
    """
    completed = [r for r in records if r["status"] == "COMPLETED"]
    best = max(completed, key=lambda r: r["score"])  # the first of equal scores: the earliest trial
    error = math.sqrt(best["score"] * (1 - best["score"]) / max(1, num_validation))
    defaults: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: r["trial_id"]):
        defaults.setdefault(record["family"], record["hyperparameters"])
    tied = [r for r in completed if r["hyperparameters"] == defaults[r["family"]]
            and r["score"] >= best["score"] - error]
    if not tied or best in tied:
        return best, "the best validation accuracy"
    pick = max(tied, key=lambda r: r["score"])
    return pick, (f"the {pick['family']} defaults: validation accuracy {pick['score']:.4f}, within one standard "
                  f"error ({error:.4f}) of the best, trial {best['trial_id']}'s {best['score']:.4f}")


def _announce(role, run_id, run_dir, budget, families, num_search, spec, tuner, resumed) -> None:
    size = (f"Hyperband, trials of up to {budget['max_epochs']} epochs, factor {budget['factor']}"
            + (f", at most {budget['max_trials']} trials" if budget["max_trials"] else "")
            if budget["tuner"] == "hyperband" else
            f"{budget['tuner']} search, {budget['max_trials']} trials of up to {budget['max_epochs']} epochs")
    print(f"Hyperparameter search {run_id}: {size}; families {', '.join(families)}; trials train on "
          f"{num_search:,} of {spec.num_examples['train']:,} training images and score validation accuracy on "
          f"{spec.num_examples['validation']:,}.\n  search directory {run_dir / 'search'}", flush=True)
    if role == "alone" or role == "chief":
        done = [t for t in tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED")]
        if resumed:
            print(f"Resuming the search: {len(done)} finished trial{'s' if len(done) != 1 else ''} kept "
                  f"({', '.join(sorted(t.trial_id for t in done)) or 'none'}); unfinished ones run again.", flush=True)
        space = tuner.oracle.get_space()
        print("  search space: " + "; ".join(_describe(hp) for hp in space.space), flush=True)
    if role == "chief":
        print(f"Chief: serving the oracle on {os.environ[ENV_ORACLE_IP]}:{os.environ[ENV_ORACLE_PORT]}; workers "
              f"({ENV_TUNER_ID}=tuner0, tuner1, ...) run the trials. Waiting for them to finish the search.", flush=True)


def _describe(hp) -> str:
    config = hp.get_config()
    if "values" in config:
        text = "|".join(str(v) for v in config["values"])
    elif "min_value" in config:
        text = f"{config['min_value']}..{config['max_value']}" + (" log" if config.get("sampling") == "log" else "")
    else:
        text = str(config.get("value", "true|false"))
    return f"{hp.name} {text}"
