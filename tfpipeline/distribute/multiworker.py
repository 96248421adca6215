"""Training under MultiWorkerMirroredStrategy without `model.fit`: a contained workaround.

Keras 3's `model.fit` is broken under `tf.distribute.MultiWorkerMirroredStrategy`:
https://github.com/keras-team/keras/issues/20585 (open for Keras 3.15). With two workers it
fails in `_maybe_symbolic_build` (a `strategy.reduce` over the data batch) and, past that,
in the reduction of the metric logs across replicas. The per-step work itself is fine, so
this module replaces only fit's driver loop and keeps everything else Keras's own:

* the same compiled model: `model.train_step` / `model.test_step` run under `strategy.run`
  on batches from `strategy.experimental_distribute_dataset`, so the loss (each replica's
  mean divided by the number of replicas, i.e. scaled to the global batch), the optimizer
  with its warmup + cosine schedule, the gradient all-reduce and the metrics are exactly
  what `fit` uses; several steps per compiled call, as `fit` with `steps_per_execution`;
* the same callbacks (`training.make_callbacks`: TensorBoard with the learning rate in
  `<logdir>/train` and `<logdir>/validation`, EarlyStopping on val_loss,
  TerminateOnNaN, Keras's progress bar), driven through a `keras.callbacks.CallbackList`
  with the calls `fit` makes;
* resume: BackupAndRestore knows nothing about workers, so a `tf.train.CheckpointManager`
  saves model, optimizer (hence the schedule's step) and the finished-epoch count after
  every epoch, early stopping keeps its state beside it, and a re-run continues from there
  with the data stream of the epoch it restores (`fit`'s `train`).

When the issue is fixed, delete this module and its one call in `pipeline.run`;
`training.fit` then serves every strategy. (Keep `Distribution.writable`: the chief-only
writing rule is TensorFlow's, not a Keras bug.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from tfpipeline import training
from tfpipeline.errors import TrainingDiverged

# Training steps per compiled call unless the settings name a number. Each call of a
# multi-worker function costs Python time (flattening the distributed iterator and the
# per-replica values) plus an all-reduce of the logs; several steps per call spread that
# over more work (docs/benchmarks.md, the distribution rounds). Callbacks see every 10th
# batch, as `fit` shows them with steps_per_execution.
STEPS_PER_CALL = 10


def fit(
    model: keras.Model,
    train: tf.data.Dataset,
    validation: tf.data.Dataset | None,
    settings: training.TrainSettings,
    *,
    logdir: str | Path | None = None,
    backup_dir: str | Path | None = None,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> training.FitResult:
    """`training.fit` for a model created under a MultiWorkerMirroredStrategy scope.

    Every worker calls this with its own `logdir` and `backup_dir` (the real ones on the
    chief, temporary ones elsewhere: see `Distribution.writable`) and the same global-batch
    datasets; each worker reads only its shard of every batch (auto-shard policy DATA).

    `train` is the training dataset, or a function of the epoch training starts from (0, or
    the epoch a resumed run restores, known on every worker only once the chief's checkpoint
    is shared) that gives it: a per-epoch stream (`data.make_pipeline` with `first_epoch`),
    so a resumed run reads the batches, and shifts, an uninterrupted one would. That function
    may instead give an input function of a `tf.distribute.InputContext`: the worker's own
    endless, per-replica-batched input (`sharding.training_input`, a folder's files shared
    among the workers).
    """
    strategy = model.distribute_strategy
    with strategy.scope():
        if not model.compiled:
            training.compile_model(model, settings)
        # Create the optimizer's variables now so a checkpoint restores into them at once.
        model.optimizer.build(model.trainable_variables)
        epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")

    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epochs_done=epochs_done)
    manager = None
    if backup_dir is not None:
        # Two kept: the previous one is restored when a kill left the early-stopping state behind.
        manager = tf.train.CheckpointManager(checkpoint, str(backup_dir), max_to_keep=2)
        _restore(checkpoint, manager, backup_dir, stopping=settings.early_stopping_patience > 0)
    # Only the chief's checkpoint is real (the others wrote theirs to temporary folders that
    # are gone), so every worker takes the state of the first replica, which is on the chief.
    # This also means resuming needs no storage shared between the machines.
    _sync(strategy, model.variables + model.optimizer.variables + [epochs_done], average=False)
    initial_epoch = int(epochs_done.numpy())
    if initial_epoch:
        source = backup_dir if manager is not None and manager.latest_checkpoint else "the chief's checkpoint"
        print(training.resume_message(initial_epoch, settings.epochs, source), flush=True)

    verbose = training.default_verbosity() if settings.verbose is None else settings.verbose
    # The logs it sees are global, so every worker stops at the same batch.
    watch = training.DivergenceWatch()
    callbacks = keras.callbacks.CallbackList(
        # No BackupAndRestore: the checkpoint manager above does its job here.
        # Early stopping keeps its state beside the checkpoint (the chief's is the real one).
        [watch] + training.make_callbacks(logdir, None, settings, extra_callbacks, state_dir=backup_dir),
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=settings.epochs,
        steps=settings.steps_per_epoch,
        model=model,
    )
    steps_per_call = settings.steps_per_execution or STEPS_PER_CALL
    train_steps, test_step = _step_functions(model, strategy)
    trainable = len(model.trainable_variables)
    fetch = tf.function(lambda iterator: iterator.get_next())
    # An endless training dataset and a fixed number of steps per epoch, as `training.fit`
    # does: tf.distribute then skips, for an infinite dataset, the collective in which the
    # workers agree before every batch whether any of them has data left.
    if not isinstance(train, tf.data.Dataset):
        train = train(initial_epoch)
    if isinstance(train, tf.data.Dataset):
        train_batches = iter(strategy.experimental_distribute_dataset(training.endless(train, settings)))
    else:  # each worker's own share (tfpipeline.distribute.sharding), already endless
        train_batches = iter(strategy.distribute_datasets_from_function(train))
    dist_validation = strategy.experimental_distribute_dataset(validation) if validation is not None else None
    # Weights and statistics that training does not keep in step across replicas: Keras 3's
    # BatchNormalization updates its moving mean/variance from each replica's own batch.
    replica_local = [v for v in model.non_trainable_variables if tf.as_dtype(v.dtype).is_floating]

    model.stop_training = False
    callbacks.on_train_begin()  # early stopping reads its state back (on the chief)
    _share_early_stopping(strategy, callbacks, model)
    logs, epoch_logs = {}, None
    for epoch in range(initial_epoch, settings.epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        if len(model.trainable_variables) != trainable:  # layers frozen or thawed (freezing.FrozenStart)
            trainable = len(model.trainable_variables)
            train_steps, test_step = _step_functions(model, strategy)
        for begin in range(0, settings.steps_per_epoch, steps_per_call):
            end = min(begin + steps_per_call, settings.steps_per_epoch) - 1  # as `fit` reports them
            callbacks.on_train_batch_begin(begin)
            # The number of steps is a tensor: the epoch's last, shorter call is not a new trace.
            logs = train_steps(train_batches, tf.constant(end - begin + 1))
            callbacks.on_train_batch_end(end, logs)
            # The logs are global, so every worker stops at the same step: a worker that
            # stopped alone would leave the others waiting in the next all-reduce.
            if model.stop_training:
                break
        epoch_logs = {name: float(value) for name, value in logs.items()}
        if replica_local:
            _sync(strategy, replica_local, average=True)
        if dist_validation is not None:
            val_logs = _evaluate(model, test_step, _batches(dist_validation, fetch), callbacks)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        if manager is not None and watch.diverged is None:  # never checkpoint a diverged epoch
            # Every worker saves (saving may need collectives); only the chief's is kept.
            # The manager writes the checkpoint, then records it atomically, so a kill at
            # any moment leaves the previous epoch's checkpoint as the latest. Saved before
            # the epoch-end callbacks, as BackupAndRestore does in `fit`: after them the
            # model holds the averaged weights (training.weight_averaging_callbacks).
            epochs_done.assign(epoch + 1)
            manager.save(checkpoint_number=epoch + 1)
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs=epoch_logs)
    if watch.diverged is not None:
        # No roll back and retry here, unlike `training.fit`: every worker would have to
        # rebuild its optimizer and restart its loop in step, for a workaround module that is
        # to be deleted (see above). Say what to run instead.
        clipping = "" if settings.clipnorm or settings.clipvalue else f" and --clipnorm {training.RETRY_CLIPNORM:g}"
        raise TrainingDiverged(
            f"{watch.diverged}. Multi-worker training does not roll back and retry as training on one "
            f"machine does; run again with half the --learning-rate{clipping}, the retry that would make"
        )
    training.check_finite(model.history)
    if backup_dir is not None:
        # Like BackupAndRestore: only an interrupted run leaves a backup behind.
        shutil.rmtree(backup_dir, ignore_errors=True)
    return training.FitResult.of(model.history)


def _restore(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager, backup_dir, *,
             stopping: bool) -> None:
    """Restore the latest checkpoint that the early-stopping state agrees with, if any.

    An epoch's checkpoint is written before the epoch-end callbacks, early stopping's state
    (`training.ResumableEarlyStopping`) after them: a kill in between leaves the checkpoint one
    epoch ahead. The previous checkpoint is then restored (or none, for the first epoch), and
    the run redoes that epoch with the state it had before it, as `training.resumed_epoch`
    does for `fit`.
    """
    path = manager.latest_checkpoint
    state = Path(backup_dir) / training.EARLY_STOPPING_STATE
    if path and stopping:
        done = json.loads(state.read_text())["epoch"] if state.exists() else 0
        path = next((p for p in manager.checkpoints if p.rsplit("-", 1)[-1] == str(done)), None)
    if path:
        checkpoint.restore(path).assert_existing_objects_matched()


def _share_early_stopping(strategy: tf.distribute.Strategy, callbacks: keras.callbacks.CallbackList,
                          model: keras.Model) -> None:
    """Give every worker the chief's early-stopping state (best value, epochs waited, best epoch
    and weights), which the chief read back from its checkpoint folder: every worker then
    stops, and restores, at the epoch an uninterrupted run would, all at the same one."""
    stopping = next((c for c in callbacks.callbacks if isinstance(c, keras.callbacks.EarlyStopping)), None)
    if stopping is None:
        return
    best, best_weights = stopping.best, stopping.best_weights  # None before a first epoch ends
    with strategy.scope():
        counts = tf.Variable([stopping.wait, stopping.best_epoch, best is not None, best_weights is not None],
                             dtype=tf.int64)
        value = tf.Variable(0.0 if best is None else best, dtype=tf.float32)  # the logs' own precision: exact
        weights = [tf.Variable(w) for w in (model.get_weights() if best_weights is None else best_weights)]
    _sync(strategy, [counts, value, *weights], average=False)
    wait, best_epoch, has_best, has_weights = (int(v) for v in counts.numpy())
    stopping.wait, stopping.best_epoch = wait, best_epoch
    stopping.best = float(value.numpy()) if has_best else None
    stopping.best_weights = [w.numpy() for w in weights] if has_weights else None


def _step_functions(model: keras.Model, strategy: tf.distribute.Strategy):
    """Two compiled functions that return global logs: `train_steps(iterator, steps)` runs that
    many training steps on the iterator's next batches; `test_step(batch)` evaluates one."""

    def global_logs(per_replica):
        return {name: strategy.experimental_local_results(value)[0] for name, value in per_replica.items()}

    @tf.function
    def train_steps(iterator, steps):
        # The batches are taken inside the compiled loop, as `fit` does: one call per
        # `steps` batches instead of two per batch.
        for _ in tf.range(steps):
            strategy.run(model.train_step, args=(next(iterator),))
        return global_logs(strategy.run(lambda: _global_metrics(model)))

    @tf.function(reduce_retracing=True)
    def test_step(batch):
        def replica_fn(data):
            model.test_step(data)
            return _global_metrics(model)

        return global_logs(strategy.run(replica_fn, args=(batch,)))

    return train_steps, test_step


def _global_metrics(model: keras.Model) -> dict:
    """In replica context: the model's metric results over every replica of every worker.

    Every worker gets the same logs, so all take the same decisions (TerminateOnNaN,
    EarlyStopping): one that stopped alone would leave the others waiting in the next
    all-reduce. `model.get_metrics_result()` in cross-replica context would give the same
    numbers with one all-reduce per metric variable; here it is one for all of them (Keras
    metric variables are sums: totals and counts), then each metric's own `result` formula.
    """
    context = tf.distribute.get_replica_context()
    # identity: a read of a sync-on-read variable carries no device, which all_reduce needs.
    local = [tf.identity(v) for metric in model.metrics for v in metric.variables]
    summed = _all_reduce_by_dtype(context, tf.distribute.ReduceOp.SUM, local)
    logs, start = {}, 0
    for metric in model.metrics:
        count = len(metric.variables)
        result = metric.stateless_result(summed[start : start + count])
        start += count
        if isinstance(result, dict):
            logs.update(result)
        else:
            logs[metric.name] = result
    return logs


def _batches(dataset, fetch):
    """A distributed dataset's batches, each taken by one call of the compiled `fetch`.

    Iterating the distributed dataset in Python (`for batch in dataset`) runs its `next`
    eagerly, op by op: with several workers that includes a collective in which the workers
    agree whether any of them has data left (for a last partial batch), several times slower
    than inside a tf.function (docs/benchmarks.md). Keras's `fit` takes its batches inside its
    compiled step the same way. At the end every worker gets the same OutOfRangeError, at the same batch.
    """
    iterator = iter(dataset)
    while True:
        try:
            yield fetch(iterator)
        except tf.errors.OutOfRangeError:
            return


def _evaluate(model, test_step, batches, callbacks) -> dict[str, float]:
    """The validation pass `fit` makes at the end of each epoch, distributed the same way."""
    model.reset_metrics()
    callbacks.on_test_begin()
    logs = {}
    for step, batch in enumerate(batches):
        callbacks.on_test_batch_begin(step)
        logs = test_step(batch)
        callbacks.on_test_batch_end(step, logs)
    logs = {name: float(value) for name, value in logs.items()}
    callbacks.on_test_end(logs)
    return logs


def _sync(strategy: tf.distribute.Strategy, variables: list, *, average: bool) -> None:
    """Make every replica's copy of `variables` equal, on every worker.

    `average=False` copies the first replica's values (it lives on the chief);
    `average=True` replaces each by its mean over all replicas (floating-point only).
    """
    op = tf.distribute.ReduceOp.MEAN if average else tf.distribute.ReduceOp.SUM

    def replica_values():
        context = tf.distribute.get_replica_context()
        values = [tf.identity(v) for v in variables]  # the local replica's copy
        if not average:  # a broadcast, as a sum where every replica but the first adds zeros
            first = tf.equal(context.replica_id_in_sync_group, 0)
            values = [tf.where(first, value, tf.zeros_like(value)) for value in values]
        return _all_reduce_by_dtype(context, op, values)

    results = tf.function(lambda: strategy.run(replica_values))()
    for variable, value in zip(variables, results):
        variable.assign(strategy.experimental_local_results(value)[0])


def _all_reduce_by_dtype(context, op, values: list) -> list:
    """`context.all_reduce` of a list of mixed dtypes: it packs a list into one collective,
    which must have one dtype, so one collective per dtype."""
    by_dtype: dict = {}
    for i, value in enumerate(values):
        by_dtype.setdefault(value.dtype, []).append(i)
    reduced = [None] * len(values)
    for indices in by_dtype.values():
        for i, value in zip(indices, context.all_reduce(op, [values[i] for i in indices])):
            reduced[i] = value
    return reduced
