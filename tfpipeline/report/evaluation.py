"""Final evaluation on the test split: accuracy, loss, per-class accuracy, confusion matrix."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class Evaluation:
    accuracy: float
    loss: float | None  # None when only the predicted classes are known (a SavedModel's `classes`)
    num_examples: int
    per_class_accuracy: dict[str, float]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    predictions: np.ndarray = dataclasses.field(repr=False, default=None)  # predicted class per example
    probabilities: np.ndarray = dataclasses.field(repr=False, default=None)  # per example and class, when known

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("predictions", "probabilities")}


def collect(dataset: tf.data.Dataset) -> tuple[Any, np.ndarray]:
    """All `(examples, labels)` of a finite batched dataset, in order, as NumPy: an array of
    examples (images; text as `str`), or a dict of arrays for named inputs (a table's columns).

    Strings come back as Python `str`, not the `bytes` a string tensor's `.numpy()` gives:
    `Model.predict` refuses arrays of `bytes`, and `str` is what a request carries.
    """
    examples, labels = [], []
    for x, y in dataset:
        examples.append(tf.nest.map_structure(_numpy, x))
        labels.append(y.numpy())
    if isinstance(examples[0], dict):
        return {name: np.concatenate([batch[name] for batch in examples]) for name in examples[0]}, \
            np.concatenate(labels)
    return np.concatenate(examples), np.concatenate(labels)


def _numpy(tensor: tf.Tensor) -> np.ndarray:
    if tensor.dtype == tf.string:
        return np.array([v.decode("utf-8", "replace") for v in tensor.numpy().reshape(-1)],
                        dtype=object).reshape(tensor.shape)
    return tensor.numpy()


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def from_classes(labels: np.ndarray, predictions: np.ndarray, class_names, loss: float | None = None) -> Evaluation:
    """Metrics from predicted classes on labelled examples."""
    matrix = confusion_matrix(labels, predictions, len(class_names))
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    return Evaluation(
        accuracy=float((predictions == labels).mean()),
        loss=loss,
        num_examples=int(labels.shape[0]),
        per_class_accuracy={str(name): float(acc) for name, acc in zip(class_names, per_class)},
        confusion_matrix=matrix.tolist(),
        predictions=predictions,
    )


def summarize(logits: np.ndarray, labels: np.ndarray, class_names) -> Evaluation:
    """Metrics from a model's logits on labelled examples."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    return from_classes(labels, logits.argmax(axis=-1), class_names, float(loss))


def from_probabilities(labels: np.ndarray, probabilities: np.ndarray, class_names) -> Evaluation:
    """Metrics from predicted probabilities (a served signature's), the loss included."""
    picked = np.take_along_axis(np.asarray(probabilities, np.float64), labels[:, None].astype(np.int64), axis=-1)
    loss = float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()) if len(labels) else None
    evaluation = from_classes(labels, np.asarray(probabilities).argmax(axis=-1), class_names, loss)
    evaluation.probabilities = np.asarray(probabilities)
    return evaluation


def evaluate(model: keras.Model, examples, labels: np.ndarray, class_names,
             batch_size: int = 1000) -> Evaluation:
    """Metrics of `model` on `examples` as `collect` gives them (the model takes them as they are);
    `probabilities` of the evaluation holds the model's softmax for the class metrics."""
    logits = np.asarray(model.predict(examples, batch_size=batch_size, verbose=0), dtype=np.float32)
    evaluation = summarize(logits, labels, class_names)
    evaluation.probabilities = np.asarray(tf.nn.softmax(logits, axis=-1))
    return evaluation


def class_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names) -> dict:
    """Metrics beside accuracy for imbalanced classes: recall per class, macro F1, and ROC AUC
    when there are two classes (of the second class's probability)."""
    from sklearn.metrics import f1_score, recall_score, roc_auc_score

    predictions = probabilities.argmax(axis=-1)
    every = list(range(len(class_names)))
    recall = recall_score(labels, predictions, labels=every, average=None, zero_division=0)
    metrics = {"per_class_recall": {str(n): float(r) for n, r in zip(class_names, recall)},
               "macro_f1": float(f1_score(labels, predictions, labels=every, average="macro", zero_division=0))}
    if len(class_names) == 2 and len(np.unique(labels)) == 2:
        metrics["roc_auc"] = float(roc_auc_score(labels, probabilities[:, 1]))
    return metrics
