"""Text datasets: folders or tables of labelled documents → unbatched `(string, int32 label)` splits.

`load(path)` reads the documents (`textfiles.read`: layouts, bad files, the seeded carve),
chooses the text input from the training split alone (`inputs.text.fit`: vocabularies and
sequence length), and returns the same `Datasets` / `DatasetSpec` as an image dataset, with the
`TextInput` on `DatasetSpec.input`. Everything after the data stage asks that spec, not this
module.

Two ways to hold the documents, chosen by `--cache-budget` as for folders of images:

* **memory** (the texts total at most the budget: tens of thousands of documents are tens of
  megabytes). The read pass, which checks every file, keeps the texts, and the splits are made
  from those strings (`from_tensor_slices`): nothing to decode or cache between epochs.
* **disk** (more than the budget). The read pass keeps what building the splits needs (file
  paths, each table row's role, the labels, the digest's records), not the texts. Each split
  streams from the files with tf.data (a folder's files through `tf.io.read_file`, a table's
  rows from a generator that parses it again) and is cached in a file under
  `<work_dir>/<name>/cache/` on its first pass; the vocabulary is fitted from that stream.
  The training split of a folder is read in a seeded order (its files are listed class by
  class) and its shuffle buffer holds a quarter of the budget's worth of documents
  (`TextDatasets.batched`).

Both give the same documents in each split and the same `spec.version` (the digest of the
read pass). With `shard=(worker, workers)` a streaming training split is the worker's share
only (documents worker, worker + workers, ... of its order), for multi-worker training.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfpipeline.data import folders, textfiles
from tfpipeline.data.datasets import QUICK_EXAMPLES, SHUFFLE_BUFFER_BYTES, Datasets, DatasetSpec, batched
from tfpipeline.errors import UserError
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
         text_column: str | None = None, label_column: str | None = None, cache_budget: int | None = None,
         work_dir: str | os.PathLike = "work", shard: tuple[int, int] | None = None,
         verbose: bool = True) -> Datasets:
    """Train / validation / test datasets of a text dataset, and its `TextInput`.

    Args:
        path: a folder of class folders (split or flat), a CSV/TSV file, or a folder of
            train/[validation]/test tables (`textfiles`).
        validation_fraction: share carved for validation (and for test) where the data has none.
        quick: train on a small subset (a smoke test); test stays whole.
        seed: fixes the carve (and a streamed training split's order).
        text_column, label_column: a table's columns (None: detected).
        cache_budget: bytes of text held in memory; a larger corpus streams from its files and
            is cached on disk under `work_dir`. None: `folders.default_cache_budget()`.
        work_dir: the disk cache goes under `<work_dir>/<dataset name>/cache/`.
        shard: (this worker, number of workers) of a multi-worker run: a streamed training
            split is this worker's share only (`spec.source["shard"]` says so); data held in
            memory is read whole (tf.data's auto-sharding shares it out). None: the whole split.
        verbose: print what was read, skipped and chosen.

    Returns:
        `Datasets` of unbatched `(tf.string scalar, int32 label)` examples; `spec.input` is the
        `TextInput` fitted on the whole training split.

    Raises:
        UserError: the data cannot be read as labelled text (see `textfiles.read`), or a shard
            would have no training documents.
    """
    budget = folders.default_cache_budget() if cache_budget is None else int(cache_budget)
    data = textfiles.read(path, validation_fraction=validation_fraction, seed=seed, text_column=text_column,
                          label_column=label_column, keep_bytes=budget)
    if verbose:
        textfiles.report_skipped(data)
    limits = QUICK_EXAMPLES if quick else {}
    counts = {role: min(n, limits.get(role, n)) for role, n in data.counts.items()}
    name = data.root.stem if data.root.is_file() else data.root.name
    version = f"text-{data.documents.digest(limits)}"  # changes when the documents or the split change
    plan, made, fit_on, shard_record = _splits(data, counts, budget, Path(work_dir) / name / "cache"
                                               / f"{version}-seed{seed}", seed=seed, shard=shard)
    if verbose:
        _say(data, counts, plan)
    spec = DatasetSpec(
        name=name, version=version, input_shape=(), num_classes=len(data.class_names),
        class_names=data.class_names,
        splits={role: f"{role} ({data.layout})" for role in textfiles.ROLES},
        num_examples=counts,  # the whole training split, also on a worker that reads its share
        source={"kind": "text", "path": str(data.root), "layout": data.layout, "split": data.split_rule,
                "columns": data.columns, "skipped": data.skipped_summary(), "cache": plan.to_json(),
                **({"shard": shard_record} if shard_record else {})},
        input=text_input.fit(fit_on, verbose=verbose),
    )
    # In memory: made from strings, nothing to decode or cache between epochs (no cache plan).
    return TextDatasets(spec, made["train"], made["validation"], made["test"], in_memory=plan.kind == "memory",
                        cache_plan=None if plan.kind == "memory" else plan,
                        document_bytes=data.documents.text_bytes / max(1, sum(data.counts.values())))


@dataclasses.dataclass
class TextDatasets(Datasets):
    """`Datasets` of documents, whose streamed training split gets a shuffle buffer sized by its
    documents' bytes."""

    document_bytes: float = 0.0  # mean UTF-8 bytes of a document

    def batched(self, dataset: tf.data.Dataset, *, batch_size: int, seed: int, training: bool,
                own_splits: bool = True, **epochs) -> tf.data.Dataset:
        plan = self.cache_plan
        if plan is None or plan.kind == "memory":
            return super().batched(dataset, batch_size=batch_size, seed=seed, training=training,
                                   own_splits=own_splits, **epochs)
        # `shuffle_buffer_for` sizes the buffer from the element spec, where a string counts no
        # bytes (its length is not in the spec) and the label 4: it would hold the whole split in
        # memory. Give it the documents a quarter of the budget holds, counted as it counts them.
        documents = min(SHUFFLE_BUFFER_BYTES, plan.budget_bytes // 4) // max(1, int(self.document_bytes))
        return batched(dataset, batch_size=batch_size, seed=seed, training=training, cache=False,
                       shuffle_buffer_bytes=4 * max(256, documents), **epochs)


def _splits(data: textfiles.TextData, counts: dict[str, int], budget: int, cache_dir: Path, *, seed: int,
            shard: tuple[int, int] | None):
    """(the cache plan, {role: split}, the training split to fit the vocabulary on, the shard's
    record or None): from the texts in memory when the read pass kept them (they fit the
    budget), else streamed from the files (`_streamed`)."""
    if data.texts is None:  # the read pass dropped the texts: over the budget
        plan = folders.cache_plan(1, data.documents.text_bytes, budget, cache_dir)
        return plan, *_streamed(data, counts, plan, seed=seed, shard=shard)
    made = {role: _dataset(data.texts[role][:counts[role]], data.labels[role][:counts[role]])
            for role in textfiles.ROLES}
    return folders.CachePlan("memory", data.documents.text_bytes, budget), made, made["train"], None


def _say(data: textfiles.TextData, counts: dict[str, int], plan: folders.CachePlan) -> None:
    print(f"Text dataset {data.root} ({data.layout}): {len(data.class_names)} classes, "
          + ", ".join(f"{counts[r]:,} {r}" for r in textfiles.ROLES) + " documents"
          + (f"; text column {data.columns['text']!r}, label column {data.columns['label']!r}"
             if data.columns else "") + f"; {_size(plan.prepared_bytes)} of text"
          + (", held in memory" if plan.kind == "memory" else ""), flush=True)
    if plan.kind != "memory":
        print(f"The text ({_size(plan.prepared_bytes)}) exceeds --cache-budget "
              f"({_size(plan.budget_bytes)}): streaming it from the files and "
              + (f"caching it on disk in {plan.directory}." if plan.kind == "disk" else
                 "not caching it (not enough free disk either); each epoch reads the files again."), flush=True)


def _size(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB" if count >= 2**20 else f"{count / 2**10:,.1f} KiB"


def _streamed(data: textfiles.TextData, counts: dict[str, int], plan: folders.CachePlan, *, seed: int,
              shard: tuple[int, int] | None):
    """({role: split streamed from the files, cached as `plan` says}, the whole training split to
    fit the vocabulary on, the shard's record or None)."""
    orders = {role: np.arange(counts[role]) for role in textfiles.ROLES}
    if data.files is not None:  # listed class by class: a seeded order, so a shuffle buffer mixes them
        # (of the documents `counts` keeps, the first ones: a quick run's subset is the one in memory)
        orders["train"] = np.random.default_rng(seed).permutation(counts["train"])
    whole_train = _stream(data, "train", orders["train"])
    record = None
    if shard is not None:
        worker, workers = shard
        if not 0 <= worker < workers:
            raise ValueError(f"shard={shard} is not (worker, workers) with 0 <= worker < workers.")
        orders["train"] = orders["train"][worker::workers]
        if not len(orders["train"]):
            raise UserError(f"The text dataset {data.root} has {counts['train']} training documents for {workers} "
                            "workers; each worker trains on its own share, so it needs at least one per worker.")
        record = {"worker": worker, "workers": workers, "documents": len(orders["train"]),
                  "rule": f"documents {worker}, {worker}+{workers}, ... of the training split's order; the "
                          "vocabulary is fitted on the whole split on every worker"}
    made = {role: _stream(data, role, orders[role]) if role != "train" or shard else whole_train
            for role in textfiles.ROLES}
    if plan.kind == "disk":  # each split in a file of its own, written on its first full pass
        # A worker's files are its own, even for the splits every worker reads whole: workers
        # sharing a --work-dir would otherwise write one cache file at once, which TF refuses.
        suffix = f"-worker{shard[0]}-of-{shard[1]}" if shard else ""
        made = {role: ds.cache(str(Path(plan.directory) / f"{role}{suffix}")) for role, ds in made.items()}
    # Unsharded, the vocabulary is fitted from the cached training split (its first full pass
    # writes the cache file; TF 2.21 then warns "did not fully read the dataset being cached"
    # even after a full pass, and keeps the file). Sharded, every worker fits it from the whole
    # split, read from the files: the same documents in the same order give the same vocabulary
    # and IDF on every worker (TextVectorization.adapt is deterministic), with no collective in
    # the data stage (which cannot import distribute) and no vocabulary to send between workers;
    # it costs each worker the passes of `inputs.text.fit` over the files of the whole split.
    return made, (whole_train if shard else made["train"]), record


def _stream(data: textfiles.TextData, role: str, order: np.ndarray) -> tf.data.Dataset:
    """`role`'s documents at positions `order` (ascending for a table, which streams in file
    order) as `(string, int32 label)`, read from the files as the dataset is iterated."""
    labels = np.asarray(data.labels[role], np.int32)[order]
    if data.files is not None:
        paths = np.asarray(data.files[role], dtype=object)[order].astype(str)
        files = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels)))
        return files.map(lambda file, label: (_without_bom(tf.io.read_file(file)), label),
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # A table's positions are `range(start, stop, step)` (a quick subset, a worker's share).
    start, stop = (int(order[0]), int(order[-1]) + 1) if len(order) else (0, 0)
    step = int(order[1] - order[0]) if len(order) > 1 else 1

    def texts():
        for position, text in enumerate(textfiles.table_documents(data, role)):
            if position >= stop:
                return
            if position >= start and (position - start) % step == 0:
                yield text

    rows = tf.data.Dataset.from_generator(texts, output_signature=tf.TensorSpec((), tf.string))
    both = tf.data.Dataset.zip((rows, tf.data.Dataset.from_tensor_slices(tf.constant(labels))))
    return both.apply(tf.data.experimental.assert_cardinality(len(order)))


def _without_bom(content: tf.Tensor) -> tf.Tensor:
    """A file's bytes as `textfiles.check_text` decodes them: without a UTF-8 byte-order mark."""
    return tf.strings.regex_replace(content, "^\ufeff", "", replace_global=False)


def _dataset(texts: list[str], labels: list[int]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((tf.constant(texts, tf.string), tf.constant(labels, tf.int32)))
