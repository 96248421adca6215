"""Text input: raw strings in, TextVectorization inside the model, so the export takes raw strings.

The Keras model of a text family takes a batch of strings (`keras.Input(shape=(), dtype="string")`)
and its first layer, named `vectorize`, is a `TextVectorization` built from this spec. So the
vocabulary travels inside the model, its SavedModel and every signature, and `model(examples)`
works on the examples as the test split holds them. The alternative, vectorizing in the input
pipeline and exporting a wrapper, is how exported text models lose their vocabulary.

Only Keras's built-in `standardize` and `split` modes are used: a custom Python standardize
function is not saved with a SavedModel, which then fails to reload. The lookup is a plain
TensorFlow hash table, so TF Serving loads the export without any tf-text op.

`fit` chooses everything from the training split alone:
- the word vocabulary of the sequence families (the CNN, RNN and Transformer): the words seen
  at least `MIN_COUNT` times, at most `MAX_TOKENS`; rarer words become the out-of-vocabulary id,
  which generalizes better than a vector learned from one sighting;
- the n-gram vocabulary (words and word pairs) of the MLP's TF-IDF vectors, with the same rule,
  at most `MAX_NGRAMS`, and its inverse document frequencies (Keras's formula);
- the sequence length: the `PERCENTILE`th percentile of the training documents' lengths in
  words, rounded up to a multiple of 8; longer documents are truncated to it (said once).

The vocabularies are part of `to_json` (metadata.json): `predict --explain` and the Projector
rebuild the Keras model from it, and a lookup table is not a variable the rebuilt model could
copy from the SavedModel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from tfpipeline import signatures as names
from tfpipeline.errors import UserError
from tfpipeline.inputs import InputSpec, register

MIN_COUNT = 2  # a token seen once in training gets no id of its own
MAX_TOKENS = 20000  # words for the sequence families' embeddings
MAX_NGRAMS = 50000  # words and word pairs for the MLP's TF-IDF vectors
PERCENTILE = 95  # sequence length: this percentile of the training documents' lengths
MAX_SEQUENCE_LENGTH = 512  # beyond it a recurrent or attention layer costs more than it tells
STANDARDIZE = "lower_and_strip_punctuation"
SPLIT = "whitespace"
SAMPLE = 16  # test documents shown in TensorBoard, the same every run
MISTAKES = 16  # the most confident mistakes shown
SHOWN_CHARACTERS = 400  # a longer document is cut in TensorBoard's text tab


@register
@dataclasses.dataclass(frozen=True)
class TextInput(InputSpec):
    """Strings in; the vocabularies and lengths that the text families' `vectorize` layers use.

    Args:
        vocabulary: words of the sequence families, most frequent first (without Keras's
            padding and out-of-vocabulary entries).
        ngram_vocabulary: words and word pairs of the MLP's TF-IDF vectors, most frequent first.
        ngram_idf: the inverse document frequency of each `ngram_vocabulary` entry.
        sequence_length: tokens a sequence family reads; longer documents are truncated.
        ngrams: the n-gram order of the MLP's vectors.
        standardize, split: Keras's built-in TextVectorization modes.
        stats: how the sizes were chosen (recorded in metadata.json).
    """

    kind: ClassVar[str] = "text"

    vocabulary: tuple[str, ...]
    ngram_vocabulary: tuple[str, ...]
    ngram_idf: tuple[float, ...]
    sequence_length: int
    ngrams: int = 2
    standardize: str = STANDARDIZE
    split: str = SPLIT
    stats: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def vocabulary_size(self) -> int:
        """Ids of the `vectorize` layer in "int" mode: padding, out-of-vocabulary, the words."""
        return len(self.vocabulary) + 2

    def vectorizer(self, mode: str = "int") -> keras.layers.TextVectorization:
        """The `vectorize` layer: "int" (word ids, padded or truncated to `sequence_length`) for
        the sequence families, "tf_idf" (n-gram TF-IDF vectors) for the MLP."""
        common = dict(standardize=self.standardize, split=self.split, name="vectorize")
        if mode == "int":
            return keras.layers.TextVectorization(output_mode="int", output_sequence_length=self.sequence_length,
                                                  vocabulary=list(self.vocabulary), **common)
        if mode == "tf_idf":
            return keras.layers.TextVectorization(output_mode="tf_idf", ngrams=self.ngrams,
                                                  vocabulary=list(self.ngram_vocabulary),
                                                  idf_weights=list(self.ngram_idf), **common)
        raise ValueError(f"Unknown vectorizer mode {mode!r}; use 'int' or 'tf_idf'.")

    # -- identity ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        record = {"kind": self.kind, "sequence_length": self.sequence_length,
                  "vocabulary_size": self.vocabulary_size, "ngram_vocabulary_size": len(self.ngram_vocabulary) + 1,
                  "ngrams": self.ngrams, "standardize": self.standardize, "split": self.split,
                  "chosen": dict(self.stats)}
        # Last, so the sizes above are what a reader sees first.
        record.update(vocabulary=list(self.vocabulary), ngram_vocabulary=list(self.ngram_vocabulary),
                      ngram_idf=list(self.ngram_idf))  # rounded by `fit`, so they read back equal
        return record

    @classmethod
    def from_json(cls, record: dict) -> TextInput:
        return cls(vocabulary=tuple(record["vocabulary"]), ngram_vocabulary=tuple(record["ngram_vocabulary"]),
                   ngram_idf=tuple(float(v) for v in record["ngram_idf"]),
                   sequence_length=int(record["sequence_length"]), ngrams=int(record.get("ngrams", 2)),
                   standardize=record.get("standardize", STANDARDIZE), split=record.get("split", SPLIT),
                   stats=dict(record.get("chosen", {})))

    # -- export -----------------------------------------------------------------------------
    def signatures(self, model) -> dict[str, Any]:
        """`serving_default`: `text` DT_STRING [-1] in; `classes` (int64) and `probabilities` out."""

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=names.TEXT)])
        def serve(text):
            logits = tf.cast(model(text, training=False), tf.float32)
            probabilities = tf.nn.softmax(logits, axis=-1)
            return {names.PROBABILITIES: probabilities,
                    names.CLASSES: tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

        return {names.DEFAULT: serve}

    def request(self, examples) -> dict[str, np.ndarray]:
        return {names.TEXT: as_strings(examples)}

    def tflite_refusal(self) -> str | None:
        return ("--export-tflite is not available for text models: their first layer looks words up in a "
                "TensorFlow hash table (the TextVectorization inside the model), which the TFLite builtin op set "
                "has no kernel for; the SavedModel, which serves raw strings, is the export to use.")

    # -- predict ----------------------------------------------------------------------------
    def read(self, sources: Sequence[str], signature_inputs: dict[str, Any]) -> tuple[list[str], dict]:
        """Each source is a text file (read as UTF-8), or, when no such file exists and the
        source does not end in `.txt`, the text itself."""
        labels, texts = [], []
        for source in sources:
            path = Path(source).expanduser()
            if path.is_file():
                texts.append(read_text_file(path))
                labels.append(str(source))
            elif source.lower().endswith(".txt"):
                raise UserError(f"No such text file: {source}.")
            else:
                texts.append(source)
                labels.append(_shorten(source, 40))
        return labels, self._request_for(texts, signature_inputs)

    def read_strings(self, texts: Sequence[str], signature_inputs: dict[str, Any]) -> tuple[list[str], dict]:
        """`predict --text "..."`: the strings themselves, never looked up as files."""
        return [_shorten(t, 40) for t in texts], self._request_for(list(texts), signature_inputs)

    def _request_for(self, texts: list[str], signature_inputs: dict[str, Any]) -> dict:
        (name,) = signature_inputs or (names.TEXT,)
        return {name: np.array(texts, dtype=object)}

    @classmethod
    def from_signature(cls, inputs: dict[str, Any]) -> TextInput | None:
        """A text spec when the signature's single input is a string `[batch]` (no vocabulary:
        enough for `read`, which only needs the input's name)."""
        if len(inputs) != 1:
            return None
        (info,) = inputs.values()
        if info.dtype.kind not in "OSU" or info.shape is None or len(info.shape) != 1:
            return None
        return cls(vocabulary=(), ngram_vocabulary=(), ngram_idf=(), sequence_length=8)

    def random_examples(self, count: int, seed: int = 0) -> np.ndarray:
        """Documents of random vocabulary words, a sequence's length each."""
        rng = np.random.default_rng(seed)
        words = np.array(self.vocabulary or ("word",), dtype=object)
        return np.array([" ".join(rng.choice(words, self.sequence_length)) for _ in range(count)], dtype=object)

    # -- report -----------------------------------------------------------------------------
    def log_samples(self, split: str, examples, labels: np.ndarray, predictions: np.ndarray,
                    class_names: Sequence[str], step: int) -> None:
        """A table of the first documents of `split` with their true and predicted classes and,
        when `predictions` are probabilities, the most confident mistakes."""
        from tfpipeline.inputs import textreport

        textreport.log_samples(split, as_strings(examples), labels, predictions, class_names, step)

    def log_attributions(self, model, examples, labels: np.ndarray, class_names: Sequence[str], step: int) -> None:
        from tfpipeline.inputs import textreport

        textreport.log_attributions(model, as_strings(examples), labels, class_names, step)

    def log_embeddings(self, model, logdir: Path) -> None:
        """The sequence families' word embeddings in the Projector, the vocabulary as metadata."""
        from tfpipeline.inputs import textreport

        textreport.log_embeddings(model, Path(logdir))

    def explain(self, model, source: str, out: Path, class_names: Sequence[str]) -> str:
        """`source`: a text file, or the text itself (as `read` takes it)."""
        from tfpipeline.inputs import textreport

        _, request = self.read([source], {names.TEXT: None})
        return textreport.explain(model, str(request[names.TEXT][0]), Path(out), class_names)


def as_strings(examples) -> np.ndarray:
    """Examples as a 1-D object array of Python `str`: what `Model.predict` accepts (it refuses
    the bytes a string tensor's `.numpy()` gives) and what the signature's request carries."""
    values = np.asarray(examples, dtype=object).reshape(-1)
    return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def read_text_file(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8 and try again.") from None
    except OSError as exc:
        raise UserError(f"Cannot read {path}: {exc.strerror or exc}.") from None


def _shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _counts(layer: keras.layers.TextVectorization, batches: tf.data.Dataset, size: int):
    """(token counts, document frequencies, document lengths in tokens) of every id of an
    adapted "int"-mode layer over the documents."""
    counts, documents, lengths = np.zeros(size, np.int64), np.zeros(size, np.int64), []
    for batch in batches:
        ids = layer(batch).numpy()
        present = ids > 0  # 0 pads the batch's shorter documents
        counts += np.bincount(ids[present], minlength=size)
        for row, keep in zip(ids, present):
            documents[np.unique(row[keep])] += 1
        lengths.append(present.sum(axis=1))
    return counts, documents, np.concatenate(lengths) if lengths else np.zeros([0], np.int64)


def _frequent(vocabulary: list[str], counts: np.ndarray, limit: int) -> list[int]:
    """Ids (past Keras's padding and out-of-vocabulary ids) of the tokens seen `MIN_COUNT`
    times, most frequent first, at most `limit`; all of them if none is that frequent."""
    order = [i for i in np.argsort(-counts[2:], kind="stable") + 2]
    kept = [i for i in order if counts[i] >= MIN_COUNT] or order
    return kept[:limit]


def fit(train: tf.data.Dataset, *, ngrams: int = 2, max_tokens: int = MAX_TOKENS, max_ngrams: int = MAX_NGRAMS,
        percentile: float = PERCENTILE, verbose: bool = True) -> TextInput:
    """The spec of a training split: vocabularies and sequence length chosen from its documents.

    Args:
        train: the training split's documents (string scalars, unbatched; labels are ignored
            if the elements are `(text, label)` pairs).
        ngrams: the MLP's n-gram order.
        max_tokens, max_ngrams: caps of the two vocabularies.
        percentile: which percentile of document length becomes the sequence length.
        verbose: print the choice and how many documents it truncates.

    Returns:
        A `TextInput`.
    """
    if isinstance(train.element_spec, tuple):
        train = train.map(lambda text, *_: text)
    batches = train.batch(1024)
    tables = {}
    for order in (1, ngrams):
        layer = keras.layers.TextVectorization(standardize=STANDARDIZE, split=SPLIT, output_mode="int",
                                               ngrams=None if order == 1 else order)
        layer.adapt(batches)
        vocabulary = layer.get_vocabulary()
        tables[order] = (vocabulary, *_counts(layer, batches, len(vocabulary)))
    words, word_counts, _, lengths = tables[1]
    grams, gram_counts, gram_documents, _ = tables[ngrams]
    kept_words = _frequent(words, word_counts, max_tokens)
    kept_grams = _frequent(grams, gram_counts, max_ngrams)
    n = len(lengths)
    idf = np.log1p(n / (1.0 + gram_documents[kept_grams]))  # Keras's TF-IDF formula
    raw = float(np.percentile(lengths, percentile)) if n else 8.0
    length = int(min(MAX_SEQUENCE_LENGTH, max(8, 8 * math.ceil(raw / 8))))
    truncated = int((lengths > length).sum())
    stats = {"documents": n, "sequence_length_rule": f"{percentile:g}th percentile of training document lengths "
             f"in words ({raw:.0f}), rounded up to a multiple of 8, in [8, {MAX_SEQUENCE_LENGTH}]",
             "truncated_documents": truncated, "longest_document": int(lengths.max()) if n else 0,
             "vocabulary_rule": f"training tokens seen at least {MIN_COUNT} times, at most {max_tokens} words and "
             f"{max_ngrams} n-grams", "distinct_words": len(words) - 2, "distinct_ngrams": len(grams) - 2}
    if verbose:
        print(f"Text input: {len(kept_words):,} words (of {len(words) - 2:,} seen), {len(kept_grams):,} "
              f"{ngrams}-grams, sequences of {length} words ({percentile:g}th percentile of {n:,} training "
              f"documents); {truncated:,} longer documents ({truncated / max(1, n):.1%}) are truncated to their "
              f"first {length} words by the sequence models.", flush=True)
    return TextInput(vocabulary=tuple(str(words[i]) for i in kept_words),
                     ngram_vocabulary=tuple(str(grams[i]) for i in kept_grams),
                     ngram_idf=tuple(round(float(v), 6) for v in idf),
                     sequence_length=length, ngrams=ngrams, stats=stats)
