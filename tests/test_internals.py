"""The private Keras / KerasTuner / TensorFlow details listed in tfpipeline/training/internals.py,
each checked on real objects: if an upgrade removes or changes one, its test fails here, naming
it, instead of a run failing (or silently misbehaving) somewhere later."""

from __future__ import annotations

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from tfpipeline.training import internals, optimizers
from tfpipeline.tuning.oracles import RandomSearchOracle
from tfpipeline.tuning.tuners import PipelineHyperband, PipelineTuner


def _tiny_model() -> keras.Model:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype("float32"), rng.integers(0, 2, 16)


def test_model_initial_epoch_overrides_fit_and_clearing_it_restores_the_argument():
    model = _tiny_model()
    assert hasattr(model, internals.INITIAL_EPOCH), "keras.Model._initial_epoch is gone (training.fit's retry)"
    x, y = _data()
    setattr(model, internals.INITIAL_EPOCH, 2)  # as BackupAndRestore leaves it after a restore
    assert model.fit(x, y, epochs=3, verbose=0).epoch == [2], "Model.fit no longer starts from _initial_epoch"
    internals.clear_initial_epoch(model)
    assert model.fit(x, y, epochs=3, initial_epoch=1, verbose=0).epoch == [1, 2]


def test_backup_and_restore_sets_the_initial_epoch(tmp_path):
    x, y = _data()

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    backup = keras.callbacks.BackupAndRestore(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        _tiny_model().fit(x, y, epochs=4, verbose=0, callbacks=[backup, Stop()])
    model = _tiny_model()
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path))])
    assert history.epoch[0] == 2 and getattr(model, internals.INITIAL_EPOCH) == 2


def test_optimizer_step_counter_and_the_averaging_momentum_property():
    optimizer = optimizers.Adam(1e-3, use_ema=True, ema_momentum=0.99)
    assert internals.has_step_counter(optimizer), "Optimizer._iterations is gone (training.optimizers)"
    assert optimizer.iterations is getattr(optimizer, internals.OPTIMIZER_ITERATIONS)
    # Keras's __init__ assigns ema_momentum (our setter keeps the target), and reads it back per step.
    assert optimizer._target_ema_momentum == 0.99
    assert float(optimizer.ema_momentum) == pytest.approx(0.1)  # step 0: (1 + 0) / (10 + 0)
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer.build([variable])
    optimizer.apply_gradients([(tf.ones(2), variable)])
    assert float(optimizer.ema_momentum) == pytest.approx(2 / 11)


def test_model_train_function_can_be_swapped_and_rebuilt():
    model = _tiny_model()
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0)
    first = model.train_function
    assert first is not None, "Model.train_function is gone (training.freezing)"
    model.make_train_function(force=True)
    assert model.train_function is not first
    model.train_function = first
    model.fit(x, y, epochs=1, verbose=0)


class _HyperModel(kt.HyperModel):
    def build(self, kt_hp):
        kt_hp.Float("rate", 1e-3, 1e-1)
        return _tiny_model()


def test_oracle_and_tuner_state_file_helpers(tmp_path):
    oracle = RandomSearchOracle(objective=kt.Objective("loss", "min"), max_trials=1, seed=0)
    tuner = PipelineTuner(oracle=oracle, hypermodel=_HyperModel(), directory=str(tmp_path), project_name="search")
    assert oracle._get_oracle_fname() == str(tmp_path / "search" / "oracle.json")
    assert tuner._get_tuner_fname().startswith(str(tmp_path / "search"))
    assert tuner._is_worker() is False
    tuner.save()  # ours: written atomically where KerasTuner reads them back
    assert (tmp_path / "search" / "oracle.json").exists() and tuner._get_tuner_fname()
    trial = oracle.create_trial("tuner0")
    assert oracle._get_trial_dir(trial.trial_id) == str(tmp_path / "search" / f"trial_{trial.trial_id}")
    assert "_save_trial" in vars(kt.Oracle), "Oracle._save_trial is gone (tuning.oracles saves trials atomically)"
    oracle.update_trial(trial.trial_id, {"loss": 1.0})
    oracle.end_trial(trial)
    assert (tmp_path / "search" / f"trial_{trial.trial_id}" / "trial.json").exists()


def test_hyperband_init_sets_nothing_beyond_the_tuner_init(tmp_path):
    theirs = kt.Hyperband(_HyperModel(), objective="loss", max_epochs=2, directory=str(tmp_path / "a"))
    oracle = kt.oracles.HyperbandOracle(objective=kt.Objective("loss", "min"), max_epochs=2)
    ours = PipelineHyperband(oracle, hypermodel=_HyperModel(), directory=str(tmp_path / "b"))
    assert ours.oracle is oracle
    assert set(vars(theirs)) == set(vars(ours)), "kt.Hyperband.__init__ now sets state tuning.tuners skips"
    assert "run_trial" in vars(kt.Hyperband) and "_build_hypermodel" in vars(kt.Hyperband)


def test_profiler_trace_takes_the_step_marker_argument():
    with tf.profiler.experimental.Trace("train", step_num=1, _r=1):
        pass


def test_a_string_input_model_builds_from_one_replica_under_a_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        text = keras.Input(shape=(), dtype="string", name="text")
        ids = keras.layers.StringLookup(vocabulary=["a", "b"])(keras.layers.Reshape((1,))(text))
        model = keras.Model(text, keras.layers.Dense(2)(keras.layers.Flatten()(keras.ops.cast(ids, "float32"))))
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    internals.build_from_one_replica(model)  # by name: fails if Keras renames the method
    data = tf.data.Dataset.from_tensor_slices((["a", "b", "c", "a"], [0, 1, 1, 0])).batch(2)
    history = model.fit(data, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1 and model.built
