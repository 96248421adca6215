"""Text datasets: folders or tables of labelled documents → unbatched `(string, int32 label)` splits.

`load(path)` reads the documents (`textfiles.read`: layouts, bad files, the seeded carve),
chooses the text input from the training split alone (`inputs.text.fit`: vocabularies and
sequence length), and returns the same `Datasets` / `DatasetSpec` as an image dataset, with the
`TextInput` on `DatasetSpec.input`. Everything after the data stage asks that spec, not this
module.

The documents are held in memory as strings: a corpus of tens of thousands of documents is
tens of megabytes, less than one split of decoded images, and reading it once lets every file
be checked before training starts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import tensorflow as tf

from tfpipeline.data import textfiles
from tfpipeline.data.datasets import QUICK_EXAMPLES, Datasets, DatasetSpec
from tfpipeline.inputs import text as text_input


def is_text_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a table (CSV/TSV file, or a folder with train.csv/.tsv) rather than
    folders of files; class folders of `.txt` files are text too (`has_text_files`)."""
    root = Path(path).expanduser()
    if root.is_file():
        return root.suffix.lower() in textfiles.TABLE_SUFFIXES
    return root.is_dir() and any((root / f"train{s}").is_file() for s in textfiles.TABLE_SUFFIXES)


def has_text_files(path: str | os.PathLike, probe: int = 200) -> bool:
    """Whether the first files under a folder of class folders are mostly `.txt` files."""
    root = Path(path).expanduser()
    files = []
    for file in root.rglob("*"):
        if file.is_file() and not file.name.startswith("."):
            files.append(file)
            if len(files) >= probe:
                break
    return bool(files) and sum(f.suffix.lower() == ".txt" for f in files) * 2 > len(files)


def load(path: str | os.PathLike, *, validation_fraction: float = 0.1, quick: bool = False, seed: int = 42,
         text_column: str | None = None, label_column: str | None = None, verbose: bool = True) -> Datasets:
    """Train / validation / test datasets of a text dataset, and its `TextInput`.

    Args:
        path: a folder of class folders (split or flat), a CSV/TSV file, or a folder of
            train/[validation]/test tables (`textfiles`).
        validation_fraction: share carved for validation (and for test) where the data has none.
        quick: train on a small subset (a smoke test); test stays whole.
        seed: fixes the carve.
        text_column, label_column: a table's columns (None: detected).
        verbose: print what was read, skipped and chosen.

    Returns:
        `Datasets` of unbatched `(tf.string scalar, int32 label)` examples; `spec.input` is the
        `TextInput` fitted on the training split.

    Raises:
        UserError: the data cannot be read as labelled text (see `textfiles.read`).
    """
    data = textfiles.read(path, validation_fraction=validation_fraction, seed=seed, text_column=text_column,
                          label_column=label_column)
    if verbose:
        textfiles.report_skipped(data)
    texts, labels = dict(data.texts), dict(data.labels)
    if quick:
        for role, limit in QUICK_EXAMPLES.items():
            texts[role], labels[role] = texts[role][:limit], labels[role][:limit]
    made = {role: _dataset(texts[role], labels[role]) for role in textfiles.ROLES}
    if verbose:
        print(f"Text dataset {data.root} ({data.layout}): {len(data.class_names)} classes, "
              + ", ".join(f"{len(texts[r]):,} {r}" for r in textfiles.ROLES) + " documents"
              + (f"; text column {data.columns['text']!r}, label column {data.columns['label']!r}"
                 if data.columns else ""), flush=True)
    spec_input = text_input.fit(made["train"], verbose=verbose)
    spec = DatasetSpec(
        name=data.root.stem if data.root.is_file() else data.root.name,
        version=f"text-{_digest(texts, labels)}",  # changes when the documents or the split change
        input_shape=(),
        num_classes=len(data.class_names),
        class_names=data.class_names,
        splits={role: f"{role} ({data.layout})" for role in textfiles.ROLES},
        num_examples={role: len(texts[role]) for role in textfiles.ROLES},
        source={"kind": "text", "path": str(data.root), "layout": data.layout, "split": data.split_rule,
                "columns": data.columns, "skipped": data.skipped_summary()},
        input=spec_input,
    )
    # Made from strings in memory: nothing to decode or cache between epochs.
    return Datasets(spec, made["train"], made["validation"], made["test"], in_memory=True)


def _dataset(texts: list[str], labels: list[int]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((tf.constant(texts, tf.string), tf.constant(labels, tf.int32)))


def _digest(texts: dict[str, list[str]], labels: dict[str, list[int]]) -> str:
    digest = hashlib.sha256()
    for role in textfiles.ROLES:
        for text, label in zip(texts[role], labels[role]):
            digest.update(f"{role}:{label}:".encode())
            digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:12]
