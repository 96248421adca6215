"""An ensemble: models of one architecture trained apart, with their own seeds, served as one.

Averaging the class probabilities of a few independently trained models is the most reliable
way to add accuracy once a single model has stopped improving (docs/benchmarks.md measures it
for the CNN). The members are trained one after another by the same training code as a single
model; `combine` then makes one functional Keras model of them whose output is the log of the
average probability. That output is read as logits, like any single model's
(softmax(log p) = p), so evaluation, the export and its signatures, the gate and serving need
nothing of their own.

A finished member's weights are kept in the run's state folder until the run ends, so an
interrupted run resumes at the member it was training (`train_members`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import keras

from tfpipeline import runstate


@keras.saving.register_keras_serializable(package="tfpipeline")
class ProbabilityAverage(keras.layers.Layer):
    """The log of the mean of the members' softmax probabilities, computed from their logits
    (log-sum-exp of their log-probabilities, minus log N: no probability underflows)."""

    def call(self, inputs):
        stacked = keras.ops.stack([keras.ops.log_softmax(x, axis=-1) for x in inputs], axis=0)
        return keras.ops.logsumexp(stacked, axis=0) - math.log(len(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def combine(members: list[keras.Model]) -> keras.Model:
    """One model over the members' inputs (`images`, or those of a text or table model) that
    averages the members' probabilities; a single member is returned as it is."""
    if len(members) == 1:
        return members[0]
    for i, member in enumerate(members):
        member.name = f"member{i}"  # the functional model needs unique layer names
    if len(members[0].inputs) == 1 and members[0].inputs[0].dtype != "string":
        inputs = keras.Input(shape=members[0].input_shape[1:], dtype=members[0].inputs[0].dtype, name="images")
    else:  # text (one string input) and tables (one input per column): the members' own inputs
        inputs = keras.tree.map_structure(
            lambda t: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name.split(":")[0]), members[0].input)
    logits = ProbabilityAverage(name="average", dtype="float32")([member(inputs) for member in members])
    return keras.Model(inputs, logits, name="ensemble")


def train_members(count: int, train: Callable[[int], tuple[keras.Model, dict]],
                  build: Callable[[int], keras.Model], store: Path,
                  trained_by: dict | None = None) -> tuple[list[keras.Model], list[dict]]:
    """Train members 0..count-1 with `train(i) -> (model, record)`, keeping each finished one
    in `store` (`member<i>.weights.h5` and its record as JSON) when there are several; a member
    found there is rebuilt with `build(i)` and loaded instead of trained again, if it was trained
    by the same `trained_by` (everything that shapes a member: family, hyperparameters, epochs,
    data, distribution); one trained otherwise is trained again, so an export never mixes
    members trained under different settings."""
    models, records = [], []
    keep = count > 1
    for i in range(count):
        weights, record_file = store / f"member{i}.weights.h5", store / f"member{i}.json"
        found = keep and weights.exists() and record_file.exists()
        if found and trained_by is not None and \
                json.loads(record_file.read_text()).get("trained_by") != _jsonable(trained_by):
            print(f"Member {i + 1} of {count}: the one kept in {store} was trained under other settings; "
                  "training it again.", flush=True)
            found = False
        if found:
            model = build(i)
            model.load_weights(weights)
            record = {**json.loads(record_file.read_text()), "loaded": True}
            print(f"Member {i + 1} of {count}: trained before this run was interrupted; loaded from {weights}.",
                  flush=True)
        else:
            if keep:
                print(f"Member {i + 1} of {count}:", flush=True)
            model, record = train(i)
            if trained_by is not None:
                record = {**record, "trained_by": _jsonable(trained_by)}
            if keep:
                store.mkdir(parents=True, exist_ok=True)
                # Weights, then the record, each written aside and renamed: a kill leaves either
                # the finished member or nothing of it, never half a file.
                partial = weights.with_name(f".{weights.stem}.partial.weights.h5")
                model.save_weights(partial)
                os.replace(partial, weights)
                runstate.write_json(record_file, record)
        models.append(model)
        records.append(record)
    return models, records


def _jsonable(value):
    """`value` as it reads back from JSON (tuples become lists), for comparing with a record."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def discard(store: Path) -> None:
    """Delete the finished members `train_members` kept in `store`: the run is over."""
    for path in store.glob("member*.weights.h5"):
        path.unlink(missing_ok=True)
    for path in store.glob("member*.json"):
        path.unlink(missing_ok=True)
