"""What a text model's run shows: sample documents with their classes, the most confident
mistakes, and integrated gradients over the words.

Integrated gradients (Sundararajan et al., 2017) for a text model start after its lookup,
which has no gradient: from the token embeddings of the sequence families (the baseline is
all-zero embeddings, i.e. no words) or, for the MLP, from its TF-IDF vector (the baseline is
the empty document). The attribution of each token position (summed over the embedding) or
of each n-gram feature is then spread over the words of the original text, which is shown
with its most important words marked: **bold** raised the predicted class's probability,
~~struck~~ lowered it. Words past the sequence length were not read and get nothing.

The words come from the same standardization as the `vectorize` layer (lowercase, strip
punctuation, split on whitespace): a whitespace-separated word of the original text is one
token unless it is only punctuation, so each original word maps to at most one token.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfpipeline.errors import UserError

STEPS = 32  # Riemann steps along the path
MARKED = 5  # words marked per document, each way
SAMPLE, MISTAKES, SHOWN_CHARACTERS = 16, 16, 400
# Keras's `lower_and_strip_punctuation` (keras.layers.TextVectorization's DEFAULT_STRIP_REGEX).
STRIP_REGEX = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'


def _cell(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    flat = " ".join(str(text).split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return flat.replace("|", "\\|")


def _table(rows: list[list[str]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def log_samples(tag: str, texts: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                class_names: Sequence[str], step: int) -> None:
    """TensorBoard text: the first `SAMPLE` documents, and the most confident mistakes when
    `predictions` are probabilities (else the first mistakes)."""
    probabilities = predictions if predictions.ndim == 2 else None
    classes = predictions.argmax(-1) if probabilities is not None else predictions.astype(int)

    def row(i):
        p = f"{probabilities[i, classes[i]]:.3f}" if probabilities is not None else ""
        return [str(class_names[labels[i]]), str(class_names[classes[i]]), p, _cell(texts[i])]

    header = ("true", "predicted", "probability", "text")
    tf.summary.text(f"{tag}/samples", _table([row(i) for i in range(min(SAMPLE, len(texts)))], header), step=step)
    wrong = np.flatnonzero(classes != labels)
    if probabilities is not None:
        wrong = wrong[np.argsort(-probabilities[wrong, classes[wrong]], kind="stable")]
    if len(wrong):
        tf.summary.text(f"{tag}/mistakes", _table([row(i) for i in wrong[:MISTAKES]], header), step=step)


def _attribution_point(model: keras.Model) -> str:
    names = {layer.name for layer in model.layers}
    if "embedding" in names:
        return "embedding"
    if "vectorize" in names:
        return "vectorize"
    raise ValueError(f"Model {model.name!r} has no `vectorize` or `embedding` layer to attribute over.")


def integrated_gradients(model: keras.Model, texts: np.ndarray, classes: np.ndarray | None = None,
                         steps: int = STEPS) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Per-word attributions of each text (one value per whitespace-separated word of the
    original text), the class each explains (the predicted one unless given), and its
    probability.

    Args:
        model: a text family's model (strings in, logits out).
        texts: a 1-D array of strings.
        classes: the class to explain per text; None: the predicted class.
        steps: Riemann steps along the straight path from the baseline.

    Returns:
        (attributions per text, classes, probabilities of those classes). An ensemble's are the
        mean of its members' attributions to the class the ensemble predicts.
    """
    from tfpipeline.inputs import ensemble_members

    members = ensemble_members(model)
    if len(members) > 1:
        probabilities = tf.nn.softmax(model(texts, training=False), -1).numpy()
        classes = probabilities.argmax(-1) if classes is None else np.asarray(classes)
        parts = [integrated_gradients(member, texts, classes, steps)[0] for member in members]
        return ([np.mean(words, axis=0) for words in zip(*parts)], classes,
                probabilities[np.arange(len(texts)), classes])
    point_name = _attribution_point(model)
    vectorize = model.get_layer("vectorize")
    head = keras.Model(model.get_layer(point_name).output, model.output)
    probabilities = tf.nn.softmax(model(texts, training=False), -1).numpy()
    classes = probabilities.argmax(-1) if classes is None else np.asarray(classes)
    results = []
    for text, cls in zip(texts, classes):
        features = vectorize(np.array([text], dtype=object))
        point = model.get_layer("embedding")(features) if point_name == "embedding" else features
        point = tf.cast(point, tf.float32)
        alphas = tf.reshape((tf.range(steps, dtype=tf.float32) + 1.0) / steps, [-1] + [1] * (len(point.shape) - 1))
        path = alphas * point  # the baseline is zero
        with tf.GradientTape() as tape:
            tape.watch(path)
            p = tf.nn.softmax(tf.cast(head(path, training=False), tf.float32), -1)[:, int(cls)]
        grads = tf.reduce_mean(tape.gradient(p, path), axis=0)
        contribution = (point[0] * grads).numpy()
        results.append(_to_words(text, contribution, vectorize, point_name))
    return results, classes, probabilities[np.arange(len(texts)), classes]


def _tokens(words: list[str]) -> list[str]:
    """Each original word standardized as the `vectorize` layer does ("" for punctuation only)."""
    if not words:
        return []
    std = tf.strings.regex_replace(tf.strings.lower(tf.constant(words)), STRIP_REGEX, "")
    return [w.decode() for w in std.numpy()]


def _to_words(text: str, contribution: np.ndarray, vectorize, point_name: str) -> np.ndarray:
    """Spread token-position (embedding) or n-gram-feature (TF-IDF) attributions over the
    text's whitespace-separated words."""
    words = str(text).split()
    tokens = _tokens(words)
    token_word = [i for i, t in enumerate(tokens) if t.strip()]  # token position -> word index
    scores = np.zeros(len(words), np.float32)
    if point_name == "embedding":
        per_position = contribution.sum(axis=-1)  # [sequence_length]
        for position, word in enumerate(token_word[: len(per_position)]):
            scores[word] = per_position[position]
        return scores
    vocabulary = vectorize.get_vocabulary()
    index = {gram: i for i, gram in enumerate(vocabulary)}
    sequence = [tokens[w] for w in token_word]
    order = int(vectorize.get_config().get("ngrams") or 1)
    spans: dict[int, list[int]] = {}
    for n in range(1, order + 1):
        for start in range(len(sequence) - n + 1):
            feature = index.get(" ".join(sequence[start: start + n]))
            if feature is not None:
                spans.setdefault(feature, []).extend(token_word[start: start + n])
    for feature, covered in spans.items():
        for word in covered:
            scores[word] += contribution[feature] / len(covered)
    return scores


def marked(text: str, scores: np.ndarray, style: str = "markdown") -> str:
    """The text with its `MARKED` most positive words bold (or highlighted) and most negative
    struck through; "html" writes colored spans with the score in a tooltip."""
    words = str(text).split()
    top = set(np.argsort(-scores)[:MARKED][scores[np.argsort(-scores)[:MARKED]] > 0])
    bottom = set(np.argsort(scores)[:MARKED][scores[np.argsort(scores)[:MARKED]] < 0])
    out = []
    for i, word in enumerate(words):
        if style == "html":
            color = "230,30,30" if scores[i] > 0 else "30,90,230"
            alpha = min(1.0, abs(float(scores[i])) / (np.abs(scores).max() or 1.0))
            out.append(f'<span title="{scores[i]:+.4f}" style="background: rgba({color},{alpha:.2f})">'
                       f"{html.escape(word)}</span>")
        else:
            word = word.replace("|", "\\|")
            out.append(f"**{word}**" if i in top else f"~~{word}~~" if i in bottom else word)
    return " ".join(out)


def log_attributions(model: keras.Model, texts: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                     step: int, sample: int = 8) -> None:
    """TensorBoard text: the first `sample` documents and the `sample` most confident mistakes,
    each with its most important words marked for the class the model predicted."""
    probabilities = tf.nn.softmax(model.predict(texts, batch_size=256, verbose=0), -1).numpy()
    predicted = probabilities.argmax(-1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:sample]
    for tag, chosen in (("attributions/samples", np.arange(min(sample, len(texts)))),
                        ("attributions/mistakes", wrong)):
        if not len(chosen):
            continue
        scores, classes, confidence = integrated_gradients(model, texts[chosen])
        rows = [[str(class_names[labels[i]]), str(class_names[c]), f"{p:.3f}", marked(texts[i], s)]
                for i, s, c, p in zip(chosen, scores, classes, confidence)]
        tf.summary.text(tag, _table(rows, ("true", "predicted", "probability", "text (bold: for, struck: against)")),
                        step=step)


def explain(model: keras.Model, text: str, out: Path, class_names: Sequence[str]) -> str:
    """`predict --explain OUT`: the text with its words marked, as HTML (`.html`/`.htm`) or
    Markdown (anything else); returns the line `predict` prints."""
    (scores,), (cls,), (p,) = integrated_gradients(model, np.array([text], dtype=object))
    name = class_names[cls] if class_names else str(cls)
    style = "html" if out.suffix.lower() in (".html", ".htm") else "markdown"
    body = marked(text, scores, style)
    if style == "html":
        body = (f"<!doctype html><meta charset='utf-8'><p>class <b>{html.escape(str(name))}</b> p={p:.3f} "
                "(red: raised its probability, blue: lowered it)</p><p>" + body + "</p>\n")
    else:
        body = f"class **{name}** p={p:.3f} (bold: for, struck: against)\n\n{body}\n"
    try:
        out.write_text(body, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"Cannot write the explanation to {out}: {exc.strerror or exc}.") from None
    words = str(text).split()
    top = [words[i] for i in np.argsort(-scores)[:MARKED] if scores[i] > 0]
    return f"{name} p={p:.3f}; words for it: {', '.join(top) or '(none)'}; explanation in {out}"


def log_embeddings(model: keras.Model, logdir: Path) -> Path | None:
    """TensorBoard's Projector: each member's learned word embeddings (the `embedding` layer of
    the CNN, RNN and Transformer; the MLP has none) in a checkpoint under `logdir/projector`, with
    the words of its vocabulary as metadata. Returns the folder, or None when there is nothing
    to show."""
    from tensorboard.plugins import projector

    from tfpipeline.inputs import ensemble_members

    tables = {}
    for i, member in enumerate(ensemble_members(model)):
        if "embedding" not in {layer.name for layer in member.layers}:
            continue
        words = member.get_layer("vectorize").get_vocabulary()
        weights = member.get_layer("embedding").get_weights()[0][: len(words)]
        # Keras's first two ids: padding ("") and out-of-vocabulary ("[UNK]").
        tables[f"words_{i}"] = (weights, ["[PAD]" if not w else w.replace("\t", " ") for w in words])
    if not tables:
        return None
    folder = logdir / "projector"
    folder.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(**{name: tf.Variable(weights) for name, (weights, _) in tables.items()}).save(
        str(folder / "embedding.ckpt"))
    config = projector.ProjectorConfig()
    for name, (_, words) in tables.items():
        (folder / f"{name}.tsv").write_text("".join(f"{w}\n" for w in words), encoding="utf-8")
        embedding = config.embeddings.add()
        embedding.tensor_name = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
        embedding.metadata_path = f"{name}.tsv"
    projector.visualize_embeddings(str(folder), config)
    return folder
