"""Compile and fit a model on the tf.data pipelines, with the callbacks a real run needs.

Keras does the work: `compile` + `fit`, a warmup + cosine learning-rate schedule stepped per
batch, TensorBoard, EarlyStopping on validation loss, TerminateOnNaN, and
BackupAndRestore so a killed run picks up from its last finished epoch when re-run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import keras


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the model must not be exported."""


@dataclasses.dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float  # peak learning rate, reached after the warmup
    steps_per_epoch: int
    warmup_fraction: float = 0.1  # of all steps, at most one epoch's worth
    weight_decay: float = 0.0
    # Weight averaging (Polyak): the optimizer keeps an exponential moving average of the
    # weights, which validation, the epoch-end callbacks and the export use. Averaging over the
    # last ~1/(1-m) steps smooths out the noise of a high learning rate, so the model is good
    # earlier in training. 0 disables it.
    ema_momentum: float = 0.0
    early_stopping_patience: int = 4
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
    for name in ("warmup_fraction", "ema_momentum"):  # a family may set its own
        if hasattr(hp, name):
            values[name] = getattr(hp, name)
    return TrainSettings(**(values | overrides))


def learning_rate_schedule(settings: TrainSettings) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup to the peak rate, then cosine decay to zero at the last step.

    Warmup lets a high peak rate (fast progress) start without wrecking the random initial
    weights; decaying to zero settles the weights for the last epochs.
    """
    total = max(1, settings.epochs * settings.steps_per_epoch)
    warmup = min(settings.steps_per_epoch, int(total * settings.warmup_fraction))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=settings.learning_rate / 100 if warmup else settings.learning_rate,
        decay_steps=max(1, total - warmup),
        warmup_target=settings.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.0,
    )


def compile_model(model: keras.Model, settings: TrainSettings) -> keras.Model:
    schedule = learning_rate_schedule(settings)
    momentum = averaging_momentum(settings)
    averaging = dict(use_ema=True, ema_momentum=momentum) if momentum else {}
    if settings.weight_decay:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=settings.weight_decay, **averaging)
    else:
        optimizer = keras.optimizers.Adam(schedule, **averaging)
    model.compile(
        optimizer=optimizer,
        # Models output logits: softmax happens in the loss here and in the export's signature.
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=settings.steps_per_execution or 1,
        jit_compile=settings.jit_compile,
    )
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
) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    if backup_dir is not None:
        # Saves model, optimizer (and so the schedule's step) and epoch after every epoch;
        # deleted when training finishes, so only an interrupted run leaves it behind.
        # double_checkpoint: a kill in the middle of writing the weights leaves the previous
        # epoch's copy, which the restore falls back to, instead of an unreadable backup.
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True))
        callbacks.append(_ResumeReport(backup_dir, settings.epochs))
    # After the backup (which must save the raw weights and their average as they are), before
    # everything that judges or keeps the model at an epoch's end.
    callbacks += weight_averaging_callbacks(averaging_momentum(settings) > 0)
    if settings.early_stopping_patience:
        callbacks.append(
            # On the validation loss, not accuracy: 6,000 validation images move the accuracy
            # in steps of 0.017 points, so late epochs of the cosine decay (usually the best)
            # tie or dip by one image, and patience ran out and restored an earlier epoch.
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                mode="min",
                patience=settings.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    if logdir is not None:
        # Also logs the learning rate (Keras adds it to the train scalars).
        callbacks.append(
            keras.callbacks.TensorBoard(
                str(logdir),
                histogram_freq=settings.histogram_freq,
                # The trace goes to <logdir>/train/plugins/profile/, where the profile tab finds it.
                profile_batch=settings.profile_batches or 0,
            )
        )
    return callbacks + list(extra or [])


def epochs_completed(history: keras.callbacks.History) -> int:
    """Epochs done in total, counting those a resumed run restored from its backup."""
    return history.epoch[-1] + 1 if history.epoch else 0


def check_finite(history: keras.callbacks.History) -> None:
    for epoch, loss in zip(history.epoch, history.history.get("loss", [])):
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss} in epoch {epoch + 1}")


def fit(
    model: keras.Model,
    train,
    validation,
    settings: TrainSettings,
    *,
    logdir: str | Path | None = None,
    backup_dir: str | Path | None = None,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> keras.callbacks.History:
    """Compile (if needed) and train; raise `TrainingDiverged` on a NaN/inf loss."""
    if not model.compiled:
        compile_model(model, settings)
    nan_watch = _NaNWatch()
    history = model.fit(
        # One endless iterator for the whole run, `steps_per_epoch` batches per epoch. With a
        # finite dataset Keras makes a new iterator every epoch, and the first step of an epoch
        # then stalled for 1-6 s here, CPU idle (mirrored over 2 CPU devices in most epochs,
        # one device in some): up to a whole extra epoch's time in a 12-epoch run.
        endless(train, settings),
        steps_per_epoch=settings.steps_per_epoch,
        validation_data=validation,
        epochs=settings.epochs,
        shuffle=False,  # the tf.data pipeline shuffles, with its own seed
        callbacks=[nan_watch] + make_callbacks(logdir, backup_dir, settings, extra_callbacks),
        verbose=default_verbosity() if settings.verbose is None else settings.verbose,
    )
    if nan_watch.bad_batch is not None:
        raise TrainingDiverged(f"the training loss became NaN or infinite at batch {nan_watch.bad_batch}")
    check_finite(history)
    return history


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


class _NaNWatch(keras.callbacks.Callback):
    """Remembers whether a batch loss went non-finite (TerminateOnNaN only stops training)."""

    def __init__(self):
        super().__init__()
        self.bad_batch = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.bad_batch is None:
            self.bad_batch = batch


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
