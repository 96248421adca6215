"""Ensembles: several models trained apart, exported as one that averages their probabilities."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tfpipeline import cli
from tfpipeline.config import PipelineConfig
from tfpipeline.errors import UserError
from tfpipeline.training import ensemble


def _member(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    images = keras.Input((4, 4, 1), dtype="uint8", name="images")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(images))
    return keras.Model(images, keras.layers.Dense(3, name="logits")(x), name="tiny")


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_the_ensemble_outputs_the_log_of_its_members_mean_probability():
    members = [_member(seed) for seed in range(3)]
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 1), dtype=np.uint8)
    alone = [_softmax(keras.ops.convert_to_numpy(m(images))) for m in members]
    combined = ensemble.combine(members)
    got = keras.ops.convert_to_numpy(combined(images))
    np.testing.assert_allclose(_softmax(got), np.mean(alone, axis=0), atol=1e-6)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-5)  # log-probabilities already
    assert [layer.name for layer in combined.layers[1:4]] == ["member0", "member1", "member2"]
    single = _member(7)
    assert ensemble.combine([single]) is single


class _Interrupted(Exception):
    pass


def test_an_interrupted_ensemble_resumes_at_the_member_it_was_training(tmp_path):
    trained = []

    def train(i, fail_at=None):
        if i == fail_at:
            raise _Interrupted
        trained.append(i)
        model = _member(100 + i)
        return model, {"seed": 100 + i}

    with pytest.raises(_Interrupted):
        ensemble.train_members(3, lambda i: train(i, fail_at=1), lambda i: _member(0), tmp_path)
    assert trained == [0] and sorted(p.name for p in tmp_path.iterdir()) == ["member0.json", "member0.weights.h5"]
    first = [w.numpy() for w in _member(100).weights]

    models, records = ensemble.train_members(3, train, lambda i: _member(0), tmp_path)
    assert trained == [0, 1, 2]  # member 0 was not trained again
    assert records[0] == {"seed": 100, "loaded": True} and records[1] == {"seed": 101}
    for got, want in zip(models[0].weights, first):  # loaded into a fresh build, not seed 0's weights
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)
    assert json.loads((tmp_path / "member2.json").read_text()) == {"seed": 102}


def test_a_member_kept_from_other_settings_is_trained_again(tmp_path):
    trained = []

    def train(i):
        trained.append(i)
        return _member(100 + i), {"seed": 100 + i}

    def interrupted(i):
        if i == 1:
            raise _Interrupted
        return train(i)

    with pytest.raises(_Interrupted):  # member 0 kept, trained for 4 epochs
        ensemble.train_members(2, interrupted, lambda i: _member(0), tmp_path, {"epochs": 4})
    # Run again with another --epochs: member 0 is not loaded into the new ensemble, but trained again.
    _, records = ensemble.train_members(2, train, lambda i: _member(0), tmp_path, {"epochs": 6})
    assert trained == [0, 0, 1] and [r["trained_by"] for r in records] == [{"epochs": 6}] * 2
    assert "loaded" not in records[0]
    # The same settings again: both are loaded.
    _, records = ensemble.train_members(2, train, lambda i: _member(0), tmp_path, {"epochs": 6})
    assert trained == [0, 0, 1] and all(r["loaded"] for r in records)


def test_one_model_keeps_nothing_in_the_state_folder(tmp_path):
    models, records = ensemble.train_members(1, lambda i: (_member(i), {"seed": i}), _member, tmp_path)
    assert len(models) == 1 and records == [{"seed": 0}] and not list(tmp_path.iterdir())


def test_every_run_trains_one_model_unless_an_ensemble_is_asked_for():
    # One model, tuned or not: an ensemble serves at N times one model's cost (docs/benchmarks.md).
    assert PipelineConfig().ensemble == PipelineConfig(tune=False).ensemble == 1
    assert cli.config_from_args(cli.build_parser().parse_args([])).ensemble == 1  # the flag's default too


def test_an_ensemble_on_several_workers_is_refused(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(UserError, match="--ensemble 2"):
        PipelineConfig(ensemble=2, tune=False).validate()
    with pytest.raises(UserError, match="--ensemble 3"):
        PipelineConfig(ensemble=3, tune=False, strategy="multi_worker").validate()
    with pytest.raises(UserError, match="--ensemble must be a positive whole number"):
        PipelineConfig(ensemble=0).validate()


# The end-to-end run of a tuned ensemble (its export, its members' curves) is in test_resume.py,
# which also kills and resumes that run.
