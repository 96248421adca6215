"""Every private Keras / KerasTuner / TensorFlow detail the library relies on, in one list.

None of these is public API, so an upgrade may rename or remove one without notice; each has
a test in tests/test_internals.py that builds the real object and fails, naming the entry
here, if it is gone or behaves differently. When a test fails, the entry says what the library
uses it for, so the fix (a new name, or another way to get the same effect) can be found.

- `keras.Model._initial_epoch`: `BackupAndRestore` leaves the epoch it restored there, and
  `Model.fit` starts from it instead of its `initial_epoch` argument. `training.fit`'s retry
  after a divergence clears it (`clear_initial_epoch`) to start from its own epoch.
- `keras.optimizers.Optimizer._iterations`: the step counter's variable, absent until the
  optimizer's `__init__` creates it; `training.optimizers` reads `iterations` only once it
  exists (its weight-average warm-up is a function of the step).
- `keras.optimizers.Optimizer.ema_momentum`: read when the weight-average update is traced,
  so a property there (`training.optimizers`) changes the momentum per step.
- `keras.Model.train_function` / `make_train_function(force=True)`: `training.freezing`
  swaps compiled step functions when layers are frozen or thawed.
- `keras_tuner.Oracle._get_oracle_fname`, `_get_trial_dir`, `_save_trial`, and
  `keras_tuner.Tuner._get_tuner_fname`, `_is_worker`: where KerasTuner keeps a search's state
  files; `tuning.oracles` and `tuning.tuners` write the same files atomically.
- `keras_tuner.Hyperband.__init__` makes its own oracle; `tuning.tuners.PipelineHyperband`
  calls `keras_tuner.Tuner.__init__` instead, to use ours, so Hyperband's `__init__` must set
  nothing beyond what `Tuner.__init__` sets.
- `keras.Model._maybe_symbolic_build` / `_symbolic_build` (Keras's TF trainer): under a
  `tf.distribute` strategy `fit` builds the model from a first batch that it averages across
  the replicas, which fails on string inputs (text, a table's categories: no AddN for strings).
  `build_from_one_replica` replaces it on such a model with a build from the first replica's
  batch (only its shapes and dtypes are read).
- `tf.profiler.experimental.Trace(..., _r=1)`: the step marker the profiler's overview page
  counts (`report.tensorboard`).
"""

from __future__ import annotations

import keras

INITIAL_EPOCH = "_initial_epoch"
OPTIMIZER_ITERATIONS = "_iterations"
SYMBOLIC_BUILD, BUILD = "_maybe_symbolic_build", "_symbolic_build"


def clear_initial_epoch(model: keras.Model) -> None:
    """Forget the epoch `BackupAndRestore` restored, so `fit(initial_epoch=...)` decides."""
    setattr(model, INITIAL_EPOCH, None)


def has_step_counter(optimizer) -> bool:
    """Whether the optimizer's step counter (`iterations`) exists yet."""
    return hasattr(optimizer, OPTIMIZER_ITERATIONS)


def build_from_one_replica(model: keras.Model) -> None:
    """Let `model.fit` under a strategy build `model` from the first replica's batch instead of
    the batch averaged across replicas (which string inputs cannot be)."""
    strategy = model.distribute_strategy

    def build(iterator=None, data_batch=None):
        if data_batch is None and iterator is not None:
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(
                    lambda value: strategy.experimental_local_results(value)[0], next(batches))
                break
        with strategy.scope():
            getattr(model, BUILD)(data_batch=data_batch)

    getattr(model, SYMBOLIC_BUILD)  # fails here, by name, if Keras renames it
    setattr(model, SYMBOLIC_BUILD, build)

