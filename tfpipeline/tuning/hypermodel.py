"""The search's HyperModel: builds each trial's model through the family registry, compiles it
with the training stage's code, and fits it with a TensorBoard run and HParams session of its
own. Also the trials' data and what a trial reports to the oracle.

Naming: `kt_hp` is KerasTuner's `HyperParameters` (the space and one trial's values);
`hparams` is a family's `Hyperparams` dataclass built from it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp_api

from tfpipeline import data as data_lib
from tfpipeline import models, training
from tfpipeline.config import PipelineConfig
from tfpipeline.report import tensorboard as tensorboard_logs
from tfpipeline.tuning.oracles import FAMILY, OBJECTIVE


def encode(value: Any) -> bool | int | float | str:
    """A hyperparameter value as KerasTuner stores it (scalars; tuples as "32,64")."""
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else value


class TrialData:
    """Batched trial pipelines, one pair per batch size (families differ), built once: the
    decoded examples stay cached across trials instead of being re-read for each.

    Args:
        train, validation: the unbatched examples trials train and score on.
        seed: the shuffle's seed.
        batched: `data.Datasets.batched` of the datasets these come from (the cache plan's
            choice of memory cache and shuffle buffer); None: `data.batched`'s defaults.
    """

    def __init__(self, train: tf.data.Dataset, validation: tf.data.Dataset, seed: int, batched=None):
        self.train, self.validation, self.seed = train, validation, seed
        self.batched = batched or data_lib.batched
        self._pipelines: dict[int, tuple[tf.data.Dataset, tf.data.Dataset]] = {}

    def trial_train(self, batch_size: int, *, first_epoch: int, end_epoch: int,
                    per_batch) -> tuple[tf.data.Dataset, int]:
        """A trial's own training stream for epochs `first_epoch`..`end_epoch`, each epoch's order
        and shifts fixed by the seed and the epoch (`data.make_pipeline`), whatever trials ran
        before it; and its steps per epoch."""
        steps = -(-int(self.train.cardinality()) // batch_size)
        return self.batched(self.train, batch_size=batch_size, seed=self.seed, training=True,
                            first_epoch=first_epoch, end_epoch=end_epoch, per_batch=per_batch), steps

    def pipelines(self, batch_size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        if batch_size not in self._pipelines:
            self._pipelines[batch_size] = (
                self.batched(self.train, batch_size=batch_size, seed=self.seed, training=True),
                self.batched(self.validation, batch_size=batch_size, seed=self.seed, training=False),
            )
        return self._pipelines[batch_size]


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What every trial of one search shares."""

    config: PipelineConfig
    families: tuple[str, ...]
    fixed: dict[str, Any]  # the user's pinned hyperparameters (`config.pinned()`)
    spec: data_lib.DatasetSpec
    data: TrialData
    num_search: int  # the training examples a trial trains on
    max_epochs: int
    logdir: Path  # the run's TensorBoard folder; trials log under `logdir / "trials"`
    run_id: str
    verbose: int


class PipelineHyperModel(kt.HyperModel):
    """Builds a trial's model through the registry, compiles it with our training code, and
    fits it with a TensorBoard run and HParams session of its own."""

    def __init__(self, setup: TrialSetup):
        super().__init__(name="tfpipeline")
        self.setup = setup
        # Validated overrides (--hparam, --learning-rate, --batch-size), with their types fixed.
        kind = setup.config.kind
        self.fixed = {name: {k: getattr(models.hyperparams(name, setup.fixed, kind=kind), k) for k in setup.fixed}
                      for name in setup.families}
        self.trial_id = "unknown"  # set by the tuner before each trial

    @property
    def families(self) -> tuple[str, ...]:
        return self.setup.families

    def family_hyperparams(self, kt_hp: kt.HyperParameters):
        """(family, its Hyperparams) for these hyperparameter values; declares the space."""
        families, spec = self.setup.families, self.setup.spec
        if len(families) == 1:
            family = families[0]
            # Fixed first: the family's own declaration of the same name then returns it, so
            # the oracle does not spend trials varying what the user pinned.
            for name, value in self.fixed[family].items():
                kt_hp.Fixed(name, encode(value))
            chosen = models.search_space(family, kt_hp, spec)
        else:
            family = kt_hp.Choice(FAMILY, list(families), default=families[0])
            chosen = None
            for name in families:
                # Name scopes keep each family's names apart ("cnn/dropout", "mlp/dropout").
                with kt_hp.conditional_scope(FAMILY, [name]), kt_hp.name_scope(name):
                    declared = models.search_space(name, kt_hp, spec)
                if name == family:
                    chosen = declared
        return family, dataclasses.replace(chosen, **self.fixed[family])

    @staticmethod
    def trial_epochs(kt_hp: kt.HyperParameters, max_epochs: int) -> tuple[int, int]:
        """(epochs to reach, epoch to start from): Hyperband sets both per round."""
        return kt_hp.values.get("tuner/epochs", max_epochs), kt_hp.values.get("tuner/initial_epoch", 0)

    def trial_settings(self, kt_hp: kt.HyperParameters, hparams) -> training.TrainSettings:
        """One warmup + cosine cycle over the epochs this trial trains: a Hyperband round that
        continues a trial from its checkpoint starts a new cycle (a warm restart)."""
        epochs, initial = self.trial_epochs(kt_hp, self.setup.max_epochs)
        return training.settings_for(dataclasses.replace(hparams, epochs=max(1, epochs - initial)),
                                     self.setup.num_search, early_stopping_patience=0, histogram_freq=0,
                                     **training.optimizer_options(self.setup.config))

    def build(self, kt_hp):
        family, hparams = self.family_hyperparams(kt_hp)
        # Same seed for every trial (KerasTuner has just cleared the session): a trial's weights come
        # from the seed, its data order and shifts from (seed, epoch) (`TrialData.trial_train`), so
        # its score does not depend on the trials before it, and a trial run again after a kill
        # starts from the same weights.
        keras.utils.set_random_seed(self.setup.config.seed)
        try:
            spec = self.setup.spec
            model = models.build(family, spec.input_shape, spec.num_classes, hparams, input=spec.input)
        except ValueError as exc:  # e.g. a patch size that does not divide the image
            raise kt.errors.FailedTrialError(f"{family}: {exc}") from exc
        return training.compile_model(model, self.trial_settings(kt_hp, hparams))

    def fit(self, kt_hp, model, *args, callbacks=None, epochs=1, initial_epoch=0, **kwargs):
        setup = self.setup
        family, hparams = self.family_hyperparams(kt_hp)
        _, validation = setup.data.pipelines(hparams.batch_size)
        augmentation = models.augmentation(family, hparams, setup.config.seed, kind=setup.config.kind)
        train, steps = setup.data.trial_train(hparams.batch_size, first_epoch=initial_epoch, end_epoch=epochs,
                                              per_batch=augmentation.per_batch(setup.config.seed))
        logdir = setup.logdir / "trials" / self.trial_id
        # The row the HParams dashboard shows: the same names as a run's row
        # (tensorboard_logs.run_hparams), plus the trial id; trial_id groups one session per trial.
        row = tensorboard_logs.run_hparams(dataclasses.replace(setup.config, model=family),
                                           dataclasses.replace(hparams, epochs=epochs), model.count_params())
        row["trial"] = self.trial_id
        writer = tf.summary.create_file_writer(str(logdir))  # ours to close: the callback only drops it
        session = f"{setup.config.dataset}/{setup.run_id}/trials/{self.trial_id}"
        # A run's callbacks: a frozen start as the final training has, then the weight average,
        # so KerasTuner's best-epoch checkpoint and early stopping (in `callbacks`) see averaged weights.
        callbacks = training.make_callbacks(
            logdir, None, self.trial_settings(kt_hp, hparams), write_graph=False,
            extra=[*(callbacks or []), hp_api.KerasCallback(writer, row, trial_id=session)])
        try:
            history = model.fit(train, steps_per_epoch=steps, validation_data=validation, epochs=epochs,
                                initial_epoch=initial_epoch, callbacks=callbacks, shuffle=False, verbose=setup.verbose)
        finally:
            writer.close()
        return trial_metrics(history)


def trial_metrics(history: keras.callbacks.History) -> dict[str, float]:
    """What the oracle records for a trial: its best epoch's metrics, and when that was.

    Raises:
        keras_tuner.errors.FailedTrialError: the loss became NaN or infinite, or an epoch has
            no score.
    """
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
