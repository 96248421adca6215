"""Dropout's masks are a function of (seed, epoch): a model restored from its weights after an
epoch trains the next epoch exactly as the model that never stopped (training/seeds.py)."""

from __future__ import annotations

import keras
import numpy as np

from tfpipeline.training import seeds


def _model() -> keras.Model:
    keras.utils.set_random_seed(7)
    inputs = keras.Input((16,))
    x = keras.layers.Dropout(0.5)(keras.layers.Dense(32, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dropout(0.3)(x)))
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _fit(model, data, first: int, last: int) -> None:
    x, y = data
    model.fit(x, y, batch_size=16, shuffle=False, initial_epoch=first, epochs=last, verbose=0,
              callbacks=[seeds.EpochSeeds()])


def test_a_restored_model_drops_out_what_the_uninterrupted_one_does(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(64, 16)).astype("float32"), rng.integers(0, 3, 64)
    whole = _model()
    assert len(seeds.seed_states(whole)) == 2
    _fit(whole, data, 0, 3)
    first = _model()
    _fit(first, data, 0, 1)
    first.save_weights(tmp_path / "epoch1.weights.h5")  # what a backup keeps: no random streams
    resumed = _model()
    resumed.load_weights(tmp_path / "epoch1.weights.h5")
    _fit(resumed, data, 1, 3)
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Without the callback the resumed model's masks restart from the stream's beginning.
    plain = _model()
    plain.load_weights(tmp_path / "epoch1.weights.h5")
    plain.fit(*data, batch_size=16, shuffle=False, initial_epoch=1, epochs=3, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(whole.get_weights(), plain.get_weights()))
