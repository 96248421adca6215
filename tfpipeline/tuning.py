"""Hyperparameter search (KerasTuner) as a pipeline stage: search, retrain the best, export.

    python -m pipelines.mnist                           # Hyperband over the CNN's search space
    python -m pipelines.mnist --model auto              # the model family is searched too
    python -m pipelines.mnist --tuner bayesian --max-trials 30 --max-epochs 12

1. Search. KerasTuner does the bookkeeping (oracle, trials, checkpoints, resume); this module
   gives it a `HyperModel` that builds and compiles through our registry and training code.
   Each family declares its space next to its builder (`search_space(hp)` in
   tfpipeline/models/<family>.py) with the family's defaults as the space's defaults, and
   the first trial of each family *is* those defaults: the search starts from what an
   untuned run trains. `--model auto` adds a `family` choice and puts every family's space
   in a conditional scope (as AutoKeras does). Trials train on the first `--search-fraction`
   of the training split for up to `--max-epochs` epochs (Hyperband: `--factor`), with a
   warmup + cosine schedule over the epochs each trial trains and early stopping, and are
   scored by their best validation accuracy.
2. Retrain. The best trial's family and hyperparameters, from scratch, on train +
   validation, for the epochs at which that trial peaked (or `--epochs`).
3. Evaluate once on test; export through `export.export_verified`. metadata.json gets the
   search settings, the best hyperparameters and every trial; trials.csv the same table.

Layout of a search (the run id is kept while the run is unfinished):

    work/<dataset>/tune-<model>-<hash>/run.json        the unfinished run's id
    work/<dataset>/tune-<model>-<hash>/<run-id>/search/     KerasTuner's project (trials, checkpoints)
    work/<dataset>/tune-<model>-<hash>/<run-id>/trials.csv  the trials table
    work/<dataset>/tune-<model>-<hash>/<run-id>/retrain-*/  the retrain's BackupAndRestore
    runs/<dataset>/<run-id>/trials/<trial-id>/         each trial's curves and HParams session
    runs/<dataset>/<run-id>/{train,test}/              the retrained model, as for any run

The hash covers what defines "the same search" (dataset, families, budget, fixed
hyperparameters, seed, quick). Re-running an interrupted command reloads the search
(KerasTuner, overwrite=False): finished trials keep their ids and scores and are not run
again; a trial that was killed half-way is run again from its start. `--overwrite` drops the
unfinished search and starts a new run. Once a run has exported its model, the same
command starts a new search.

Distributed: KerasTuner's own chief/worker mode. Every process runs the same command; the
environment says which is which (KERASTUNER_TUNER_ID=chief|tuner0|tuner1..., and
KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT: where the chief's oracle listens). The chief
serves the oracle over gRPC and runs no trials; workers ask it for trials until the budget
is spent; then the chief retrains the best and exports.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import gc
import hashlib
import json
import math
import os
import shutil
import socket
import textwrap
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp_api

from tfpipeline import data as data_lib
from tfpipeline import distribute, evaluation, export, models, tensorboard_logs, training
from tfpipeline.errors import UserError

TUNERS = ("hyperband", "random", "bayesian")
OBJECTIVE = "val_accuracy"
FAMILY = "family"  # the hyperparameter that picks the family with --model auto
ENV_TUNER_ID, ENV_ORACLE_IP, ENV_ORACLE_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"

# The default budget, sized for a laptop CPU (README.md, "Hyperparameter search"): Hyperband trains
# trials of 3 and 12 epochs on a fifth of the training split (~6x cheaper per epoch than
# the full data), then the best is retrained for the epochs it needed on all of it.
DEFAULT_MAX_EPOCHS, DEFAULT_FACTOR, DEFAULT_FRACTION = 12, 4, 0.2
DEFAULT_TRIALS = 10  # random and bayesian (Hyperband's own schedule sets its number)
# --quick: a smoke test of the search in seconds (its data is already a small subset).
QUICK_MAX_EPOCHS, QUICK_FRACTION, QUICK_TRIALS = 2, 1.0, 3
TRIAL_PATIENCE = 3  # early stopping inside a trial, on validation accuracy


@dataclasses.dataclass
class SearchSettings:
    """`PipelineConfig.search`: how to search. None fields take the budget defaults above."""

    tuner: str = "hyperband"
    max_trials: int | None = None  # hyperband: a cap on its own schedule; others: the number of trials
    max_epochs: int | None = None  # epochs of the longest trial
    factor: int | None = None  # hyperband: each round keeps 1/factor of the trials, factor x longer
    search_fraction: float | None = None  # share of the training split the trials train on
    families: tuple[str, ...] | None = None  # --model auto: the families to choose from (default: all)
    overwrite: bool = False  # drop an unfinished search of the same command and start afresh

    def budget(self, quick: bool) -> dict[str, Any]:
        """The settings with every default filled in: what defines the search's size."""
        hyperband = self.tuner == "hyperband"
        trials = self.max_trials or (None if hyperband else QUICK_TRIALS if quick else DEFAULT_TRIALS)
        return {
            "tuner": self.tuner,
            "max_trials": trials,
            "max_epochs": self.max_epochs or (QUICK_MAX_EPOCHS if quick else DEFAULT_MAX_EPOCHS),
            "factor": (self.factor or DEFAULT_FACTOR) if hyperband else None,
            "search_fraction": self.search_fraction or (QUICK_FRACTION if quick else DEFAULT_FRACTION),
        }


# --- command line --------------------------------------------------------------------

def _factor(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 2, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (each round keeps 1/factor of the trials), got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a share of the training split), got {text}")
    return value


def _families(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in models.FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown)) or repr(text)}; "
            f"use a comma-separated list of {', '.join(models.FAMILIES)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tfpipeline.cli import positive_int

    group = parser.add_argument_group(
        "hyperparameter search (KerasTuner)",
        textwrap.fill(  # the parser keeps descriptions as written (RawDescriptionHelpFormatter)
        "By default a run searches the family's hyperparameters first, then retrains the best on "
        "train+validation for the epochs it needed, and exports that. --quick, --strategy, "
        "--cpu-devices and a TF_CONFIG naming several workers train the family's defaults instead "
        "unless --tune or a search flag is given. "
        "An interrupted search resumes when the same command runs again. Distributed search: run the "
        f"same command as chief and workers with {ENV_TUNER_ID}=chief|tuner0|tuner1..., "
        f"{ENV_ORACLE_IP} and {ENV_ORACLE_PORT} (see the README, 'Hyperparameter search').", width=100),
    )
    group.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                       help="search first (the default for a full run), or --no-tune: train the family's defaults")
    group.add_argument("--tuner", choices=TUNERS, help="search algorithm (default: hyperband)")
    group.add_argument("--max-trials", type=positive_int, metavar="N",
                       help=f"number of trials (random, bayesian; default {DEFAULT_TRIALS}) or a cap on Hyperband's")
    group.add_argument("--max-epochs", type=positive_int, metavar="N",
                       help=f"epochs of the longest trial (default {DEFAULT_MAX_EPOCHS}; --quick: {QUICK_MAX_EPOCHS})")
    group.add_argument("--factor", type=_factor, metavar="N",
                       help=f"Hyperband: keep 1/N of the trials per round, each N times longer (default {DEFAULT_FACTOR})")
    group.add_argument("--search-fraction", type=_fraction, metavar="F",
                       help=f"share of the training split the trials train on (default {DEFAULT_FRACTION}; "
                            f"--quick: {QUICK_FRACTION}); the retrain uses all of it")
    group.add_argument("--families", type=_families, metavar="A,B",
                       help="with --model auto: the families to choose from (default: all)")
    group.add_argument("--overwrite", action="store_true", default=None,
                       help="drop an unfinished search of this command and start a new one")


def settings_from_args(args: argparse.Namespace) -> SearchSettings | None:
    """The search the flags ask for, or None for a single training of the family's defaults."""
    flags = {"--tuner": args.tuner, "--max-trials": args.max_trials, "--max-epochs": args.max_epochs,
             "--factor": args.factor, "--search-fraction": args.search_fraction, "--families": args.families,
             "--overwrite": args.overwrite}
    given = [flag for flag, value in flags.items() if value is not None]
    auto = args.model == "auto"
    strategy = getattr(args, "strategy", "auto")
    # `--strategy auto` with a TF_CONFIG of several workers is multi-worker training: the same
    # plain command on every machine (as Kubeflow and Vertex AI start it) trains one model
    # together instead of each machine searching and exporting on its own.
    cluster = distribute.parse_tf_config(os.environ.get(distribute.ENV_TF_CONFIG)) if strategy == "auto" else None
    workers = cluster.workers if cluster is not None else 1
    distributed = [flag for flag, on in (("--strategy", strategy not in ("auto", "default")),
                                         ("--cpu-devices", getattr(args, "cpu_devices", None) is not None),
                                         (f"TF_CONFIG with {workers} workers", workers > 1)) if on]
    if args.tune is False:
        if given or auto:
            what = ", ".join(given + (["--model auto"] if auto else []))
            raise UserError(f"{what} configure{'s' if len(given) + auto == 1 else ''} the hyperparameter search, "
                            "which --no-tune turns off: drop one or the other.")
        return None
    if args.tune is None and not given and not auto:
        reason = "--quick" if args.quick else (distributed[0] if distributed else None)
        if reason:
            print(f"No hyperparameter search ({reason}): training the family's defaults. "
                  "Add --tune to search first.", flush=True)
            return None
    if distributed:
        raise UserError(f"{distributed[0]} distributes a single training; the search runs each trial on one "
                        "device. Add --no-tune to train the family's defaults with it, or scale the search out "
                        f"with distributed tuning ({ENV_TUNER_ID}, see the README).")
    if args.families and not auto:
        raise UserError(f"--families chooses among families for --model auto; with --model {args.model} "
                        "drop it (or use --model auto).")
    if args.factor is not None and (args.tuner or "hyperband") != "hyperband":
        raise UserError(f"--factor is Hyperband's; --tuner {args.tuner} has no rounds. Drop --factor.")
    return SearchSettings(tuner=args.tuner or "hyperband", max_trials=args.max_trials, max_epochs=args.max_epochs,
                          factor=args.factor, search_fraction=args.search_fraction, families=args.families,
                          overwrite=bool(args.overwrite))


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
                                         self.num_search, early_stopping_patience=0)
        return training.compile_model(model, settings)

    def fit(self, hp, model, *args, callbacks=None, epochs=1, initial_epoch=0, **kwargs):
        family, fhp = self.family_hyperparams(hp)
        train, validation = self.trial_data.pipelines(fhp.batch_size)
        logdir = self.logdir / "trials" / self.trial_id
        # The row the HParams dashboard shows: the same names as a run's row
        # (tensorboard_logs.run_hparams), plus the trial id; trial_id groups one session per trial.
        row = tensorboard_logs.run_hparams(dataclasses.replace(self.config, model=family),
                                           dataclasses.replace(fhp, epochs=epochs), model.count_params())
        row["trial"] = self.trial_id
        writer = tf.summary.create_file_writer(str(logdir))  # ours to close: the callback only drops it
        callbacks = [
            # First, so the tuner's best-epoch checkpoint and early stopping see averaged weights.
            *training.weight_averaging_callbacks(getattr(model.optimizer, "use_ema", False)),
            *(callbacks or []),
            keras.callbacks.TerminateOnNaN(),
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

    def __init__(self, train: tf.data.Dataset, validation: tf.data.Dataset, seed: int,
                 options: tuple[dict, dict] = ({}, {})):
        # options: data.Datasets.pipeline_options of each (the cache decision, shuffle buffer).
        self.train, self.validation, self.seed, self.options = train, validation, seed, options
        self._pipelines: dict[int, tuple[tf.data.Dataset, tf.data.Dataset]] = {}

    def pipelines(self, batch_size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        if batch_size not in self._pipelines:
            self._pipelines[batch_size] = (
                data_lib.make_pipeline(self.train, batch_size=batch_size, training=True, seed=self.seed,
                                       **self.options[0]),
                data_lib.make_pipeline(self.validation, batch_size=batch_size, training=False, seed=self.seed,
                                       **self.options[1]),
            )
        return self._pipelines[batch_size]


# --- oracles and tuners ---------------------------------------------------------------------

def _write_json(path: str, state: dict) -> None:
    """Write-then-rename: a kill in the middle leaves the previous file, never a cut one.

    KerasTuner truncates its state files and then writes them (oracle.json, trial.json,
    tuner0.json); a kill -9 in between would leave a search that cannot be reloaded.
    """
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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

    # Atomic saves (see _write_json); the same files and paths as KerasTuner 1.4's own.
    def save(self):
        _write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        _write_json(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())


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
        _write_json(self._get_tuner_fname(), self.get_state())

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


def make_tuner(budget: dict, families: tuple[str, ...], auto: bool, hypermodel: PipelineHyperModel,
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
            "seconds": _metric(trial, "seconds"),
            "val_loss": _metric(trial, "val_loss"),
            "continues": values.get("tuner/trial_id"),  # Hyperband: the trial this round continued
            "hyperparameters": searched,
        })
    return records


def write_csv(records: list[dict], path: Path) -> None:
    names = sorted({name for r in records for name in r["hyperparameters"]})
    columns = ["trial_id", "status", "family", "score", "epochs", "epochs_trained", "seconds", "val_loss", "continues"]
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
        mark = "  <- best" if r["trial_id"] == best_id else ""
        lines.append(f"  {r['trial_id']:<6} {r['family'] or '-':<12} {r['status']:<10} {score:>8} "
                     f"{r['epochs'] or '-':>6} {seconds:>8}{mark}")
    return "\n".join(lines)


# --- run state -----------------------------------------------------------------------------------

def _role() -> str:
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


def _wait_for_chief(timeout: float = 3600) -> None:
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


def _state_key(config, budget: dict, families, fixed: dict) -> str:
    identity = {"dataset": config.dataset, "families": list(families), "budget": budget, "fixed": fixed,
                "seed": config.seed, "quick": config.quick, "validation_fraction": config.validation_fraction}
    for key in ("image_size", "channels"):  # only when given: older searches keep their keys
        if getattr(config, key) is not None:
            identity[key] = getattr(config, key)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"tune-{config.model}-{digest[:10]}"


def _read_run(pointer: Path) -> str | None:
    for _ in range(50):  # written in one go, but a reader on a network file system may see it early
        try:
            return json.loads(pointer.read_text())["run_id"]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError):
            time.sleep(0.1)
    raise UserError(f"{pointer} is unreadable; delete it (or run with --overwrite) to start a new search.")


def _resolve_run(state_dir: Path, config, overwrite: bool, role: str) -> tuple[str, bool]:
    """(run id, whether this process created it): the unfinished run of this command, or a new
    one; race-free for processes started together."""
    state_dir.mkdir(parents=True, exist_ok=True)
    pointer = state_dir / "run.json"
    if overwrite and role != "worker":  # a worker follows whatever its chief decided
        old = _read_run(pointer)
        if old is not None:
            print(f"--overwrite: dropping the unfinished search of run {old}.", flush=True)
            shutil.rmtree(state_dir / old, ignore_errors=True)
            pointer.unlink(missing_ok=True)
    existing = _read_run(pointer)
    if existing is not None:
        return existing, False
    run_id = config.run_name or f"{dt.datetime.now():%Y%m%d-%H%M%S}-{config.model}-tuned"
    tmp = state_dir / f".run-{os.getpid()}.json"
    tmp.write_text(json.dumps({"run_id": run_id}))
    created = True
    try:
        os.link(tmp, pointer)  # atomic, and fails if another process got there first
    except FileExistsError:
        run_id, created = _read_run(pointer), False
    finally:
        tmp.unlink(missing_ok=True)
    if overwrite and config.run_name:  # same id as the dropped run: its trial logs go too
        shutil.rmtree(Path(config.logdir) / config.dataset_name / run_id / "trials", ignore_errors=True)
    return run_id, created


# --- the stage -----------------------------------------------------------------------------------

def _validate(config, settings: SearchSettings, families: tuple[str, ...]) -> None:
    if settings.tuner not in TUNERS:
        raise UserError(f"Unknown tuner {settings.tuner!r}; choose one of {', '.join(TUNERS)}.")
    for name in ("max_trials", "max_epochs"):
        value = getattr(settings, name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}.")
    if settings.factor is not None and (not isinstance(settings.factor, int) or settings.factor < 2):
        raise UserError(f"--factor must be a whole number of at least 2, got {settings.factor}.")
    if settings.search_fraction is not None and not 0 < settings.search_fraction <= 1:
        raise UserError(f"--search-fraction must be in (0, 1], got {settings.search_fraction}.")
    if config.model == "auto" and (config.hparams or config.learning_rate is not None):
        raise UserError("--hparam and --learning-rate pin one family's hyperparameters; with --model auto "
                        "every family is searched. Choose a --model to pin them.")
    for family in families:
        dataclasses.replace(config, model=family, search=None).validate()  # the backbone's checks
        models.hyperparams(family, _fixed(config))  # --hparam names and types
    if not families:
        raise UserError("--families is empty; name at least one of " + ", ".join(models.FAMILIES) + ".")


def _fixed(config) -> dict[str, Any]:
    fixed = dict(config.hparams)
    for key in ("batch_size", "learning_rate"):
        if getattr(config, key) is not None:
            fixed[key] = getattr(config, key)
    return fixed


def run(config):
    """`pipeline.run` for a config with `search` set: search, retrain the best, export."""
    from tfpipeline.pipeline import PipelineResult, provenance

    started = time.time()
    started_at = dt.datetime.now(dt.timezone.utc)
    settings: SearchSettings = config.search
    auto = config.model == "auto"
    families = tuple(settings.families or models.FAMILIES) if auto else (config.model,)
    _validate(config, settings, families)
    role = _role()
    budget = settings.budget(config.quick)
    fixed = _fixed(config)
    export_base = None if role == "worker" else export.ensure_writable(Path(config.export_dir) / config.dataset_name)

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    datasets = data_lib.load(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
                             validation_fraction=config.validation_fraction, quick=config.quick,
                             image_size=config.image_size, channels=config.channels,
                             cache_budget=config.cache_budget, work_dir=config.work_dir, seed=config.seed)
    spec = datasets.spec
    num_train = spec.num_examples["train"]
    num_search = max(1, round(num_train * budget["search_fraction"]))
    trial_data = _TrialData(datasets.train.take(num_search), datasets.validation, config.seed,
                            (datasets.pipeline_options(f"search-train-{num_search}"),
                             datasets.pipeline_options("validation")))

    state_dir = Path(config.work_dir) / config.dataset_name / _state_key(config, budget, families, fixed)
    if role == "worker":
        _wait_for_chief()
    run_id, created = _resolve_run(state_dir, config, settings.overwrite, role)
    if role == "worker" and created:
        # The chief writes run.json before it listens, so it does not share this work dir.
        print(f"Worker: no run of the chief's in {state_dir} (storage not shared): this worker's checkpoints "
              f"and logs go to run {run_id} here.", flush=True)
    run_dir = state_dir / run_id
    logdir = Path(config.logdir) / config.dataset_name / run_id
    resumed = (run_dir / "search" / "oracle.json").exists()
    verbose = training.default_verbosity() if config.verbose is None else config.verbose
    hypermodel = PipelineHyperModel(config, families, fixed, spec, trial_data, num_search, budget["max_epochs"],
                                    logdir, run_id, verbose)
    try:
        tuner = make_tuner(budget, families, auto, hypermodel, run_dir, config.seed)
    except (RuntimeError, json.JSONDecodeError) as exc:  # a state file cut short by a kill mid-write
        raise UserError(f"Cannot reload the search in {run_dir / 'search'}: {exc}. Run with --overwrite to "
                        "start it afresh.") from exc
    _announce(role, run_id, run_dir, budget, families, num_search, spec, tuner, resumed)

    search_started = time.monotonic()
    try:
        tuner.search(epochs=budget["max_epochs"], verbose=verbose, callbacks=[keras.callbacks.EarlyStopping(
            monitor=OBJECTIVE, mode="max", patience=TRIAL_PATIENCE)])
    except RuntimeError as exc:  # KerasTuner stops after 3 failed trials in a row
        raise UserError(f"The search stopped: {str(exc).strip().splitlines()[0]} Recent trials failed; their "
                        f"messages are above and in {run_dir / 'search'}/trial_*/trial.json.") from exc
    search_seconds = round(time.monotonic() - search_started, 1)

    if role == "worker":
        if created:  # ours alone: the next search here must not reuse it
            (state_dir / "run.json").unlink(missing_ok=True)
        mine = getattr(tuner, "trials_run", [])
        print(f"\nWorker {os.environ[ENV_TUNER_ID]} ran {len(mine)} trial{'s' if len(mine) != 1 else ''}: "
              f"{', '.join(mine) or 'none'}. The chief retrains the best and exports.", flush=True)
        return PipelineResult(run_id, None, None, logdir, float("nan"), {
            "search": {"worker": os.environ[ENV_TUNER_ID], "run_dir": str(run_dir), "trials_run": mine}})

    records = trial_records(tuner.oracle, hypermodel, auto)
    completed = [r for r in records if r["status"] == "COMPLETED"]
    if not completed:
        raise UserError(f"No trial of the search completed ({len(records)} tried); see the messages above. "
                        "Try another --learning-rate, or --no-tune.")
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best = next(r for r in records if r["trial_id"] == best_trial.trial_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    csv_path = run_dir / "trials.csv"
    write_csv(records, csv_path)
    print(f"\nSearch finished: {len(completed)} of {len(records)} trials completed in {search_seconds:.0f} s "
          f"this session.\n{_table(records, best['trial_id'])}\nTrials table: {csv_path}", flush=True)

    # --- retrain the best from scratch on train + validation --------------------------------
    family, fhp = hypermodel.family_hyperparams(best_trial.hyperparameters.copy())
    epochs = config.epochs or best["epochs"] or budget["max_epochs"]
    hp = dataclasses.replace(fhp, epochs=epochs)
    print(f"\nRetraining trial {best['trial_id']} ({family}, validation accuracy {best['score']:.4f}) on "
          f"train+validation for {epochs} epochs{' (--epochs)' if config.epochs else ''}.", flush=True)
    num_full = num_train + spec.num_examples["validation"]
    full_train = data_lib.make_pipeline(datasets.train.concatenate(datasets.validation), batch_size=hp.batch_size,
                                        training=True, seed=config.seed,
                                        **datasets.pipeline_options("train+validation"))
    test_images, test_labels = evaluation.collect(
        data_lib.make_pipeline(datasets.test, batch_size=hp.batch_size, training=False, seed=config.seed,
                               **datasets.pipeline_options("test")))
    # No validation split is left to stop on: train the epochs the search found.
    settings_ = training.settings_for(hp, num_full, verbose=config.verbose, histogram_freq=config.histogram_freq,
                                      profile_batches=config.profile_batches, early_stopping_patience=0)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    model = training.compile_model(models.build(family, spec.input_shape, spec.num_classes, hp), settings_)
    final_config = dataclasses.replace(config, model=family)
    run_log = tensorboard_logs.RunLog(logdir, final_config, hp, model, spec.class_names,
                                      settings_.epochs * settings_.steps_per_epoch)
    retrain_key = hashlib.sha256(json.dumps([family, dataclasses.asdict(hp)], default=str).encode()).hexdigest()[:10]
    history = training.fit(model, full_train, None, settings_, logdir=logdir,
                           backup_dir=run_dir / f"retrain-{retrain_key}")
    epochs_run = training.epochs_completed(history)

    test_eval = evaluation.evaluate(model, test_images, test_labels, spec.class_names)
    validation = {"accuracy": best["score"], "loss": best["val_loss"],
                  "source": f"search: trial {best['trial_id']} before the retrain (which also trains on validation)"}
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / "metrics.json").write_text(json.dumps({"validation": validation, "test": test_eval.to_json()}, indent=2))
    metadata = {
        "dataset": {"name": spec.name, "version": spec.version, "splits": spec.splits,
                    "num_examples": spec.num_examples, "class_names": list(spec.class_names),
                    "input_shape": list(spec.input_shape), **spec.source},
        "model": {"family": family, "hyperparameters": dataclasses.asdict(hp), "parameters": model.count_params()},
        "training": {"epochs_requested": epochs, "epochs_run": epochs_run, "steps_per_epoch": settings_.steps_per_epoch,
                     "steps_run": int(model.optimizer.iterations.numpy()),
                     "epochs_from": "--epochs" if config.epochs else f"best trial {best['trial_id']}",
                     "trained_on": ["train", "validation"], "examples": num_full, "seed": config.seed,
                     "deterministic": config.deterministic, "quick": config.quick, "resumed": resumed},
        "metrics": {
            "validation": validation,
            "test": {"accuracy": test_eval.accuracy, "loss": test_eval.loss,
                     "per_class_accuracy": test_eval.per_class_accuracy,
                     "confusion_matrix": test_eval.confusion_matrix},
        },
        "search": {
            **budget, "objective": f"{OBJECTIVE} (max)", "families": list(families), "auto": auto,
            "fixed": {k: _encode(v) for k, v in fixed.items()}, "search_examples": num_search,
            "validation_examples": spec.num_examples["validation"], "trial_patience": TRIAL_PATIENCE,
            "seed": config.seed, "distributed": role == "chief", "resumed": resumed,
            "directory": str(run_dir / "search"), "trials_csv": str(csv_path),
            "trials_logdir": str(logdir / "trials"), "seconds_this_session": search_seconds,
            "trials_completed": len(completed),
            "best": {"trial_id": best["trial_id"], "family": family, "score": best["score"],
                     "epochs": best["epochs"], "hyperparameters": best["hyperparameters"]},
            "trials": records,
        },
        "run": {"id": run_id, "logdir": str(logdir), **provenance(),
                "started": started_at.isoformat(timespec="seconds"),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "wall_seconds": round(time.time() - started, 1)},
    }
    result = export.export_verified(model, spec.input_shape, export_base, test_images, test_labels,
                                    test_eval.accuracy, metadata)
    run_log.finish(model, test_images, test_labels, metadata, result.path)
    # Finished: the next run of this command is a new search (this one stays in run_dir).
    (state_dir / "run.json").unlink(missing_ok=True)
    return PipelineResult(run_id=run_id, export_path=result.path, metadata_path=result.metadata_path,
                          logdir=logdir, test_accuracy=test_eval.accuracy, metadata=metadata)


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
