"""Final evaluation on the test split: accuracy, loss, per-class accuracy, confusion matrix."""

from __future__ import annotations

import dataclasses

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

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "predictions"}


def collect(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All `(images, labels)` of a finite batched dataset, in order, as NumPy arrays."""
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


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
    return from_classes(labels, np.asarray(probabilities).argmax(axis=-1), class_names, loss)


def evaluate(model: keras.Model, images: np.ndarray, labels: np.ndarray, class_names,
             batch_size: int = 1000) -> Evaluation:
    logits = model.predict(images, batch_size=batch_size, verbose=0)
    return summarize(np.asarray(logits, dtype=np.float32), labels, class_names)


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
