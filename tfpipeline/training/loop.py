"""Compile and fit a model on the tf.data pipelines, with the callbacks a real run needs.

Keras does the work: `compile` + `fit`, a warmup + cosine learning-rate schedule stepped per
batch, TensorBoard, EarlyStopping on validation loss, TerminateOnNaN, and
BackupAndRestore so a killed run picks up from its last finished epoch when re-run.

Divergence: a training loss that becomes NaN/inf, or explodes far above the loss of guessing
(`DivergenceWatch`), stops the attempt. `fit` then rolls back once to the weights of the last
finished epoch (kept in memory at every epoch end) and trains the remaining epochs again with
half the learning rate and gradient clipping on; if that diverges too, or ends having learned
nothing, it raises `TrainingDiverged`, naming both attempts. See docs/divergence.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfpipeline.errors import TrainingDiverged
from tfpipeline.training import freezing, internals, losses, optimizers, seeds

# A training loss this many times that of guessing uniformly (ln of the number of classes) is
# taken as divergence even while finite: with a far too high learning rate Adam drives the
# loss orders of magnitude up without a NaN, and the run would end, and be published, at
# chance accuracy (docs/divergence.md). A sound run starts near that loss and only goes down.
EXPLOSION_FACTOR = 10.0
# The clipping the retry turns on when the run had none: Keras's per-variable gradient-norm
# clip (`clipnorm`) at 1.0, the usual starting value.
RETRY_CLIPNORM = 1.0


@dataclasses.dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float  # peak learning rate, reached after the warmup
    steps_per_epoch: int
    warmup_fraction: float = 0.1  # of all steps, at most one epoch's worth
    # A warm restart (SGDR): 0, one cosine decay over the whole run; N > 0, a first cosine
    # cycle of N epochs, then one over the rest. Each cycle ends at a rate near zero, so the
    # model at the end of the first is already a settled one (see `learning_rate_schedule`).
    first_cycle_epochs: int = 0
    beta_1: float = 0.9  # Adam's moment decay rates (Keras's defaults)
    beta_2: float = 0.999
    label_smoothing: float = 0.0  # of the cross-entropy's targets (losses.SparseSmoothedCrossentropy)
    # AdamW's decoupled weight decay (Keras's `weight_decay`); 0: plain Adam.
    weight_decay: float = 0.0
    # Gradient clipping, Keras optimizer options (at most one): each variable's gradient is
    # rescaled to at most this L2 norm (clipnorm), or clipped elementwise (clipvalue).
    clipnorm: float | None = None
    clipvalue: float | None = None
    # Weight averaging (Polyak): the optimizer keeps an exponential moving average of the
    # weights, which validation, the epoch-end callbacks and the export use. Averaging over the
    # last ~1/(1-m) steps smooths out the noise of a high learning rate, so the model is good
    # earlier in training. 0 disables it.
    ema_momentum: float = 0.0
    early_stopping_patience: int = 4
    # Layers (by name) that do not train in the first `frozen_epochs` epochs (`freezing`).
    frozen_layers: tuple[str, ...] = ()
    frozen_epochs: int = 0
    # Training steps per compiled call. None: each loop's own default, 1 for Keras's `fit`
    # (its per-call cost is small next to a step) and `multiworker.STEPS_PER_CALL` for the
    # multi-worker loop. Callbacks see one batch per call, as `fit` does.
    steps_per_execution: int | None = None
    jit_compile: bool | str = "auto"
    verbose: int | None = None  # None: progress bar on a terminal, one line per epoch otherwise
    histogram_freq: int = 1  # weight histograms every N epochs; 0: none
    profile_batches: tuple[int, int] | None = None  # (START, END), 1-based training batches to trace


def settings_for(hp, num_train_examples: int, **overrides) -> TrainSettings:
    """Training settings from a family's hyperparameters (epochs, batch size, learning rate)."""
    values = dict(
        epochs=hp.epochs,
        batch_size=hp.batch_size,
        learning_rate=hp.learning_rate,
        steps_per_epoch=-(-num_train_examples // hp.batch_size),
    )
    # A family may set its own.
    for name in ("warmup_fraction", "ema_momentum", "first_cycle_epochs", "beta_1", "beta_2", "label_smoothing"):
        if hasattr(hp, name):
            values[name] = getattr(hp, name)
    if getattr(hp, "frozen_layers", ()):
        values.update(frozen_layers=hp.frozen_layers, frozen_epochs=hp.frozen_stem_epochs)
    return TrainSettings(**(values | overrides))


def optimizer_options(config) -> dict:
    """The `TrainSettings` overrides a pipeline config carries for the optimizer (--clipnorm,
    --clipvalue, --weight-decay), for `settings_for(..., **optimizer_options(config))`."""
    return {name: getattr(config, name) for name in ("clipnorm", "clipvalue", "weight_decay")
            if getattr(config, name, None) is not None}


def check_optimizer_options(clipnorm, clipvalue, weight_decay) -> None:
    """Raise `UserError` for values Keras would refuse or silently misuse."""
    from tfpipeline.errors import UserError

    for flag, value in (("--clipnorm", clipnorm), ("--clipvalue", clipvalue)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise UserError(f"{flag} must be a positive finite number, got {value}.")
    if clipnorm is not None and clipvalue is not None:
        raise UserError(f"--clipnorm {clipnorm} and --clipvalue {clipvalue} were both given; Keras optimizers "
                        "take one kind of gradient clipping. Keep one of them.")
    if weight_decay is not None and not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise UserError(f"--weight-decay must be 0 (plain Adam) or a positive number, got {weight_decay}.")


def optimizer_record(settings: TrainSettings) -> dict:
    """What metadata.json records about the optimizer these settings compile."""
    return {
        "name": "AdamW" if settings.weight_decay else "Adam",
        "peak_learning_rate": settings.learning_rate,
        "cycle_epochs": cycle_epochs(settings),
        "beta_1": settings.beta_1,
        "beta_2": settings.beta_2,
        "label_smoothing": settings.label_smoothing,
        "weight_decay": settings.weight_decay,
        "clipnorm": settings.clipnorm,
        "clipvalue": settings.clipvalue,
        "ema_momentum": averaging_momentum(settings),
    }


def cycle_epochs(settings: TrainSettings) -> list[int]:
    """The lengths, in epochs, of the schedule's cosine cycles: the whole run as one, or with
    `first_cycle_epochs` N a first cycle of N epochs and a second over the rest."""
    first, epochs = settings.first_cycle_epochs, settings.epochs
    return [first, epochs - first] if 0 < first < epochs else [epochs]


def learning_rate_schedule(settings: TrainSettings) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup to the peak rate, then cosine decay to zero at the last step; with a
    warm restart, a cosine decay to zero in each cycle of `cycle_epochs`.

    Warmup lets a high peak rate (fast progress) start without wrecking the random initial
    weights; decaying to zero settles the weights for the last epochs. A restart gives a
    settled model early too (a one-epoch first cycle: a good model after one epoch), and the
    long second cycle still trains it to the end.
    """
    total = max(1, settings.epochs * settings.steps_per_epoch)
    warmup = min(settings.steps_per_epoch, int(total * settings.warmup_fraction))
    cycles = cycle_epochs(settings)
    if len(cycles) > 1:
        return CosineCycles(settings.learning_rate, [c * settings.steps_per_epoch for c in cycles], warmup)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=settings.learning_rate / 100 if warmup else settings.learning_rate,
        decay_steps=max(1, total - warmup),
        warmup_target=settings.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.0,
    )


@keras.saving.register_keras_serializable(package="tfpipeline")
class CosineCycles(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then cosine decays from the peak rate to zero over cycles of the given
    lengths, each restarting at the peak (SGDR, Loshchilov & Hutter 2017).

    Keras's `CosineDecayRestarts` has no warmup and only geometric cycle lengths, so a run
    would end mid-cycle at a high rate unless its epochs happened to be a sum of them.

    Args:
        peak_learning_rate: The rate at the start of each cycle (after the warmup).
        cycle_steps: The length of each cycle in steps; they add up to the run's steps.
        warmup_steps: Steps of linear warmup from a hundredth of the peak, at the start of
            the first cycle.
    """

    def __init__(self, peak_learning_rate: float, cycle_steps: list[int], warmup_steps: int = 0):
        self.peak_learning_rate = peak_learning_rate
        self.cycle_steps = [int(c) for c in cycle_steps]
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        ends = tf.constant(list(itertools.accumulate(self.cycle_steps)), tf.float32)
        starts = tf.concat([[float(self.warmup_steps)], ends[:-1]], axis=0)
        cycle = tf.minimum(tf.reduce_sum(tf.cast(step >= ends, tf.int32)), len(self.cycle_steps) - 1)
        progress = tf.clip_by_value((step - starts[cycle]) / tf.maximum(ends[cycle] - starts[cycle], 1.0), 0.0, 1.0)
        cosine = 0.5 * self.peak_learning_rate * (1.0 + tf.cos(math.pi * progress))
        low = self.peak_learning_rate / 100
        warming = low + (self.peak_learning_rate - low) * step / max(1, self.warmup_steps)
        return tf.where(step < self.warmup_steps, warming, cosine)

    def get_config(self):
        return {"peak_learning_rate": self.peak_learning_rate, "cycle_steps": self.cycle_steps,
                "warmup_steps": self.warmup_steps}


def compile_model(model: keras.Model, settings: TrainSettings) -> keras.Model:
    schedule = learning_rate_schedule(settings)
    momentum = averaging_momentum(settings)
    options = dict(use_ema=True, ema_momentum=momentum) if momentum else {}
    options.update(clipnorm=settings.clipnorm, clipvalue=settings.clipvalue,
                   beta_1=settings.beta_1, beta_2=settings.beta_2)
    if settings.weight_decay:
        optimizer = optimizers.AdamW(schedule, weight_decay=settings.weight_decay, **options)
    else:
        optimizer = optimizers.Adam(schedule, **options)
    model.compile(
        optimizer=optimizer,
        # Models output logits: softmax happens in the loss here and in the export's signature.
        loss=losses.for_training(settings.label_smoothing),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=settings.steps_per_execution or 1,
        jit_compile=settings.jit_compile,
    )
    # Create the optimizer's slots (Adam's moments, the weight average) now, eagerly. Left to
    # Keras, they are created inside the trace of the first training step, and tf.function
    # traces a function that creates variables twice (docs/benchmarks.md, round three).
    optimizer.build(model.trainable_variables)
    return model


def averaging_momentum(settings: TrainSettings) -> float:
    """The run's weight-averaging momentum: the family's, but over at most a tenth of the run.

    Keras's average starts from the first step's weights; in a short run (a smoke test, a
    one-epoch search trial) a long average would still be mostly those untrained weights.
    """
    if not settings.ema_momentum:
        return 0.0
    total = settings.epochs * settings.steps_per_epoch
    return max(0.0, min(settings.ema_momentum, 1 - 10 / total))


def weight_averaging_callbacks(enabled: bool) -> list[keras.callbacks.Callback]:
    """With weight averaging on, swap the averaged weights in for validation and epoch ends.

    From the end of an epoch to the start of the next, the model holds the averaged weights,
    so the callbacks after this one (EarlyStopping's best weights, checkpoints, TensorBoard,
    sample predictions) see the model as it will be exported. Keras writes the average into
    the model when `fit` ends.
    """
    return [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if enabled else []


def default_verbosity() -> int:
    """Keras progress bars on a terminal; one concise line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


def make_callbacks(
    logdir: str | Path | None,
    backup_dir: str | Path | None,
    settings: TrainSettings,
    extra: list[keras.callbacks.Callback] | None = None,
    *,
    report_resume: bool = True,
    write_graph: bool = True,
    state_dir: str | Path | None = None,
) -> list[keras.callbacks.Callback]:
    """The callbacks of every training loop: a run's (`fit`, `multiworker.fit`) and a search
    trial's (`tuning.hypermodel`), in the order they must run.

    Args:
        logdir: TensorBoard's folder; None: no TensorBoard.
        backup_dir: BackupAndRestore's folder; None: no backup (a trial, a worker's copy).
        settings: the settings the model was compiled with: freezing, weight averaging, early
            stopping, histograms and the profile follow them.
        extra: appended after ours (they see the model as it will be exported).
        report_resume: print the epoch a resumed run starts from (not for a retry, which
            starts mid-run on purpose).
        write_graph: TensorBoard's graph (a search trial skips it).
        state_dir: where early stopping keeps its state (`ResumableEarlyStopping`); None: in
            `backup_dir`. The multi-worker loop, which has no BackupAndRestore, names its
            checkpoint's folder.
    """
    # First, so every callback after it sees the model with all its layers trainable.
    callbacks: list[keras.callbacks.Callback] = [*freezing.callbacks(settings.frozen_layers, settings.frozen_epochs),
                                                 seeds.EpochSeeds(), keras.callbacks.TerminateOnNaN()]
    if backup_dir is not None:
        # Saves model, optimizer (and so the schedule's step) and epoch after every epoch;
        # deleted when training finishes, so only an interrupted run leaves it behind.
        # double_checkpoint: a kill in the middle of writing the weights leaves the previous
        # epoch's copy, which the restore falls back to, instead of an unreadable backup.
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True))
        if report_resume:
            callbacks.append(_ResumeReport(backup_dir, settings.epochs))
    # After the backup (which must save the raw weights and their average as they are), before
    # everything that judges or keeps the model at an epoch's end.
    callbacks += weight_averaging_callbacks(averaging_momentum(settings) > 0)
    if settings.early_stopping_patience:
        callbacks.append(
            # On the validation loss, not accuracy: a few thousand validation images move the
            # accuracy in coarse steps, so late epochs of the cosine decay (usually the best)
            # tie or dip by one image, and patience would run out and restore an earlier epoch.
            ResumableEarlyStopping(state_dir or backup_dir, monitor="val_loss", mode="min",
                                   patience=settings.early_stopping_patience, restore_best_weights=True)
        )
    if logdir is not None:
        # Also logs the learning rate (Keras adds it to the train scalars).
        callbacks.append(
            keras.callbacks.TensorBoard(
                str(logdir),
                histogram_freq=settings.histogram_freq,
                write_graph=write_graph,
                # The trace goes to <logdir>/train/plugins/profile/, where the profile tab finds it.
                profile_batch=settings.profile_batches or 0,
            )
        )
    return callbacks + list(extra or [])


@dataclasses.dataclass(frozen=True)
class Recovery:
    """What `fit` did after a divergence."""

    diverged: str  # how the first attempt diverged
    rolled_back_to_epoch: int  # the finished epochs whose weights the retry started from
    retry: dict  # the retry's optimizer (`optimizer_record`)
    retry_epochs: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What a training loop returns: Keras's per-epoch logs, under the names a Keras `History`
    uses (`history`, `epoch`), and what was done after a divergence."""

    history: dict[str, list[float]]  # metric name → one value per epoch run by this call
    epoch: list[int]  # the 0-based epochs run by this call (a resumed run starts past 0)
    recovery: Recovery | None = None  # None: training never diverged

    @classmethod
    def of(cls, history: keras.callbacks.History, recovery: Recovery | None = None) -> FitResult:
        return cls(dict(history.history), list(history.epoch), recovery)


def epochs_completed(history: FitResult | keras.callbacks.History) -> int:
    """Epochs done in total, counting those a resumed run restored from its backup."""
    return history.epoch[-1] + 1 if history.epoch else 0


def check_finite(history: FitResult | keras.callbacks.History) -> None:
    """Raises `TrainingDiverged` if an epoch's training loss is NaN or infinite."""
    for epoch, loss in zip(history.epoch, history.history.get("loss", [])):
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss} in epoch {epoch + 1}")


def recovery_of(result: FitResult) -> dict | None:
    """What `fit` did after a divergence, as metadata.json records it; None if training never diverged."""
    return result.recovery.to_json() if result.recovery is not None else None


@dataclasses.dataclass(frozen=True)
class _FitJob:
    """What every attempt of one `fit` trains on, and where it writes."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    settings: TrainSettings  # the run's; a retry is compiled with `retry_settings` of them
    logdir: str | Path | None
    backup_dir: str | Path | None
    extra_callbacks: list[keras.callbacks.Callback] | None


def fit(
    model: keras.Model,
    train,
    validation,
    settings: TrainSettings,
    *,
    logdir: str | Path | None = None,
    backup_dir: str | Path | None = None,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> FitResult:
    """Compile (if needed) and train; on divergence roll back and retry once, else raise.

    On a NaN/inf or exploded loss (`DivergenceWatch`) the model goes back to the weights it had
    at the end of the last finished epoch (or at the start), is compiled again with half the
    learning rate and gradient clipping (`RETRY_CLIPNORM` unless the settings clip already),
    and trains the remaining epochs with a new warmup + cosine cycle over them.

    Args:
        model: a Keras model, compiled with `settings` or not compiled yet.
        train: the batched training dataset, one pass = `settings.steps_per_epoch` batches.
        validation: the batched validation dataset, or None.
        settings: what to train for and how (`settings_for`).
        logdir: TensorBoard's folder; None: no TensorBoard.
        backup_dir: BackupAndRestore's folder: a killed run resumes from it; None: none.
        extra_callbacks: run after the pipeline's own.

    Returns:
        A `FitResult`: the epochs' logs, and `recovery` when a retry recovered.

    Raises:
        TrainingDiverged: the retry diverged too, or its training loss ended no lower than
            that of guessing (ln classes); the message names both attempts.
    """
    if not model.compiled:
        compile_model(model, settings)
    job = _FitJob(train, validation, settings, logdir, backup_dir, extra_callbacks)
    watch, snapshot = DivergenceWatch(), _EpochSnapshot()
    history = _fit_attempt(model, job, settings, watch=watch, snapshot=snapshot)
    if watch.diverged is None:
        check_finite(history)
        return FitResult.of(history)
    return _recover(model, job, watch.diverged, snapshot)


def _recover(model: keras.Model, job: _FitJob, diverged: str, snapshot: _EpochSnapshot) -> FitResult:
    """The one retry after a divergence: from `snapshot`'s weights, with `retry_settings`."""
    settings = job.settings
    retry = retry_settings(settings, snapshot.epoch)
    tried = (f"rolled back to the weights of {_epoch_name(snapshot.epoch)} and trained epochs "
             f"{snapshot.epoch + 1}-{settings.epochs} again with the peak learning rate halved "
             f"({settings.learning_rate:g} -> {retry.learning_rate:g}) and {_clipping(retry)}")
    print(f"Training diverged: {diverged}. Recovering: {tried}.", flush=True)
    model.set_weights(snapshot.weights)
    # Keras's BackupAndRestore left the epoch it restored (if this run resumed) in the model;
    # the retry starts from the snapshot's epoch instead.
    internals.clear_initial_epoch(model)
    with model.distribute_strategy.scope():
        compile_model(model, retry)
    watch = DivergenceWatch()
    history = _fit_attempt(model, job, retry, watch=watch, snapshot=_EpochSnapshot(), initial_epoch=snapshot.epoch)
    if watch.diverged is not None:
        raise TrainingDiverged(f"{diverged}; then it {tried}, and the loss diverged again: {watch.diverged}")
    check_finite(history)
    # A retry that stays finite can still be dead (every unit off, the loss flat at chance):
    # not a recovery worth publishing.
    chance, final = _chance_loss(model), history.history["loss"][-1]
    if not final < chance:
        raise TrainingDiverged(
            f"{diverged}; then it {tried}, but the retry learned nothing: its training loss ended at {final:.3f}, no "
            f"better than the {chance:.2f} of guessing uniformly among {int(model.output_shape[-1])} classes")
    recovery = Recovery(diverged=diverged, rolled_back_to_epoch=snapshot.epoch, retry=optimizer_record(retry),
                        retry_epochs=settings.epochs - snapshot.epoch)
    print(f"Recovered: the retry trained to epoch {epochs_completed(history)} with a finite loss.", flush=True)
    return FitResult.of(history, recovery)


def retry_settings(settings: TrainSettings, from_epoch: int) -> TrainSettings:
    """The settings of the one retry after a divergence at or after epoch `from_epoch`:
    half the peak learning rate, gradient clipping on (the run's own if it clipped already),
    one warmup + cosine cycle over the epochs left, no second profile."""
    clipping = {} if settings.clipnorm or settings.clipvalue else {"clipnorm": RETRY_CLIPNORM}
    return dataclasses.replace(
        settings, learning_rate=settings.learning_rate / 2, epochs=settings.epochs - from_epoch,
        profile_batches=None, **clipping,
    )


def _fit_attempt(model: keras.Model, job: _FitJob, schedule_settings: TrainSettings, *, watch: DivergenceWatch,
                 snapshot: _EpochSnapshot, initial_epoch: int = 0) -> keras.callbacks.History:
    """One `model.fit` over epochs `initial_epoch`..`job.settings.epochs`. `schedule_settings`
    are those the model was compiled with (a retry's cover only its remaining epochs, without a
    profile): the callbacks follow them."""
    settings = job.settings
    callbacks = make_callbacks(job.logdir, job.backup_dir, schedule_settings, job.extra_callbacks,
                               report_resume=not initial_epoch)
    # First: they must see each epoch's raw weights before the averaged ones are swapped in.
    callbacks = [watch, snapshot] + callbacks
    return model.fit(
        # One endless iterator for the whole run, `steps_per_epoch` batches per epoch. With a
        # finite dataset Keras makes a new iterator every epoch, and the first step of each
        # epoch then stalls while the iterator restarts (docs/benchmarks.md).
        endless(job.train, settings),
        steps_per_epoch=settings.steps_per_epoch,
        validation_data=job.validation,
        epochs=settings.epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # the tf.data pipeline shuffles, with its own seed
        callbacks=callbacks,
        verbose=default_verbosity() if settings.verbose is None else settings.verbose,
    )


def _chance_loss(model: keras.Model) -> float:
    """The cross-entropy of guessing every class with the same probability: ln(classes)."""
    return math.log(max(2, int(model.output_shape[-1])))


def _epoch_name(epoch: int) -> str:
    return f"the end of epoch {epoch}" if epoch else "the start (no epoch had finished)"


def _clipping(settings: TrainSettings) -> str:
    if settings.clipvalue:
        return f"gradients clipped to +-{settings.clipvalue:g} (clipvalue)"
    return f"each gradient's norm clipped to {settings.clipnorm:g} (clipnorm)"


def endless(train, settings: TrainSettings):
    """The training dataset repeated without end, for a loop that runs `steps_per_epoch`
    batches per epoch; refused if one pass has another number of batches, since epochs would
    then straddle the data."""
    batches = int(train.cardinality())
    if batches >= 0 and batches != settings.steps_per_epoch:
        raise ValueError(f"The training dataset has {batches} batches but the settings say "
                         f"{settings.steps_per_epoch} steps per epoch; derive them from the same "
                         "number of examples and batch size (training.settings_for).")
    return train.repeat()


EARLY_STOPPING_STATE = "early_stopping.json"
EARLY_STOPPING_BEST = "early_stopping_best.npz"


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's EarlyStopping whose state (best value, epochs waited, best epoch and weights)
    is kept beside the BackupAndRestore backup after every epoch and read back when a run
    resumes, so a resumed run stops, and restores, at the epoch an uninterrupted one would.

    Args:
        state_dir: the backup's folder; None keeps the state in memory only (as Keras does).
        **kwargs: EarlyStopping's arguments.
    """

    def __init__(self, state_dir, **kwargs):
        super().__init__(**kwargs)
        self.state_dir = Path(state_dir) if state_dir is not None else None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        state = self.state_dir and self.state_dir / EARLY_STOPPING_STATE
        if not state or not state.exists():
            return
        saved = json.loads(state.read_text())
        self.wait, self.best, self.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
        best = self.state_dir / EARLY_STOPPING_BEST
        if best.exists():
            with np.load(best) as arrays:
                self.best_weights = [arrays[f"w{i}"] for i in range(len(arrays.files))]

    def on_epoch_end(self, epoch, logs=None):
        improved_before = self.best_epoch
        super().on_epoch_end(epoch, logs)
        if self.state_dir is None or not self.state_dir.exists():
            return
        if self.best_weights is not None and (self.best_epoch != improved_before or
                                              not (self.state_dir / EARLY_STOPPING_BEST).exists()):
            _atomic_write(self.state_dir / EARLY_STOPPING_BEST,
                          lambda f: np.savez(f, **{f"w{i}": w for i, w in enumerate(self.best_weights)}))
        state = {"epoch": epoch + 1, "wait": self.wait, "best": float(self.best), "best_epoch": self.best_epoch}
        _atomic_write(self.state_dir / EARLY_STOPPING_STATE, lambda f: f.write(json.dumps(state).encode()))


def _atomic_write(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, then rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resumed_epoch(backup_dir) -> int:
    """The epoch a run resumes from its BackupAndRestore backup (0: none), after making the
    backup agree with the early-stopping state: a kill between the two writes at an epoch's end
    leaves the backup one epoch ahead, and then the backup's previous copy (double_checkpoint)
    is put back, so the run redoes that epoch with the state it had before it."""
    backup = Path(backup_dir)
    metadata, weights = backup / "training_metadata.json", backup / "latest.weights.h5"
    if not metadata.exists():
        return 0
    epoch = json.loads(metadata.read_text())["epoch"]
    state = backup / EARLY_STOPPING_STATE
    previous = Path(f"{metadata}.bkp")
    if state.exists() and previous.exists() and Path(f"{weights}.bkp").exists():
        if json.loads(state.read_text())["epoch"] == epoch - 1 == json.loads(previous.read_text())["epoch"]:
            shutil.copyfile(f"{weights}.bkp", weights)
            shutil.copyfile(previous, metadata)
            epoch -= 1
    return epoch


class DivergenceWatch(keras.callbacks.Callback):
    """Stops training when the loss becomes NaN/inf or explodes; `diverged` then says how.

    Explodes: the running training loss of the epoch exceeds `EXPLOSION_FACTOR` times the
    loss of a uniform guess, ln(classes). Both training loops use it (`fit` and
    `multiworker.fit`, whose logs are global, so every worker stops at the same batch).
    """

    def __init__(self):
        super().__init__()
        self.diverged: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.diverged is not None:
            return
        loss = float(loss)
        classes = max(2, int(self.model.output_shape[-1]))
        limit = EXPLOSION_FACTOR * _chance_loss(self.model)
        where = f"batch {batch + 1} of epoch {self._epoch + 1}"
        if not math.isfinite(loss):
            self.diverged = f"the training loss became {loss} at {where}"
        elif loss > limit:
            self.diverged = (f"the training loss reached {loss:.4g} at {where}, more than {EXPLOSION_FACTOR:g}x "
                             f"the {math.log(classes):.2f} of guessing uniformly among {classes} classes")
        if self.diverged is not None:
            self.model.stop_training = True


class _EpochSnapshot(keras.callbacks.Callback):
    """Keeps in memory the model's weights at the start and at the end of every finished epoch
    with a finite loss: the last good state a retry rolls back to."""

    def __init__(self):
        super().__init__()
        self.weights, self.epoch, self._started = None, 0, False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:  # after every on_train_begin: a resumed run's restored weights
            self.weights, self.epoch, self._started = self.model.get_weights(), epoch, True

    def on_epoch_end(self, epoch, logs=None):
        # stop_training: set mid-epoch by DivergenceWatch or TerminateOnNaN (EarlyStopping sets
        # it later, after this callback), so this epoch's weights are not a good state.
        if not self.model.stop_training and math.isfinite(float((logs or {}).get("loss", math.nan))):
            self.weights, self.epoch = self.model.get_weights(), epoch + 1


def resume_message(initial_epoch: int, epochs: int, source) -> str:
    """The line a resumed run prints, whichever strategy trains it."""
    return (
        f"Resuming training from epoch {initial_epoch + 1}/{epochs}: {initial_epoch} finished "
        f"epoch{'s' if initial_epoch != 1 else ''} restored from {source}."
    )


class _ResumeReport(keras.callbacks.Callback):
    """Says from which epoch a run resumed (BackupAndRestore does it silently).

    Placed after BackupAndRestore, which has restored the state by the first epoch's start.
    """

    def __init__(self, backup_dir, epochs: int):
        super().__init__()
        self.backup_dir, self.epochs, self.reported = backup_dir, epochs, False

    def on_epoch_begin(self, epoch, logs=None):
        if not self.reported and epoch > 0:
            print(resume_message(epoch, self.epochs, self.backup_dir), flush=True)
        self.reported = True
