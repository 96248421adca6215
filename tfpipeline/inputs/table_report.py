"""TensorBoard samples and integrated-gradients attributions for a table's model.

Samples are a Markdown table in TensorBoard's Text tab: a few rows with their predicted and
true class, then the most confident mistakes (the rows to look at first).

Attributions are integrated gradients (Sundararajan et al. 2017) on the encoded columns: the
path from a baseline to the row runs through the model's body (`models.table.encoder.BODY`),
since raw strings have no gradient. The baseline is all zeros after encoding: every number at
its training mean, with no missing indicator, and no category at all. A column's attribution
is the sum over its encoded floats; the attributions of a row add up (up to the path's
discretization) to the difference between the row's and the baseline's probability of the
explained class. Global importance is the mean absolute attribution over test rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfpipeline.models.table.encoder import BODY, ENCODER

SAMPLES = 8
MISTAKES = 8
IMPORTANCE_ROWS = 200
STEPS = 32


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value.decode() if isinstance(value, bytes) else value)


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows])


def log_samples(table, tag, examples, labels, predictions, class_names, *, step) -> None:
    """A few rows, then the most confident mistakes, with predicted and true classes.

    `predictions` are probabilities `[n, classes]` (mistakes ranked by confidence) or classes `[n]`.
    """
    predictions = np.asarray(predictions)
    probs = predictions if predictions.ndim == 2 else None
    predicted = probs.argmax(axis=-1) if probs is not None else predictions
    confidence = probs.max(axis=-1) if probs is not None else np.ones(len(predicted))
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:MISTAKES]
    names = [c.name for c in table.features]
    header = ["row", *names, "predicted", "confidence", "true"]

    def rows(indices):
        return [[int(i), *(examples[n][i] for n in names), class_names[predicted[i]], f"{confidence[i]:.3f}",
                 class_names[labels[i]]] for i in indices]

    text = f"**Samples**\n\n{markdown(header, rows(range(min(SAMPLES, len(labels)))))}\n\n"
    text += f"**Most confident mistakes** ({len(np.flatnonzero(predicted != labels))} in all)\n\n"
    text += markdown(header, rows(wrong)) if len(wrong) else "none"
    tf.summary.text(tag, text, step=step)


def integrated_gradients(table, model, examples: dict, targets: np.ndarray | None = None, steps: int = STEPS):
    """Attributions `[n, columns]` (columns as `table.features`) and the explained classes `[n]`
    (an ensemble's: the mean of its members' attributions to the class it predicts)."""
    from tfpipeline.inputs import ensemble_members

    members = ensemble_members(model)
    if len(members) > 1:
        if targets is None:
            targets = np.asarray(model({k: tf.constant(v) for k, v in table.request(examples).items()})).argmax(-1)
        parts = [integrated_gradients(table, member, examples, targets, steps)[0] for member in members]
        return np.mean(parts, axis=0), targets
    encoded = model.get_layer(ENCODER)({k: tf.constant(v) for k, v in table.request(examples).items()})
    body = model.get_layer(BODY)
    if targets is None:
        targets = np.asarray(body(encoded)).argmax(axis=-1)
    alphas = tf.reshape(tf.linspace(0.0, 1.0, steps + 1)[1:], (-1, 1, 1))
    path = alphas * encoded[tf.newaxis]  # [steps, n, width], from the zero baseline
    flat = tf.reshape(path, (-1, encoded.shape[-1]))
    with tf.GradientTape() as tape:
        tape.watch(flat)
        probs = tf.nn.softmax(tf.cast(body(flat), tf.float32), axis=-1)
        chosen = tf.gather(probs, np.tile(targets, steps), axis=1, batch_dims=1)
    grads = tf.reshape(tape.gradient(chosen, flat), path.shape)
    per_float = (encoded * tf.reduce_mean(grads, axis=0)).numpy()
    bounds = np.cumsum([0] + [c.width for c in table.features])
    per_column = np.stack([per_float[:, a:b].sum(axis=1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)
    return per_column, targets


def ranked(table, attributions: np.ndarray) -> list[tuple[str, float]]:
    names = [c.name for c in table.features]
    order = np.argsort(-np.abs(attributions), kind="stable")
    return [(names[i], float(attributions[i])) for i in order]


def log_attributions(table, model, examples, labels, class_names, step) -> None:
    """Global feature importance (mean |attribution| over test rows) and a few rows' rankings."""
    head = {k: np.asarray(v)[:IMPORTANCE_ROWS] for k, v in examples.items()}
    attributions, targets = integrated_gradients(table, model, head)
    importance = np.abs(attributions).mean(axis=0)
    rows = [[name, f"{value:.4f}"] for name, value in ranked(table, importance)]
    tf.summary.text("feature_importance", "**Mean |integrated gradients| over "
                    f"{len(attributions)} test rows**\n\n" + markdown(["feature", "importance"], rows), step=step)
    for name, value in zip([c.name for c in table.features], importance):
        tf.summary.scalar(f"feature_importance/{name}", float(value), step=step)
    lines = [f"row {i} (predicted {class_names[targets[i]]}, true {class_names[labels[i]]}): "
             + ", ".join(f"{n} {v:+.3f}" for n, v in ranked(table, attributions[i])[:5]) for i in range(SAMPLES)
             if i < len(attributions)]
    tf.summary.text("attributions", "\n\n".join(lines), step=step)


def explain(table, model, example, out: Path, class_names) -> str:
    """`predict --explain` for one row: the features ranked by attribution, written to `out`."""
    attributions, targets = integrated_gradients(table, model, example)
    ranking = ranked(table, attributions[0])
    text = f"Attributions to {class_names[targets[0]]} (integrated gradients, features ranked):\n" + "".join(
        f"  {name:<24} {value:+.4f}\n" for name, value in ranking)
    Path(out).write_text(text)
    return f"{class_names[targets[0]]}: " + ", ".join(f"{n} {v:+.3f}" for n, v in ranking[:3]) + f" ({out})"
